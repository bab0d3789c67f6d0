"""gnocchi.admin.audit: `gnocchi audit` reads the journal back: one line per
entry, and the counter store rebuilt."""

import datetime
import time

import pytest

from gnocchi.admin import audit
from gnocchi.server import counters
from support import gnocchi_cli

KEY_A = "0abb31e99e8341f0a2195b9db07a819684e80e6cfbfe8626ab010828ac14f27f"
KEY_B = "1" * 64
A, B = bytes.fromhex(KEY_A), bytes.fromhex(KEY_B)


def test_format_entry_says_who_from_where_and_what():
    when = datetime.datetime(2026, 11, 27, 8, 0, 1)
    base = {
        "__REALTIME_TIMESTAMP": when,
        "GNOCCHI_CLIENT": "alice",
        "GNOCCHI_CLIENT_KEY": KEY_A,
        "GNOCCHI_SOURCE_IP": "198.18.3.1",
    }
    line = audit.format_entry(
        base
        | {"GNOCCHI_EVENT": "accepted", "GNOCCHI_REQUEST": "open 22/tcp", "GNOCCHI_COUNTER": "17"}
    )
    assert line.startswith("2026-11-27 08:00:01  accepted")
    assert "alice" in line and "198.18.3.1" in line and "opened open 22/tcp (counter 17)" in line
    refused = audit.format_entry(
        base
        | {"GNOCCHI_EVENT": "refused", "GNOCCHI_REQUEST": "run x", "GNOCCHI_REASON": "not allowed"}
    )
    assert "REFUSED run x: not allowed" in refused
    anonymous = audit.format_entry({"GNOCCHI_EVENT": "replay", "GNOCCHI_CLIENT_KEY": KEY_A})
    assert KEY_A[:12] in anonymous and "replayed" in anonymous
    claimed = audit.format_entry(
        {
            "GNOCCHI_EVENT": "replay",
            "GNOCCHI_CLAIMED_CLIENT": "alice",
            "GNOCCHI_CLAIMED_CLIENT_KEY": KEY_A,
        }
    )
    assert "alice (claimed)" in claimed and "replayed" in claimed
    claimed_key = audit.format_entry(
        {"GNOCCHI_EVENT": "signature", "GNOCCHI_CLAIMED_CLIENT_KEY": KEY_A}
    )
    assert f"{KEY_A[:12]}... (claimed)" in claimed_key and "bad signature" in claimed_key
    summary = audit.format_entry(
        {"GNOCCHI_EVENT": "dropped-summary", "MESSAGE": "dropped 5 packets in the last 60 s: 5 mac"}
    )
    assert summary.endswith("dropped 5 packets in the last 60 s: 5 mac")
    helper_line = audit.format_entry(
        {"SYSLOG_IDENTIFIER": "gnocchi-helper", "MESSAGE": b"bad \xff"}
    )
    assert "gnocchi-helper" in helper_line and "bad \\xff" in helper_line


def test_counters_rebuilt_from_entries_take_the_highest_per_key():
    entries = [
        {"GNOCCHI_CLIENT_KEY": KEY_A, "GNOCCHI_COUNTER": "5"},
        {"GNOCCHI_CLIENT_KEY": KEY_A, "GNOCCHI_COUNTER": "9"},
        {"GNOCCHI_CLIENT_KEY": KEY_A, "GNOCCHI_COUNTER": "7"},
        {"GNOCCHI_CLIENT_KEY": KEY_B, "GNOCCHI_COUNTER": "1"},
        {"GNOCCHI_CLIENT_KEY": KEY_B},  # a replay entry: no counter
        {"GNOCCHI_CLIENT_KEY": "zz", "GNOCCHI_COUNTER": "99"},
        {"GNOCCHI_CLAIMED_CLIENT_KEY": KEY_B, "GNOCCHI_COUNTER": "50"},
    ]  # only claimed
    rebuilt = counters.render(audit.counters_from(entries))
    assert counters.parse(rebuilt.encode(), "x") == (0, {A: 9, B: 1})


def test_since_takes_what_journalctl_takes():
    """systemd's own parser reads --since: relative times in its words, today, timestamps."""
    now = time.time()
    assert abs(audit.parse_since("5 min ago") - (now - 300)) < 30
    assert abs(audit.parse_since("-5m") - (now - 300)) < 30
    assert abs(audit.parse_since("2h ago") - (now - 7200)) < 30
    midnight = datetime.datetime.combine(datetime.date.today(), datetime.time())
    assert audit.parse_since("today") in (
        midnight.timestamp(),
        (midnight + datetime.timedelta(days=1)).timestamp(),
    )
    assert audit.parse_since("2026-11-01 10:00") == datetime.datetime(2026, 11, 1, 10).timestamp()
    assert audit.parse_since("@1700000000.25") == 1700000000.25
    with pytest.raises(ValueError, match="--since 'soon': not a time journalctl --since takes"):
        audit.parse_since("soon")


def test_audit_command_runs_against_the_real_journal(tmp_path):
    for since in (
        ["--since", "5 min ago"],
        ["--since", "-5m"],
        ["--since=-5m"],
        ["--since", "today"],
    ):
        out = gnocchi_cli("audit", *since)
        assert out.returncode == 0 and out.stdout.startswith("TIME"), (since, out.stderr)
    bad = gnocchi_cli("audit", "--since", "soon")
    assert bad.returncode == 2 and "--since 'soon'" in bad.stderr
    rebuilt = gnocchi_cli("audit", "--counters", "--directory", tmp_path)
    assert rebuilt.returncode == 0 and rebuilt.stdout == counters.HEADER


def test_entries_of_a_collected_journal_name_their_host():
    entry = {
        "__REALTIME_TIMESTAMP": datetime.datetime(2026, 11, 27, 8, 0, 1),
        "_HOSTNAME": "web1",
        "GNOCCHI_EVENT": "accepted",
        "GNOCCHI_CLIENT": "alice",
        "GNOCCHI_SOURCE_IP": "198.18.3.1",
        "GNOCCHI_REQUEST": "open 22/tcp",
        "GNOCCHI_COUNTER": "17",
    }
    line = audit.format_entry(entry, host=True)
    assert line.startswith("2026-11-27 08:00:01  web1              accepted        alice ")
    assert line.endswith("opened open 22/tcp (counter 17)")
    assert audit.format_entry(entry) == line.replace("web1              ", "")

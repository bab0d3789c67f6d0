"""`gnocchi metrics` (gnocchi/admin/metrics.py): journal entries counted once into
per-server counters, and the text node_exporter's textfile collector reads, parsed with
the Prometheus client library's own parser. The booted-systemd side (the timer writing
the file on a real server) is tests/system/test_fleet.py."""

import datetime
import json

import pytest

from gnocchi.admin import metrics

parser = pytest.importorskip(
    "prometheus_client.parser", reason="needs Debian's python3-prometheus-client"
)

T0 = datetime.datetime(2026, 12, 1, 8, 0, tzinfo=datetime.UTC)


def entry(n: int, event: str, **fields) -> dict:
    return {
        "__CURSOR": f"c{n}",
        "__REALTIME_TIMESTAMP": T0 + datetime.timedelta(seconds=n),
        "GNOCCHI_EVENT": event,
        **{f"GNOCCHI_{k.upper()}": v for k, v in fields.items()},
    }


ENTRIES = [
    entry(1, "accepted", client="alice", source_ip="198.51.100.7"),
    entry(2, "accepted", client="alice", source_ip="198.51.100.7"),
    entry(3, "refused", client="bob", reason="23/tcp is not in this client's allow list"),
    entry(4, "replay", claimed_client="alice", source_ip="192.0.2.66"),
    entry(5, "signature", claimed_client="alice", source_ip="192.0.2.66"),
    entry(6, "signature", claimed_client="alice", source_ip="192.0.2.67"),
    entry(
        7,
        "dropped-summary",
        dropped="3017",
        dropped_mac="3000",
        dropped_size="10",
        dropped_unknown_client="5",
        dropped_rate_limited="2",
        suppressed="7",
        suppressed_replay="4",
        suppressed_signature="3",
    ),
    entry(8, "table-missing", by="a ruleset flush", how="rearmed"),
    entry(9, "table-changed", by="nft", how="not-whole"),
    entry(10, "connections-cut", cut="2"),
    entry(11, "armed", how="armed"),
    entry(12, "dropped-summary", dropped_mac=b"\xff"),  # not a number: counts nothing
]
FACTS = {
    "armed": True,
    "meant_armed": True,
    "listening": True,
    "flood_limit": True,
    "config": {"broken": None},
    "trial_seconds_left": None,
    "server_keys": ["3f2a-9c1b"],
    "clients": [{"name": "alice"}, {"name": "bob"}],
    "pending": [{"port": 22}],
    "elements": {"knocked4": 1, "knocked6": 0, "protected_tcp": 1},
}


def families(text: str) -> dict[str, dict]:
    """{family name: {(sample name, sorted labels): value}}, and each family's type."""
    found = {}
    for family in parser.text_string_to_metric_families(text):
        found[family.name] = {
            "type": family.type,
            **{(s.name, tuple(sorted(s.labels.items()))): s.value for s in family.samples},
        }
    return found


def test_each_entry_is_counted_once_and_rendered_for_prometheus():
    state = metrics.count(ENTRIES, metrics.fresh_state())
    assert state["cursor"] == "c12"
    now = (T0 + datetime.timedelta(seconds=60)).timestamp()
    got = families(metrics.render(FACTS, state, now, "0.4.0"))
    knocks = got["gnocchi_knocks"]
    assert knocks["type"] == "counter"
    assert {key[1][0][1]: v for key, v in knocks.items() if key != "type"} == {
        "accepted": 2,
        "refused": 1,
        "replay": 1 + 4,
        "signature": 2 + 3,
        "rate-limited": 2,
        "helper-failed": 0,
        "action-run": 0,
        "action-failed": 0,
    }
    dropped = got["gnocchi_dropped"]
    assert dropped[("gnocchi_dropped_total", (("reason", "mac"),))] == 3000
    assert dropped[("gnocchi_dropped_total", (("reason", "unknown-client"),))] == 5
    assert dropped[("gnocchi_dropped_total", (("reason", "size"),))] == 10
    assert got["gnocchi_signature_failure_sources"][("gnocchi_signature_failure_sources", ())] == 2
    assert got["gnocchi_rearms"][("gnocchi_rearms_total", ())] == 1
    assert (
        got["gnocchi_gate_incidents"][
            ("gnocchi_gate_incidents_total", (("event", "table-changed"),))
        ]
        == 1
    )
    assert got["gnocchi_last_rearm_timestamp_seconds"][
        ("gnocchi_last_rearm_timestamp_seconds", ())
    ] == (T0.timestamp() + 8)
    assert got["gnocchi_connections_cut"][("gnocchi_connections_cut_total", ())] == 2
    assert got["gnocchi_armed"][("gnocchi_armed", ())] == 1
    assert got["gnocchi_table_elements"][("gnocchi_table_elements", (("set", "knocked4"),))] == 1
    assert got["gnocchi_clients"][("gnocchi_clients", ())] == 2
    assert (
        got["gnocchi_info"][("gnocchi_info", (("server_key", "3f2a-9c1b"), ("version", "0.4.0")))]
        == 1
    )


def test_counts_carry_over_from_run_to_run_and_old_sources_are_forgotten():
    state = metrics.count(ENTRIES[:5], metrics.fresh_state())
    state = metrics.count(ENTRIES[5:], state)
    assert state == metrics.count(ENTRIES, metrics.fresh_state())
    an_hour_later = (T0 + datetime.timedelta(seconds=6 + metrics.SOURCE_WINDOW + 1)).timestamp()
    text = metrics.render(FACTS, state, an_hour_later, "0.4.0")
    assert "\ngnocchi_signature_failure_sources 0\n" in text
    assert 'gnocchi_knocks_total{verdict="signature"} 5' in text


@pytest.mark.parametrize("value", ["\u00b2", "\u0663", "1\u00b2", "-1", " 7", "1e3"])
def test_a_number_field_that_is_not_ascii_digits_counts_nothing_and_stops_no_run(value):
    # The verifier writes these entries: a compromised one could write any text (the
    # journal hands it back decoded). One the parser cannot take would stop every run
    # from then on (the cursor is kept only when a run ends), blinding the alerts.
    state = metrics.count(
        [
            entry(1, "dropped-summary", dropped_mac=value),
            entry(2, "connections-cut", cut=value),
            entry(3, "dropped-summary", dropped_mac="3"),
        ],
        metrics.fresh_state(),
    )
    assert (state["dropped"], state["cut"], state["cursor"]) == ({"mac": 3}, 0, "c3")


def test_a_server_that_is_not_armed_says_so_and_label_values_are_escaped():
    facts = dict(FACTS, armed=False, server_keys=['a"b\\c'])
    got = families(metrics.render(facts, metrics.fresh_state(), T0.timestamp(), "0.4.0"))
    assert got["gnocchi_armed"][("gnocchi_armed", ())] == 0
    assert (
        got["gnocchi_info"][("gnocchi_info", (("server_key", 'a"b\\c'), ("version", "0.4.0")))] == 1
    )
    assert (
        got["gnocchi_last_rearm_timestamp_seconds"][("gnocchi_last_rearm_timestamp_seconds", ())]
        == 0
    )


def test_state_that_is_not_ours_starts_the_counts_again(tmp_path):
    path = tmp_path / "counts.json"
    for text in ("not json", '{"version": 2}', "[]"):
        path.write_text(text)
        assert metrics.load_state(str(path)) == metrics.fresh_state()
    state = metrics.count(ENTRIES, metrics.fresh_state())
    metrics.write(str(path), json.dumps(state).encode(), 0o600)
    assert metrics.load_state(str(path)) == state
    assert path.stat().st_mode & 0o777 == 0o600

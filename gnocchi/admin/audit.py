"""`gnocchi audit`: the verifier's and the helper's journal entries, read back.

Trusts journald for _SYSTEMD_UNIT, a field it sets itself, and nothing else
in an entry: any local user can write one that claims SYSLOG_IDENTIFIER=gnocchi,
so entries are selected by unit, and values are printed escaped. --counters
rebuilds the counter store only from entries that name a proven client key
(GNOCCHI_CLIENT_KEY) with a committed counter (GNOCCHI_COUNTER); a key a
packet only claimed (GNOCCHI_CLAIMED_CLIENT_KEY) never counts.
"""
from __future__ import annotations

import argparse
import datetime
import re
import sys
from collections.abc import Iterable

from gnocchi.server import counters

_RELATIVE = re.compile(r"-([0-9]+)([smhd])|([0-9]+) ?([smhd]) ago")
_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400}


def parse_since(text: str, now: datetime.datetime) -> datetime.datetime:
    """journalctl-like WHEN: today, yesterday, -2h or '2h ago', YYYY-MM-DD[ HH:MM[:SS]]."""
    midnight = now.replace(hour=0, minute=0, second=0, microsecond=0)
    if text == "today":
        return midnight
    if text == "yesterday":
        return midnight - datetime.timedelta(days=1)
    m = _RELATIVE.fullmatch(text)
    if m:
        number, unit = (m.group(1), m.group(2)) if m.group(1) else (m.group(3), m.group(4))
        return now - datetime.timedelta(seconds=int(number) * _UNITS[unit])
    try:
        return datetime.datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"--since {text!r}: not today, yesterday, -N[smhd], 'N[smhd] ago' "
                         "or YYYY-MM-DD[ HH:MM[:SS]]") from None


def _text(value) -> str:
    # The reader returns bytes for a field that is not UTF-8: show it escaped.
    if isinstance(value, bytes):
        return repr(value)[2:-1]
    return str(value)


def format_entry(entry: dict) -> str:
    """One line for one journal entry (a dict as systemd.journal.Reader returns it)."""
    when = entry.get("__REALTIME_TIMESTAMP")
    stamp = when.strftime("%Y-%m-%d %H:%M:%S") if isinstance(when, datetime.datetime) else "-"

    def get(key: str) -> str:
        return _text(entry.get(key, ""))
    event = get("GNOCCHI_EVENT")

    def client(field: str) -> str:  # the config's name, else the start of the key
        key = get(field + "_KEY")
        return get(field) or (key[:12] + "..." if key else "")
    # Replay and signature entries name a client the packet only claimed.
    claimed = client("GNOCCHI_CLAIMED_CLIENT")
    who = client("GNOCCHI_CLIENT") or (f"{claimed} (claimed)" if claimed else "-")
    source = get("GNOCCHI_SOURCE_IP") or "-"
    request, reason = get("GNOCCHI_REQUEST"), get("GNOCCHI_REASON")
    what = {
        "accepted": f"opened {request} (counter {get('GNOCCHI_COUNTER')})",
        "helper-failed": f"NOT opened {request}: helper {get('GNOCCHI_HELPER_STATUS') or reason}",
        "action-run": f"ran {request}",
        "action-failed": f"FAILED {request}: {reason}",
        "refused": f"REFUSED {request}: {reason}",
        "replay": "REFUSED replayed knock (counter not above the last accepted)",
        "signature": "REFUSED bad signature (wrong client key or server address)",
    }.get(event)
    if what is None:
        return f"{stamp}  {event or get('SYSLOG_IDENTIFIER') or '-':<15} {get('MESSAGE')}"
    return f"{stamp}  {event:<15} {who:<16} {source:<24} {what}"


def counters_from(entries: Iterable[dict]) -> dict[bytes, int]:
    """The highest committed counter per client key that the entries record."""
    highest: dict[bytes, int] = {}
    for entry in entries:
        key, counter = _text(entry.get("GNOCCHI_CLIENT_KEY", "")), entry.get("GNOCCHI_COUNTER")
        if not re.fullmatch(r"[0-9a-f]{64}", key) or counter is None:
            continue
        try:
            value = int(_text(counter))
        except ValueError:
            continue
        raw = bytes.fromhex(key)
        highest[raw] = max(value, highest.get(raw, 0))
    return highest


# Matched on the unit, a field journald sets itself: any local user can write an
# entry that claims SYSLOG_IDENTIFIER=gnocchi, and --counters must not trust one.
UNITS = ("gnocchi.service", "gnocchi-helper.service")


def read_journal(since: datetime.datetime | None, directory: str | None = None):
    from systemd import journal
    reader = journal.Reader(path=directory) if directory else journal.Reader()
    for i, unit in enumerate(UNITS):
        if i:
            reader.add_disjunction()
        reader.add_match(_SYSTEMD_UNIT=unit)
    if since is not None:
        reader.seek_realtime(since)
    yield from reader


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gnocchi audit",
                                     description="Who knocked, from where, what was opened or "
                                                 "run, and what was refused (from the journal).")
    parser.add_argument("--since", metavar="WHEN",
                        help="today, yesterday, '2h ago' (or --since=-2h), YYYY-MM-DD[ HH:MM[:SS]]")
    parser.add_argument("--directory", metavar="DIR", help="read journal files from DIR")
    parser.add_argument("--counters", action="store_true",
                        help="print a counter store rebuilt from the journal (docs/server.md)")
    args = parser.parse_args(argv[1:])
    try:
        since = parse_since(args.since, datetime.datetime.now()) if args.since else None
    except ValueError as e:
        print(f"gnocchi audit: {e}", file=sys.stderr)
        return 2
    entries = read_journal(since, args.directory)
    if args.counters:
        sys.stdout.write(counters.render(counters_from(entries)))
        return 0
    print(f"{'TIME':<19}  {'EVENT':<15} {'CLIENT':<16} {'SOURCE':<24} WHAT")
    for entry in entries:
        print(format_entry(entry))
    return 0

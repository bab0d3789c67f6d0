"""The verifier's audit trail (journald events) and the `gnocchi audit` command.

Trusts nothing it is given to log: values that came from a packet arrive
here already escaped and bounded (knock_request.show, hex keys, ipaddress text),
and the stderr form is JSON, so no byte can forge a line or a field. Volume
is bounded under any input: drops before a client is known (size, mac,
magic, unknown-client) are only counted, and entries for packets whose
counter was not committed (replay, signature, data-length) share a budget
per interval; both appear in at most one dropped-summary entry per
interval. Entries for committed counters (a configured client's signed,
fresh knock) are never suppressed: they are the audit trail, and
`gnocchi audit --counters` rebuilds the counter store from them.

Events go to journald when systemd connected stderr to the journal (it then
sets JOURNAL_STREAM, as for every unit), else to stderr as one JSON object per
line (development, tests and the demo, even on a host that runs journald).
"""
from __future__ import annotations

import argparse
import datetime
import json
import os
import re
import sys
import time
from collections import Counter
from typing import Callable, Iterable

IDENTIFIER = "gnocchi"
# One MESSAGE_ID per event kind; gnocchi/gnocchi.catalog explains each.
MESSAGE_IDS = {
    "started": "fcdd35da6a8f4b33a4743a2646e53116",
    "accepted": "ebac51e377c84224a97d00ab0a22acd1",
    "refused": "532ba6cfc0a0477f9ed84e97eda9fced",
    "replay": "a4df32e35cba461397de1edd89a94dd8",
    "signature": "9af1cddc68184827b7ebb786d1f78c3f",
    "helper-failed": "d0b4ab2fd6e2492aa1a226715e3d6f2d",
    "action-run": "e1bd28e73e6f49f1b99165c06b5e7bc5",
    "action-failed": "a32dd4dcde6d416584acf8f6afc101f4",
    "dropped-summary": "3fb748818ed54d70a0d922ad1bf56e7b",
    "store-failed": "cadf2ab9d2f24224b2418259324a69fb",
}
PRIORITY = {"started": 6, "accepted": 5, "refused": 4, "replay": 4, "signature": 4,
            "helper-failed": 3, "action-run": 5, "action-failed": 3, "dropped-summary": 4,
            "store-failed": 2}
INTERVAL = 60.0  # seconds between summaries
BUDGET = 20      # entries per interval for packets whose counter was not committed


def journal_sender(fields: dict) -> None:
    from systemd import journal
    fields = dict(fields)
    journal.send(fields.pop("MESSAGE"), **fields)


def stderr_sender(fields: dict) -> None:
    sys.stderr.write(json.dumps(fields, sort_keys=True) + "\n")
    sys.stderr.flush()


def stderr_is_journal() -> bool:
    """True when systemd connected stderr to the journal: JOURNAL_STREAM names
    stderr's device:inode (systemd.exec(5)); an inherited stale value does not."""
    try:
        st = os.fstat(2)
    except OSError:
        return False
    return os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}"


def default_sender() -> Callable[[dict], None]:
    return journal_sender if stderr_is_journal() else stderr_sender


class Audit:
    def __init__(self, send: Callable[[dict], None] | None = None,
                 clock: Callable[[], float] = time.monotonic,
                 interval: float = INTERVAL, budget: int = BUDGET):
        self.send = send or default_sender()
        self.clock = clock
        self.interval = interval
        self.budget = budget
        self._start = clock()
        self._dropped: Counter[str] = Counter()     # reason -> packets, no entry
        self._suppressed: Counter[str] = Counter()  # event -> entries over budget
        self._spent = 0

    def event(self, event: str, message: str, **fields) -> None:
        """One entry; fields are GNOCCHI_* names without the prefix, e.g. client="alice"."""
        entry = {"MESSAGE": message, "MESSAGE_ID": MESSAGE_IDS[event],
                 "PRIORITY": str(PRIORITY[event]), "SYSLOG_IDENTIFIER": IDENTIFIER,
                 "GNOCCHI_EVENT": event}
        for key, value in fields.items():
            if value is not None:
                entry["GNOCCHI_" + key.upper()] = str(value)
        self.send(entry)

    def limited(self, event: str, message: str, **fields) -> None:
        """An entry for a packet whose counter was not committed: within the budget only."""
        self.tick()
        if self._spent >= self.budget:
            self._suppressed[event] += 1
            return
        self._spent += 1
        self.event(event, message, **fields)

    def drop(self, reason: str) -> None:
        """A packet dropped before any client is known: counted, never one entry each."""
        self._dropped[reason] += 1
        self.tick()

    def tick(self) -> None:
        if self.clock() - self._start >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the summary of this interval, if anything happened, and start the next."""
        dropped, suppressed = sum(self._dropped.values()), sum(self._suppressed.values())
        if dropped or suppressed:
            parts = [f"{n} {reason}" for reason, n in sorted(self._dropped.items())]
            parts += [f"{n} {event} entries suppressed" for event, n in
                      sorted(self._suppressed.items())]
            seconds = self.clock() - self._start
            fields = {f"dropped_{r.replace('-', '_')}": n for r, n in self._dropped.items()}
            fields |= {f"suppressed_{e.replace('-', '_')}": n for e, n in self._suppressed.items()}
            self.event("dropped-summary", f"dropped {dropped} packets in the last "
                       f"{seconds:.0f} s: " + ", ".join(parts),
                       dropped=dropped, suppressed=suppressed, **fields)
        self._dropped.clear()
        self._suppressed.clear()
        self._spent = 0
        self._start = self.clock()


# ---- `gnocchi audit`: read the journal back --------------------------------

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
    get = lambda key: _text(entry.get(key, ""))  # noqa: E731
    event = get("GNOCCHI_EVENT")
    key = get("GNOCCHI_CLIENT_KEY")
    who = get("GNOCCHI_CLIENT") or (key[:12] + "..." if key else "-")
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
    from gnocchi import counters
    entries = read_journal(since, args.directory)
    if args.counters:
        sys.stdout.write(counters.render(counters_from(entries)))
        return 0
    print(f"{'TIME':<19}  {'EVENT':<15} {'CLIENT':<16} {'SOURCE':<24} WHAT")
    for entry in entries:
        print(format_entry(entry))
    return 0

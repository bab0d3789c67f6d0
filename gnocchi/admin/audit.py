"""`gnocchi audit`: the verifier's, the helper's and arming's journal entries, read back.

Trusts journald for the fields it sets itself (_SYSTEMD_UNIT, _UID) and
nothing else in an entry: any local user can write one that claims
SYSLOG_IDENTIFIER=gnocchi, so entries are selected by unit, arming's
(SYSLOG_IDENTIFIER=gnocchi-arm, attached to gnocchi.service) only when root
wrote them, as `journalctl -u gnocchi` does, and values are printed
escaped. --since goes to systemd's own time parser (`systemd-analyze
timestamp`, the parser `journalctl --since` uses), so it takes what
journalctl takes. --counters rebuilds the counter store only from the
verifier's and the helper's entries that name a proven client key
(GNOCCHI_CLIENT_KEY) with a committed counter (GNOCCHI_COUNTER); a key a
packet only claimed (GNOCCHI_CLAIMED_CLIENT_KEY) never counts.
"""

from __future__ import annotations

import argparse
import datetime
import re
import subprocess
import sys
from collections.abc import Iterable

from gnocchi.server import counters

_UNIX_SECONDS = re.compile(r"^\s*UNIX seconds: @([0-9]+)(?:\.([0-9]{1,6}))?$", re.MULTILINE)


def parse_since(text: str) -> float:
    """WHEN as `journalctl --since` reads it, in seconds since the epoch: systemd's
    parser itself (systemd.time(7): "5 min ago", -5m, today, 2026-11-27 08:00, ...)."""
    try:
        proc = subprocess.run(
            ["systemd-analyze", "timestamp", "--", text], capture_output=True, text=True, timeout=30
        )
    except OSError as e:
        raise ValueError(
            f"--since {text!r}: cannot run systemd-analyze, which reads it ({e.strerror})"
        ) from None
    m = _UNIX_SECONDS.search(proc.stdout) if proc.returncode == 0 else None
    if m is None:
        raise ValueError(
            f"--since {text!r}: not a time journalctl --since takes, such as "
            "'5 min ago', -5m, today, yesterday or '2026-11-27 08:00' "
            "(systemd.time(7))"
        )
    return int(m.group(1)) + int((m.group(2) or "0").ljust(6, "0")) / 1e6


def since_argument(argv: list[str]) -> list[str]:
    """argv with `--since -5m` made `--since=-5m`: argparse would take -5m for an option,
    and journalctl takes it either way."""
    out = list(argv)
    for i, arg in enumerate(out[:-1]):
        if arg == "--since":
            out[i : i + 2] = [f"--since={out[i + 1]}"]
            break
    return out


def _text(value) -> str:
    # The reader returns bytes for a field that is not UTF-8: show it escaped.
    if isinstance(value, bytes):
        return repr(value)[2:-1]
    return str(value)


def format_entry(entry: dict, host: bool = False) -> str:
    """One line for one journal entry (a dict as systemd.journal.Reader returns it);
    host: after the time, the host that wrote it (_HOSTNAME, which journald sets)."""
    when = entry.get("__REALTIME_TIMESTAMP")
    stamp = when.strftime("%Y-%m-%d %H:%M:%S") if isinstance(when, datetime.datetime) else "-"
    if host:
        stamp += f"  {_text(entry.get('_HOSTNAME', '-')):<16}"

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
        # The verifier's own words after "...from SOURCE: " (how far below, and why).
        "replay": "REFUSED replayed knock: "
        + (get("MESSAGE").split(": ", 1)[1:] or ["counter not above the last accepted"])[0],
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
# Arming's entries (gnocchi/admin/table.py) come from its units, the nftables
# drop-in or an admin's `gnocchi arm`, always root, and attach themselves to
# gnocchi.service; only root's count (_UID, set by journald), as for journalctl -u.
ARMING = {"_UID": "0", "OBJECT_SYSTEMD_UNIT": "gnocchi.service", "SYSLOG_IDENTIFIER": "gnocchi-arm"}


def match_gnocchi(reader, arming: bool = True) -> None:
    """Make reader (a systemd.journal.Reader) yield gnocchi's entries only: the
    verifier's and the helper's by their unit, and (arming) arming's."""
    for i, unit in enumerate(UNITS):
        if i:
            reader.add_disjunction()
        reader.add_match(_SYSTEMD_UNIT=unit)
    if arming:
        reader.add_disjunction()
        reader.add_match(**ARMING)


def read_journal(
    since: float | None,
    directory: str | None = None,
    files: list[str] | None = None,
    host: str | None = None,
    arming: bool = True,
):
    """gnocchi's entries of this machine's journal, of the journal files in directory
    (such as a collector's /var/log/journal/remote) or of files; since: seconds since
    the epoch, or None for all; host: only those _HOSTNAME says that host wrote."""
    from systemd import journal

    reader = (
        journal.Reader(path=directory)
        if directory
        else journal.Reader(files=files)
        if files
        else journal.Reader()
    )
    match_gnocchi(reader, arming)
    if host:
        reader.add_conjunction()
        reader.add_match(_HOSTNAME=host)
    if since is not None:
        reader.seek_realtime(since)
    yield from reader


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gnocchi audit",
        description="Who knocked, from where, what was opened or "
        "run, what was refused, and when gnocchi was "
        "armed or disarmed (from the journal).",
    )
    parser.add_argument(
        "--since",
        metavar="WHEN",
        help="what journalctl --since takes: '5 min ago', -5m, today, "
        "yesterday, '2026-11-27 08:00' (systemd.time(7))",
    )
    where = parser.add_mutually_exclusive_group()
    where.add_argument(
        "--directory",
        metavar="DIR",
        help="read the journal files in DIR, such as a collector's "
        "/var/log/journal/remote (each line then names its host)",
    )
    where.add_argument(
        "--file",
        metavar="FILE",
        action="append",
        help="read this journal file (repeat it for several)",
    )
    parser.add_argument(
        "--host", metavar="NAME", help="only the entries host NAME wrote (_HOSTNAME)"
    )
    parser.add_argument(
        "--counters",
        action="store_true",
        help="print a counter store rebuilt from the journal (docs/server.md); "
        "from a collector's journal, give --host",
    )
    args = parser.parse_args(since_argument(argv[1:]))
    try:
        since = parse_since(args.since) if args.since else None
    except ValueError as e:
        print(f"gnocchi audit: {e}", file=sys.stderr)
        return 2
    if args.counters:
        entries = list(read_journal(since, args.directory, args.file, args.host, arming=False))
        hosts = sorted({_text(e.get("_HOSTNAME", "")) for e in entries})
        if len(hosts) > 1:  # counters are per server: never one store from several
            print(
                f"gnocchi audit: --counters: these entries come from {len(hosts)} hosts "
                f"({', '.join(hosts)}); give --host NAME",
                file=sys.stderr,
            )
            return 2
        sys.stdout.write(counters.render(counters_from(entries)))
        return 0
    collected = bool(args.directory or args.file)
    print(
        f"{'TIME':<19}  "
        + (f"{'HOST':<16}  " if collected else "")
        + f"{'EVENT':<15} {'CLIENT':<16} {'SOURCE':<24} WHAT"
    )
    for entry in read_journal(since, args.directory, args.file, args.host):
        print(format_entry(entry, host=collected))
    return 0

"""The verifier's audit trail: journald events, one MESSAGE_ID per kind.

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
import ipaddress
import json
import os
import socket
import sys
import time
from collections import Counter
from collections.abc import Callable

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
    "store-fell-back": "f7e0f03c057d495abde9a9e1bb7583e5",
    "config-fell-back": "ae32aab35e454c32ac8896aba4e0e643",
}
PRIORITY = {
    "started": 6,
    "accepted": 5,
    "refused": 4,
    "replay": 4,
    "signature": 4,
    "helper-failed": 3,
    "action-run": 5,
    "action-failed": 3,
    "dropped-summary": 4,
    "store-failed": 2,
    "store-fell-back": 4,
    "config-fell-back": 3,
}
INTERVAL = 60.0  # seconds between summaries
BUDGET = 20  # entries per interval for packets whose counter was not committed
MAX_WHO = 100  # names kept per kind of drop and interval: memory bounded under a flood


def replayed(name: str, source: ipaddress.IPv4Address | ipaddress.IPv6Address, behind: int) -> str:
    """The replay entry's message; behind: the last accepted counter minus the packet's
    (claimed, unsigned). Counters are clock nanoseconds (gnocchi/client/counter.py): a
    client that lost its counter state knocks with its clock, so a counter seconds or
    more below the last one is most likely that client with its clock now behind the
    one it knocked with before, by at least the gap; or an old knock sent again."""
    text = f"replayed knock claiming client {name} from {source}: counter not above the last "
    if behind < 10**9:
        return text + "accepted"
    s = behind // 10**9
    gap = " ".join(
        f"{n}{unit}"
        for n, unit in (
            (s // 86400, "d"),
            (s // 3600 % 24, "h"),
            (s // 60 % 60, "min"),
            (s % 60, "s"),
        )
        if n
    )
    return (
        text + f"accepted but {gap} below it: likely the client lost its counter state "
        f"and its clock is now {gap} or more behind the one it knocked with before (it is "
        "refused until that clock catches up; docs/client.md), or an old knock sent again"
    )


JOURNAL = "/run/systemd/journal/socket"


def journal_sender(fields: dict) -> None:
    """One entry by the journal's native protocol (systemd's, written out: python3-systemd's
    journal module would cost the verifier about 1.2 MB of memory): each field as its name,
    a newline, its length (64 bits, little-endian), its bytes and a newline."""
    entry = b"".join(
        name.encode() + b"\n" + len(data).to_bytes(8, "little") + data + b"\n"
        for name, data in ((k, str(v).encode()) for k, v in fields.items())
    )
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
        sock.sendto(entry, JOURNAL)


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


class EventLog:
    """Writes events; counts drops and over-budget entries into one summary per interval."""

    def __init__(
        self,
        send: Callable[[dict], None] | None = None,
        clock: Callable[[], float] = time.monotonic,
        interval: float = INTERVAL,
        budget: int = BUDGET,
    ):
        self.send = send or default_sender()
        self.clock = clock
        self.interval = interval
        self.budget = budget
        self._start = clock()
        self._dropped: Counter[str] = Counter()  # reason -> packets, no entry
        self._suppressed: Counter[str] = Counter()  # event -> entries over budget
        # Who, for two kinds of drop, so an admin can tell them apart; each
        # holds at most MAX_WHO names an interval (the rest count as "others").
        self._who: dict[str, Counter[str]] = {
            "rate-limited": Counter(),
            "unknown-client": Counter(),
        }
        self._spent = 0

    def event(self, event: str, message: str, **fields: object) -> None:
        """One entry; fields are GNOCCHI_* names without the prefix, e.g. client="alice"."""
        entry = {
            "MESSAGE": message,
            "MESSAGE_ID": MESSAGE_IDS[event],
            "PRIORITY": str(PRIORITY[event]),
            "SYSLOG_IDENTIFIER": IDENTIFIER,
            "GNOCCHI_EVENT": event,
        }
        for key, value in fields.items():
            if value is not None:
                entry["GNOCCHI_" + key.upper()] = str(value)
        self.send(entry)

    def limited(self, event: str, message: str, **fields: object) -> None:
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

    def drops(self, reasons: list[str]) -> None:
        """drop() for each of reasons (a batch's garbage), at the cost of one."""
        self._dropped.update(reasons)
        self.tick()

    def over_limit(self, client: str) -> None:
        """A signed knock over its client's or its address's rate: counted by client."""
        self._count_who("rate-limited", client)

    def unknown_key(
        self, key: bytes, source: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> None:
        """A packet sealed with the server key that claims no configured client's key:
        counted by key id (its first 8 bytes, as `gnocchi-knock --pubkey` starts) and source,
        which is how an admin spots a client whose public key was pasted wrong."""
        self._count_who("unknown-client", f"key {key[:8].hex()} from {source}")

    def _count_who(self, reason: str, who: str) -> None:
        names = self._who[reason]
        names[who if who in names or len(names) < MAX_WHO else "others"] += 1
        self.drop(reason)

    def _whose(self, reason: str) -> str:
        if not self._who.get(reason):
            return ""
        return " (" + ", ".join(f"{who} {n}" for who, n in self._who[reason].most_common(10)) + ")"

    def tick(self) -> None:
        if self.clock() - self._start >= self.interval:
            self.flush()

    def flush(self) -> None:
        """Write the summary of this interval, if anything happened, and start the next."""
        dropped, suppressed = sum(self._dropped.values()), sum(self._suppressed.values())
        if dropped or suppressed:
            parts = [
                f"{n} {reason}" + self._whose(reason) for reason, n in sorted(self._dropped.items())
            ]
            parts += [
                f"{n} {event} entries suppressed" for event, n in sorted(self._suppressed.items())
            ]
            seconds = self.clock() - self._start
            fields = {f"dropped_{r.replace('-', '_')}": n for r, n in self._dropped.items()}
            fields |= {f"suppressed_{e.replace('-', '_')}": n for e, n in self._suppressed.items()}
            self.event(
                "dropped-summary",
                f"dropped {dropped} packets in the last {seconds:.0f} s: " + ", ".join(parts),
                dropped=dropped,
                suppressed=suppressed,
                **fields,
            )
        self._dropped.clear()
        self._suppressed.clear()
        for names in self._who.values():
            names.clear()
        self._spent = 0
        self._start = self.clock()


def interval(text: str) -> float:
    """--summary-interval: seconds between summaries, 1..86400."""
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= 86400:  # a summary per packet would defeat its purpose
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in 1..86400")
    return seconds

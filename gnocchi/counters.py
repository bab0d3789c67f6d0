"""The durable per-client counter store (PROTOCOL.md, "Counter and replay").

Trusts only its own file, and not even that blindly: the file is parsed
strictly, and anything unexpected is a StoreError naming the file and how to
recover, so the verifier fails closed instead of forgetting counters (which
would make every captured knock replayable). commit() returns only after the
new value is on disk (write a temporary file, fsync, rename over the store,
fsync the directory); only then may the verifier act on the knock.

The store is created by `gnocchi setup`; a missing one is a StoreError too,
since an empty store would accept every knock ever captured. The way out of
a lost or corrupt store is recover(): a floor of "now" below which every
counter, of every key, is a replay.

File format (text, also what `gnocchi audit --counters` prints to rebuild it):

    # gnocchi counters v1
    floor <counter, decimal>          (optional: the last for any key not listed)
    <client public key, 64 lowercase hex> <highest accepted counter, decimal>
"""
from __future__ import annotations

import os
import re

from gnocchi import durable
from gnocchi.protocol import MAX_COUNTER

FILE_NAME = "counters"
HEADER = "# gnocchi counters v1\n"
_LINE = re.compile(r"([0-9a-f]{64}) (0|[1-9][0-9]{0,33})")
_FLOOR = re.compile(r"floor (0|[1-9][0-9]{0,33})")
MAX_FILE = 1 << 20  # far above any real client list; a larger file is not ours


class StoreError(Exception):
    """The store cannot be read or written; str() names the file and the way out."""


def recovery_hint(path: str) -> str:
    return (f"to recover: restore {path} from a backup, or rebuild it from the journal with "
            f"`gnocchi audit --counters > {path}.new && mv {path}.new {path}` (owner gnocchi, "
            f"mode 0600), or run `gnocchi recover-counters`, which makes every counter up to "
            f"now a replay (clients of gnocchi 0.2 or later keep working); then restart "
            f"gnocchi; see 'Counter store' in docs/server.md")


class Store:
    def __init__(self, state_dir: str):
        self.dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)
        self.counters: dict[bytes, int] = {}
        self.floor = 0

    def load(self) -> "Store":
        """Read the store; a missing one is an error, not an empty store."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(f"{self.path}: the counter store is missing (`gnocchi setup` "
                             f"creates it); without it every captured knock could be "
                             f"replayed; {recovery_hint(self.path)}") from None
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open: {e.strerror}; "
                             f"{recovery_hint(self.path)}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                raw = f.read(MAX_FILE + 1)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot read: {e.strerror}; "
                             f"{recovery_hint(self.path)}") from None
        self.floor, self.counters = parse(raw, self.path)
        return self

    def last(self, client_key: bytes) -> int:
        return self.counters.get(client_key, self.floor)

    def note(self, client_key: bytes, counter: int) -> None:
        """Treat counter as used by this process without writing it: the next
        commit stores it too. For knocks dropped unopened (over a rate limit)."""
        if counter > self.last(client_key):
            self.counters[client_key] = counter

    def commit(self, client_key: bytes, counter: int) -> None:
        """Store counter as client_key's highest, durably, before the caller acts."""
        if not 0 <= counter <= MAX_COUNTER:
            raise ValueError("counter out of range")
        new = dict(self.counters)
        new[client_key] = counter
        try:
            durable.replace_file(self.path, render(new, self.floor).encode("ascii"), 0o600)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot write: {e.strerror or e}; nothing was opened "
                             f"for this knock; fix the state directory {self.dir} "
                             f"(space, permissions) and restart gnocchi") from None
        self.counters = new


def render(counters: dict[bytes, int], floor: int = 0) -> str:
    return (HEADER + (f"floor {floor}\n" if floor else "")
            + "".join(f"{key.hex()} {value}\n" for key, value in sorted(counters.items())
                      if value > floor))


def create(state_dir: str, uid: int = -1, gid: int = -1) -> bool:
    """An empty store, if there is none yet (`gnocchi setup`): True if it made one."""
    path = os.path.join(state_dir, FILE_NAME)
    if os.path.lexists(path):
        return False
    durable.replace_file(path, HEADER.encode("ascii"), 0o600)
    os.chown(path, uid, gid)
    return True


def recover(state_dir: str, now: int, uid: int = -1, gid: int = -1) -> str:
    """Replace a lost or corrupt store by one whose floor is `now`: what was done."""
    path = os.path.join(state_dir, FILE_NAME)
    kept: dict[bytes, int] = {}
    try:
        kept = Store(state_dir).load().counters  # counters above now survive
        was = "kept the counters above it"
    except StoreError:
        was = "the old store was missing or unreadable"
    durable.replace_file(path, render(kept, now).encode("ascii"), 0o600)
    os.chown(path, uid, gid)
    return f"{path}: every counter up to {now} is now a replay ({was})"


def parse(raw: bytes, path: str) -> tuple[int, dict[bytes, int]]:
    """(floor, counters) from a store's bytes."""
    def corrupt(why: str) -> StoreError:
        return StoreError(f"{path}: corrupt counter store ({why}); gnocchi will not start "
                          f"without it, because forgotten counters make old knocks replayable; "
                          f"{recovery_hint(path)}")

    if len(raw) > MAX_FILE:
        raise corrupt(f"larger than {MAX_FILE} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise corrupt("not ASCII text") from None
    if not text.startswith(HEADER):
        raise corrupt("first line is not " + repr(HEADER.strip()))
    if not text.endswith("\n"):
        raise corrupt("truncated: no newline at the end")
    counters: dict[bytes, int] = {}
    lines = text[len(HEADER):-1].split("\n") if text != HEADER else []
    floor = 0
    if lines and (m := _FLOOR.fullmatch(lines[0])):
        floor = int(m.group(1))
        if floor > MAX_COUNTER:
            raise corrupt("line 2: floor out of range")
        lines = lines[1:]
    for number, line in enumerate(lines, start=3 if floor else 2):
        m = _LINE.fullmatch(line)
        if not m or int(m.group(2)) > MAX_COUNTER:
            raise corrupt(f"line {number} is not '<64 hex> <counter>'")
        key = bytes.fromhex(m.group(1))
        if key in counters:
            raise corrupt(f"line {number} repeats a client key")
        counters[key] = int(m.group(2))
    return floor, counters

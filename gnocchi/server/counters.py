"""The durable per-client counter store (PROTOCOL.md, "Counter and replay").

Trusts only its own file, and not even that blindly: the file is parsed
strictly, and anything unexpected is a StoreError naming the file and how to
recover, so the verifier fails closed instead of forgetting counters (which
would make every captured knock replayable). commit() returns only after the
new value is on disk; only then may the verifier act on the knock.

The store is created by `gnocchi setup`; a missing one is a StoreError too,
since an empty store would accept every knock ever captured. The way out of
a lost or corrupt store is recover(): a floor of "now" below which every
counter, of every key, is a replay.

The counters are text, v1, what setup, recover and `gnocchi audit --counters`
write and what an admin may restore:

    # gnocchi counters v1
    floor <counter, decimal>          (optional: the last for any key not listed)
    <client public key, 64 lowercase hex> <highest accepted counter, decimal>

The verifier's commits keep that text in one of two slots of the same file,
each written in place by one O_DSYNC pwrite (docs/server.md, "Counter store"):

    slot 0 at offset 0, slot 1 at offset capacity (the file is 2 x capacity
    bytes, capacity a power of two of at least 4096): "gnocchi2", sequence
    (8 bytes, big-endian), text length (4 bytes), blake2b-256 of those and
    the text, the v1 text, zeros up to capacity

A commit writes the slot not holding the newest state, so a torn write
(its checksum fails) leaves the newest one whole; load takes the valid slot
of highest sequence. A text file, or a state too big for its slot, is
replaced whole instead (temporary file, fsync, rename, fsync the directory)
by a file of two slots: the new state in slot 0, slot 1 blank.
"""

from __future__ import annotations

import os
import re
import struct

from gnocchi.shared import durable
from gnocchi.shared.protocol import MAX_COUNTER, blake2b

FILE_NAME = "counters"
HEADER = "# gnocchi counters v1\n"
_LINE = re.compile(r"([0-9a-f]{64}) (0|[1-9][0-9]{0,33})")
_FLOOR = re.compile(r"floor (0|[1-9][0-9]{0,33})")
MAX_TEXT = 1 << 20  # far above any real client list; a larger text is not ours
SLOT_MAGIC = b"gnocchi2"
_SLOT_HEAD = struct.Struct(">8sQI")  # magic, sequence, text length; then the checksum
_CHECKSUM = 32
SLOT_HEAD = _SLOT_HEAD.size + _CHECKSUM
BLOCK = 4096  # slots start on separate blocks: a torn write of one never touches the other
MAX_CAPACITY = 2 << 20  # a slot for MAX_TEXT, rounded up to a power of two


class StoreError(Exception):
    """The store cannot be read or written; str() names the file and the way out."""


def recovery_hint(path: str) -> str:
    return (
        f"to recover: restore {path} from a backup, or rebuild it from the journal with "
        f"`gnocchi audit --counters > {path}.new && mv {path}.new {path}` (owner gnocchi, "
        f"mode 0600), or run `gnocchi recover-counters`, which makes every counter up to "
        f"now a replay (clients of gnocchi 0.2 or later keep working); then restart "
        f"gnocchi; see 'Counter store' in docs/server.md"
    )


class Store:
    def __init__(self, state_dir: str):
        self.dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)
        self.counters: dict[bytes, int] = {}
        self.floor = 0
        self.sequence = 0  # of the newest slot; a text file counts as sequence 0
        self.newest = 0  # the slot holding it
        self.capacity = 0  # bytes per slot; 0 for a text file, which the first commit replaces
        self.fell_back = False  # a slot was not whole (a commit cut short, or damage)
        self._file_id: tuple[int, int, int] = (0, 0, 0)  # of the file read or last written
        self._fd: int | None = None  # opened by the first in-place commit

    def load(self) -> Store:
        """Read the store; a missing one is an error, not an empty store."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            raise StoreError(
                f"{self.path}: the counter store is missing (`gnocchi setup` "
                f"creates it); without it every captured knock could be "
                f"replayed; {recovery_hint(self.path)}"
            ) from None
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot open: {e.strerror}; {recovery_hint(self.path)}"
            ) from None
        try:
            with os.fdopen(fd, "rb") as f:
                self._file_id = _file_id(os.fstat(f.fileno()))
                raw = f.read(2 * MAX_CAPACITY + 1)
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot read: {e.strerror}; {recovery_hint(self.path)}"
            ) from None
        text = raw
        if not raw.startswith(HEADER.encode("ascii")):
            self.sequence, self.newest, self.capacity, text = newest_slot(raw, self.path)
            self.fell_back = damaged_slot(raw, self.capacity)
        self.floor, self.counters = parse(text, self.path)
        return self

    def fallen_back(self) -> str:
        """What the verifier tells at start when a slot was not whole at load, or ""."""
        return (
            ""
            if not self.fell_back
            else (
                f"{self.path}: one of its two slots is not whole, so the other (sequence "
                f"{self.sequence}) was loaded. After a crash during a commit nothing is lost; "
                "otherwise the disk damaged the newest slot, and the last knock committed before "
                "could be replayed once: compare with `gnocchi audit --counters` (docs/server.md, "
                '"Counter store")'
            )
        )

    def last(self, client_key: bytes) -> int:
        return self.counters.get(client_key, self.floor)

    def note(self, client_key: bytes, counter: int) -> None:
        """Treat counter as used by this process without writing it: the next
        commit stores it too. For knocks dropped unopened (over a rate limit), and
        for those of a batch, before the batch's one commit."""
        if counter > self.last(client_key):
            self.counters[client_key] = counter

    def commit(self, client_key: bytes | None = None, counter: int = 0) -> None:
        """Store every counter noted since the last commit (and counter as client_key's
        highest), durably, in one write, before the caller acts on any of them: the
        verifier's group commit, one per batch of datagrams read."""
        new = dict(self.counters)
        if client_key is not None:
            if not 0 <= counter <= MAX_COUNTER:
                raise ValueError("counter out of range")
            new[client_key] = counter
        text = render(new, self.floor).encode("ascii")
        if len(text) > MAX_TEXT:
            raise StoreError(
                f"{self.path}: cannot write: more than {MAX_TEXT} bytes of "
                f"counters; nothing was opened for these knocks"
            )
        slot = pack_slot(self.sequence + 1, text)
        try:
            if len(slot) <= self.capacity:
                self._write_slot(1 - self.newest, slot)
            else:
                self._replace(slot)
        except OSError as e:
            raise StoreError(
                f"{self.path}: cannot write: {e.strerror or e}; nothing was opened "
                f"for these knocks; fix the state directory {self.dir} "
                f"(space, permissions) and restart gnocchi"
            ) from None
        self.counters = new
        self.sequence += 1

    def _write_slot(self, index: int, slot: bytes) -> None:
        """The one synchronous write of a commit, into the slot not holding the newest state."""
        if self._fd is None:
            fd = os.open(self.path, os.O_WRONLY | os.O_DSYNC | os.O_NOFOLLOW | os.O_CLOEXEC)
            if _file_id(os.fstat(fd)) != self._file_id:
                os.close(fd)
                raise self._replaced()
            self._fd = fd
        if os.pwrite(self._fd, slot, index * self.capacity) != len(slot):
            raise OSError("short write")
        st = os.fstat(self._fd)
        if st.st_nlink == 0:  # the commit went to a file no longer there
            raise self._replaced()
        self._file_id = _file_id(st)
        self.newest = index

    def _replace(self, slot: bytes) -> None:
        """A new file of two slots, the new state in slot 0: for a text file or a grown state."""
        if _file_id(os.lstat(self.path)) != self._file_id:  # a restore, a recovery: theirs stands
            raise self._replaced()
        capacity = BLOCK
        while capacity < len(slot):
            capacity *= 2
        durable.replace_file(self.path, slot.ljust(2 * capacity, b"\0"), 0o600)
        if self._fd is not None:
            os.close(self._fd)
            self._fd = None
        self._file_id = _file_id(os.stat(self.path))
        self.newest, self.capacity = 0, capacity

    def _replaced(self) -> StoreError:
        return StoreError(
            f"{self.path}: was replaced while gnocchi ran (a restore, or "
            f"`gnocchi recover-counters`); nothing was opened for these knocks; "
            f"restart gnocchi, which loads the new store"
        )


def _file_id(st: os.stat_result) -> tuple[int, int, int]:
    # With the change time: a file that replaced ours may get its inode number
    # back once ours is freed (ext4 does), but not the time of our last change.
    return st.st_dev, st.st_ino, st.st_ctime_ns


def checksum(data: bytes) -> bytes:
    # BLAKE2b through the libsodium the verifier has loaded anyway, as protocol.py
    # calls it: hashlib would load OpenSSL (about 3.5 MB of the verifier's memory for
    # this alone), PyNaCl's nacl.hash every binding it has (1.7 MB).
    return blake2b(data, _CHECKSUM)


def pack_slot(sequence: int, text: bytes) -> bytes:
    head = _SLOT_HEAD.pack(SLOT_MAGIC, sequence, len(text))
    return head + checksum(head + text) + text


def unpack_slot(slot: bytes) -> tuple[int, bytes] | None:
    """(sequence, text) of a slot written whole; None for a torn, blank or foreign one."""
    if len(slot) < SLOT_HEAD:
        return None
    magic, sequence, length = _SLOT_HEAD.unpack_from(slot)
    text = slot[SLOT_HEAD : SLOT_HEAD + length]
    expected = checksum(slot[: _SLOT_HEAD.size] + text)
    if magic != SLOT_MAGIC or len(text) != length or slot[_SLOT_HEAD.size : SLOT_HEAD] != expected:
        return None
    return sequence, text


def newest_slot(raw: bytes, path: str) -> tuple[int, int, int, bytes]:
    """(sequence, slot index, capacity, text) of the newest whole slot of a store's bytes."""
    capacity = len(raw) // 2
    if len(raw) % (2 * BLOCK) or not 0 < capacity <= MAX_CAPACITY:
        raise _corrupt(
            path,
            f"first line is not {HEADER.strip()!r}, and {len(raw)} bytes "
            f"are not two slots of a multiple of {BLOCK}",
        )
    whole = [
        (slot[0], index, slot[1])
        for index in (0, 1)
        if (slot := unpack_slot(raw[index * capacity : (index + 1) * capacity]))
    ]
    if not whole:
        raise _corrupt(path, "neither of its two slots is whole")
    if len(whole) == 2 and whole[0][0] == whole[1][0]:
        raise _corrupt(path, f"both slots claim sequence {whole[0][0]}")
    sequence, index, text = max(whole)
    return sequence, index, capacity, text


def damaged_slot(raw: bytes, capacity: int) -> bool:
    """Whether a slot holds bytes but not a whole slot: a commit cut short, or
    damage. A blank one (never written yet) is not."""
    return any(
        not unpack_slot(slot) and slot.strip(b"\0")
        for slot in (raw[:capacity], raw[capacity : 2 * capacity])
    )


def render(counters: dict[bytes, int], floor: int = 0) -> str:
    return (
        HEADER
        + (f"floor {floor}\n" if floor else "")
        + "".join(
            f"{key.hex()} {value}\n" for key, value in sorted(counters.items()) if value > floor
        )
    )


def create(state_dir: str, uid: int = -1, gid: int = -1) -> bool:
    """An empty store, if there is none yet (`gnocchi setup`): True if it made one."""
    path = os.path.join(state_dir, FILE_NAME)
    if os.path.lexists(path):
        return False
    # Owned through the new file's descriptor, never by name: the directory is the
    # verifier's, which may put a symlink at any name in it (root would follow it).
    durable.replace_file(path, HEADER.encode("ascii"), 0o600, owner=(uid, gid))
    return True


def recover(state_dir: str, now: int, uid: int = -1, gid: int = -1) -> str:
    """Replace a lost or corrupt store by one whose floor is `now`: what was done."""
    path = os.path.join(state_dir, FILE_NAME)
    kept: dict[bytes, int] = {}
    try:
        old = Store(state_dir).load()
        kept, now = old.counters, max(now, old.floor)  # above now survive; the floor never falls
        was = "kept the counters above it"
    except StoreError:
        was = "the old store was missing or unreadable"
    durable.replace_file(path, render(kept, now).encode("ascii"), 0o600, owner=(uid, gid))
    return f"{path}: every counter up to {now} is now a replay ({was})"


def _corrupt(path: str, why: str) -> StoreError:
    return StoreError(
        f"{path}: corrupt counter store ({why}); gnocchi will not start "
        f"without it, because forgotten counters make old knocks replayable; "
        f"{recovery_hint(path)}"
    )


def parse(raw: bytes, path: str) -> tuple[int, dict[bytes, int]]:
    """(floor, counters) from v1 text."""

    def corrupt(why: str) -> StoreError:
        return _corrupt(path, why)

    if len(raw) > MAX_TEXT:
        raise corrupt(f"larger than {MAX_TEXT} bytes")
    try:
        text = raw.decode("ascii")
    except UnicodeDecodeError:
        raise corrupt("not ASCII text") from None
    if not text.startswith(HEADER):
        raise corrupt("first line is not " + repr(HEADER.strip()))
    if not text.endswith("\n"):
        raise corrupt("truncated: no newline at the end")
    counters: dict[bytes, int] = {}
    lines = text[len(HEADER) : -1].split("\n") if text != HEADER else []
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

"""The durable per-client counter store (PROTOCOL.md, "Counter and replay").

Trusts only its own file, and not even that blindly: the file is parsed
strictly, and anything unexpected is a StoreError naming the file and how to
recover, so the verifier fails closed instead of forgetting counters (which
would make every captured knock replayable). commit() returns only after the
new value is on disk (write a temporary file, fsync, rename over the store,
fsync the directory); only then may the verifier act on the knock.

File format (text, also what `gnocchi audit --counters` prints to rebuild it):

    # gnocchi counters v1
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
MAX_FILE = 1 << 20  # far above any real client list; a larger file is not ours


class StoreError(Exception):
    """The store cannot be read or written; str() names the file and the way out."""


def recovery_hint(path: str) -> str:
    return (f"to recover: restore {path} from a backup, or rebuild it from the journal with "
            f"`gnocchi audit --counters > {path}.new && mv {path}.new {path}` "
            f"(owner gnocchi, mode 0600), then restart gnocchi; "
            f"see 'Counter store' in docs/server.md")


class Store:
    def __init__(self, state_dir: str):
        self.dir = state_dir
        self.path = os.path.join(state_dir, FILE_NAME)
        self.counters: dict[bytes, int] = {}

    def load(self) -> "Store":
        """Read the store; a missing file is an empty store (first start)."""
        try:
            fd = os.open(self.path, os.O_RDONLY | os.O_NOFOLLOW | os.O_CLOEXEC)
        except FileNotFoundError:
            return self
        except OSError as e:
            raise StoreError(f"{self.path}: cannot open: {e.strerror}; "
                             f"{recovery_hint(self.path)}") from None
        try:
            with os.fdopen(fd, "rb") as f:
                raw = f.read(MAX_FILE + 1)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot read: {e.strerror}; "
                             f"{recovery_hint(self.path)}") from None
        self.counters = parse(raw, self.path)
        return self

    def last(self, client_key: bytes) -> int:
        return self.counters.get(client_key, 0)

    def commit(self, client_key: bytes, counter: int) -> None:
        """Store counter as client_key's highest, durably, before the caller acts."""
        if not 0 <= counter <= MAX_COUNTER:
            raise ValueError("counter out of range")
        new = dict(self.counters)
        new[client_key] = counter
        try:
            durable.replace_file(self.path, render(new).encode("ascii"), 0o600)
        except OSError as e:
            raise StoreError(f"{self.path}: cannot write: {e.strerror or e}; nothing was opened "
                             f"for this knock; fix the state directory {self.dir} "
                             f"(space, permissions) and restart gnocchi") from None
        self.counters = new


def render(counters: dict[bytes, int]) -> str:
    return HEADER + "".join(f"{key.hex()} {value}\n" for key, value in sorted(counters.items()))


def parse(raw: bytes, path: str) -> dict[bytes, int]:
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
    for number, line in enumerate(text[len(HEADER):-1].split("\n") if text != HEADER else [],
                                  start=2):
        m = _LINE.fullmatch(line)
        if not m or int(m.group(2)) > MAX_COUNTER:
            raise corrupt(f"line {number} is not '<64 hex> <counter>'")
        key = bytes.fromhex(m.group(1))
        if key in counters:
            raise corrupt(f"line {number} repeats a client key")
        counters[key] = int(m.group(2))
    return counters

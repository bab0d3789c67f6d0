"""The client's counter state: one file per (server key, client key), taken under
an exclusive lock, stored durably before a knock goes out.

Trusts only the user's own state directory. Guarantees: a counter is used at
most once per (server key, client key) on this machine; the new value is
written, fsynced and renamed into place (shared/durable.py) before
take_counter returns it, and a file that is not a counter is refused, never
guessed at.
"""

from __future__ import annotations

import os
import re
import time

from gnocchi.shared import durable, protocol

_COUNTER_TEXT = re.compile(rb"[0-9]{1,34}\n")


class CounterError(Exception):
    """The counter state cannot give a counter; the message is one line for the user."""


# Paths are str and os.path, not pathlib: importing pathlib (with urllib.parse
# and ipaddress) costs the client's start ~3 ms.
def default_state_dir() -> str:
    base = os.environ.get("XDG_STATE_HOME") or os.path.join(
        os.path.expanduser("~"), ".local", "state"
    )
    return os.path.join(base, "gnocchi")


def clock_floor() -> int:
    """The lowest counter a knock may take: the clock in nanoseconds.

    Each counter is max(stored + 1, clock), so counters follow the clock and
    stay above it only by the knocks sent within one nanosecond. A fresh
    state (lost, new machine) starts above every counter this key used
    before, and a server that recovered its lost store with a floor of "now"
    (`gnocchi recover-counters`) accepts the next knock: both recover
    without the other side's help (docs/client.md). The clock needs 64 bits
    until 2262; the counter has 112.
    """
    return time.time_ns()


def counter_path(state_dir, server_key: bytes, client_public: bytes) -> str:
    """One file per (server key, client key), named by a hash: the secret never appears."""
    name = protocol.blake2b(server_key + client_public, 16, person=b"gnocchi-counter").hex()
    return os.path.join(state_dir, f"{name}.counter")


def take_counter(path: str) -> int:
    """Store and return the next counter: max(stored + 1, the clock floor)."""
    state_dir = os.path.dirname(path)
    try:
        os.makedirs(state_dir, mode=0o700, exist_ok=True)  # the mode is the last one's only
        lock_fd = os.open(
            os.path.splitext(path)[0] + ".lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600
        )
    except OSError as e:
        raise CounterError(f"counter state {state_dir}: {e.strerror}") from None
    try:
        durable.lock_exclusive(lock_fd)  # held until the new value is durable
        try:
            with open(path, "rb") as f:
                raw = f.read(64)
        except FileNotFoundError:
            raw = None
        if raw is None:
            counter = clock_floor()
        elif _COUNTER_TEXT.fullmatch(raw):
            counter = max(int(raw) + 1, clock_floor())
        else:
            raise CounterError(
                f"{path}: corrupt counter file; fix: remove it, the next knock "
                "then takes its counter from the clock (see docs/client.md)"
            )
        if counter > protocol.MAX_COUNTER:
            raise CounterError(f"{path}: counter exhausted; fix: make a new client key")
        durable.replace_file(path, b"%d\n" % counter, 0o600)
    except OSError as e:
        raise CounterError(f"{path}: cannot store the counter: {e.strerror}") from None
    finally:
        os.close(lock_fd)  # releases the lock
    return counter

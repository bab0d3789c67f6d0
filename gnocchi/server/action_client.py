"""The verifier's side of `run NAME` (gnocchi/server/action_runner.py is the other).

Trusts the runner for nothing but an outcome to log: its reply is parsed as
untrusted bytes (exact header, at most OUTPUT_LIMIT bytes after it, escaped
before logging). Guarantees that the verifier never waits for an action:
start() connects to the action socket, sends one request and returns; the
verifier's loop watches the connection and hands its reply to finish().
At most one run per client and MAX_RUNS in all are open, and each is given
up at its action's timeout plus GRACE, so the state is bounded by the config.
Builds requests only from typed values: the configured action and client
names, an ipaddress object, and the payload's bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Callable
from dataclasses import dataclass

from gnocchi.server import actions, config

REQUEST = struct.Struct("!BBBBH16s")  # version, family, name len, client len, payload len, address
REPLY = struct.Struct("!BBi")  # version, kind, exit status; then output or why, bounded
VERSION = 1
EXITED, TIMED_OUT, NOT_STARTED, REFUSED = range(4)
MAX_RUNS = 4  # at once, over all clients; gnocchi-action.socket's MaxConnections=8 backs it
GRACE = 15.0  # seconds beyond the action's timeout for the runner to start and report
SEND_TIMEOUT = 1.0  # connect + send only: the socket is systemd's, it accepts at once
NOT_REPORTED = (
    "the runner closed the connection without an outcome (gnocchi-action.socket "
    "refused it, or the runner failed: journalctl -u 'gnocchi-action@*')"
)


class RunnerUnreachable(Exception):
    """The action socket did not take the request; str() says why."""


def encode_request(
    name: str, client: str, source: ipaddress.IPv4Address | ipaddress.IPv6Address, payload: bytes
) -> bytes:
    address = source.packed.ljust(16, b"\0")
    head = REQUEST.pack(VERSION, source.version, len(name), len(client), len(payload), address)
    return head + name.encode("ascii") + client.encode("ascii") + payload


def parse_reply(reply: bytes, timeout: float) -> actions.Outcome:
    """The runner's reply -> Outcome; anything malformed is an outcome too, never an error."""
    if len(reply) < REPLY.size or len(reply) > REPLY.size + actions.OUTPUT_LIMIT:
        return actions.Outcome(None, b"", f"the runner's reply is malformed ({len(reply)} bytes)")
    version, kind, status = REPLY.unpack_from(reply)
    rest = reply[REPLY.size :]
    if version != VERSION or kind > REFUSED:
        return actions.Outcome(
            None, b"", f"the runner's reply is malformed (version {version}, kind {kind})"
        )
    if kind == TIMED_OUT:
        return actions.Outcome(None, rest, f"killed after its timeout of {timeout:g} s")
    if kind == NOT_STARTED:
        return actions.Outcome(None, rest, "the runner could not start it")
    if kind == REFUSED:
        return actions.Outcome(None, rest, "the runner refused the request")
    if status < 0:
        return actions.Outcome(status, rest, f"killed by signal {-status}")
    return actions.Outcome(status, rest, f"exited with status {status}" if status else "")


@dataclass
class Run:
    client: str
    action: str
    timeout: float
    conn: socket.socket
    deadline: float
    context: dict[str, object]  # the caller's, handed back with the outcome


class Runs:
    """The action runs in flight, one per client, at most `limit`."""

    def __init__(
        self, socket_path: str, limit: int = MAX_RUNS, clock: Callable[[], float] = time.monotonic
    ) -> None:
        self.path = socket_path
        self.limit = limit
        self.clock = clock
        self.by_client: dict[str, Run] = {}

    def refusal(self, client: str) -> str | None:
        """Why client may not start a run now, or None."""
        if client in self.by_client:
            run = self.by_client[client]
            return (
                f"this client's action {run.action!r} is still running (one at a time per client)"
            )
        if len(self.by_client) >= self.limit:
            return f"{self.limit} actions are running, the most at once"
        return None

    def start(
        self,
        client: str,
        action: config.Action,
        source: ipaddress.IPv4Address | ipaddress.IPv6Address,
        payload: bytes,
        context: dict[str, object],
    ) -> None:
        """Send the request and return at once; raises RunnerUnreachable."""
        message = encode_request(action.name, client, source, payload)
        conn = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        try:
            conn.settimeout(SEND_TIMEOUT)
            conn.connect(self.path)
            conn.send(message)
            conn.setblocking(False)
        except TimeoutError:
            conn.close()
            raise RunnerUnreachable(
                f"{self.path} took no request within {SEND_TIMEOUT:g} s"
            ) from None
        except OSError as e:
            conn.close()
            raise RunnerUnreachable(f"{self.path}: {e.strerror or e}") from None
        self.by_client[client] = Run(
            client,
            action.name,
            action.timeout,
            conn,
            self.clock() + action.timeout + GRACE,
            context,
        )

    def connections(self) -> list[socket.socket]:
        return [run.conn for run in self.by_client.values()]

    def finish(self, conn: socket.socket) -> tuple[dict[str, object], actions.Outcome] | None:
        """The outcome on a connection the loop saw readable (or closed); None: not yet."""
        run = next(r for r in self.by_client.values() if r.conn is conn)
        try:
            reply = conn.recv(REPLY.size + actions.OUTPUT_LIMIT + 1)
            outcome = (
                parse_reply(reply, run.timeout)
                if reply
                else actions.Outcome(None, b"", NOT_REPORTED)
            )
        except BlockingIOError:
            return None  # woken without data after all: keep waiting
        except OSError as e:
            outcome = actions.Outcome(
                None, b"", f"connection to the runner lost: {e.strerror or e}"
            )
        return self._end(run), outcome

    def overdue(self) -> list[tuple[dict[str, object], actions.Outcome]]:
        """Runs past their deadline, given up (closing makes the runner's report fail)."""
        now = self.clock()
        late = [r for r in self.by_client.values() if now >= r.deadline]
        return [
            (
                self._end(r),
                actions.Outcome(
                    None,
                    b"",
                    f"no outcome from the runner within {r.timeout + GRACE:g} s; given up",
                ),
            )
            for r in late
        ]

    def _end(self, run: Run) -> dict[str, object]:
        del self.by_client[run.client]
        run.conn.close()
        return run.context

"""The verifier's side of the helper request (docs/contracts.md; helper/request.py is the other).

Trusts the helper only to answer one byte. Sends exactly one request (one
address, 1 to MAX_PORTS ports the helper opens all or none of, and the client's
name, which the helper writes on each opening and counts them by) per connection
on the helper's SOCK_SEQPACKET socket, with a deadline past
which the helper acts on it no more (several connections in flight at once for
the knocks of one batch), waits for the status byte until a little
after that deadline, and reports either a status name or why there is none,
saying whether anything can have been opened. Builds the request only from typed values (an
ipaddress object, objects with an int .port and a .proto of "tcp"/"udp"): never from packet bytes.
"""

from __future__ import annotations

import ipaddress
import socket
import struct
import time
from collections.abc import Callable, Iterable

from gnocchi.shared import knock_request

# The format by the names helper/request.py gives it (docs/contracts.md).
# A header (version, family, count, name length, address, deadline: CLOCK_MONOTONIC,
# ms), then `count` entries (proto, port), then the client's name (config.NAME).
HEADER = struct.Struct("!BBBB16sQ")
ENTRY = struct.Struct("!BH")
VERSION = 4
MAX_PORTS = 8
PROTOCOLS = {6: "tcp", 17: "udp"}  # the proto byte, and its name (as nft writes it)
STATUSES = (
    "OK",
    "BAD_PEER",
    "BAD_LENGTH",
    "BAD_VERSION",
    "BAD_ADDRESS",
    "NOT_PROTECTED",
    "BAD_PROTO",
    "TOO_MANY",
    "NFT_FAILED",
    "EXPIRED",
    "BAD_COUNT",
    "BAD_DUPLICATE",
    "BAD_NAME",
)
DEADLINE = 3.0  # seconds: the helper acts on the request only before this
GRACE = 1.0  # seconds more to wait for its answer: one nft transaction takes milliseconds
# Requests in flight at once: far below a listening socket's queue (systemd's Backlog=,
# SOMAXCONN by default; a connect to a full one fails at once), enough to keep the helper busy.
WINDOW = 8


class HelperUnreachable(Exception):
    """The helper did not answer; str() says why (no socket, refused, timeout, ...)."""


def encode(
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    opens: Iterable[knock_request.Open],
    client: str,
    deadline_ms: int,
) -> bytes:
    """The request for opens (each with .port and .proto) for client (a configured
    name); ValueError for what the helper would refuse whole, so the caller keeps to
    1..MAX_PORTS distinct ports."""
    number = {name: n for n, name in PROTOCOLS.items()}
    entries = [(number[o.proto], o.port) for o in opens]
    if not 1 <= len(entries) <= MAX_PORTS:
        raise ValueError(f"{len(entries)} ports in one request: the helper takes 1 to {MAX_PORTS}")
    if len(set(entries)) != len(entries):
        raise ValueError("a port twice in one request: the helper refuses it whole")
    name = client.encode("ascii")  # config.NAME: 1..64 of [A-Za-z0-9_.-]
    packed = address.packed + bytes(16 - len(address.packed))  # IPv4: then 12 zero bytes
    return (
        HEADER.pack(VERSION, address.version, len(entries), len(name), packed, deadline_ms)
        + b"".join(ENTRY.pack(*entry) for entry in entries)
        + name
    )


def request_open(
    socket_path: str,
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
    opens: Iterable[knock_request.Open],
    client: str,
    deadline: float = DEADLINE,
    clock: Callable[[], float] = time.monotonic,
) -> str:
    """Ask the helper to open every one of opens (objects with .port, .proto) to
    address for client, all or none; returns its status name ("OK", ...)."""
    answer = request_opens(socket_path, [(address, opens, client)], deadline, clock)[0]
    if isinstance(answer, HelperUnreachable):
        raise answer
    return answer


def request_opens(
    socket_path: str,
    asks: list,
    deadline: float = DEADLINE,
    clock: Callable[[], float] = time.monotonic,
) -> list[str | HelperUnreachable]:
    """request_open for each (address, opens, client) of asks, WINDOW of them in flight at
    once (one connection each, sent before the earlier ones' answers are read: the helper
    takes them in turn while the others wait in its socket's queue); each one's status
    name, or the HelperUnreachable that says why it has none. ValueError before anything
    is sent if one of them is what the helper would refuse whole."""
    start = clock()
    messages = [
        encode(address, opens, client, int((start + deadline) * 1000))
        for address, opens, client in asks
    ]
    answers: list[str | HelperUnreachable] = []
    flight: list[socket.socket | HelperUnreachable] = []
    for message in messages:
        if len(flight) == WINDOW:  # the oldest answered first: the helper's queue stays short
            answers.append(_answer(flight.pop(0), socket_path, start + deadline, deadline, clock))
        try:  # socket() too: out of descriptors, this knock fails, not the batch
            sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        except OSError as e:
            flight.append(HelperUnreachable(f"not opened: {socket_path}: {_why(e)}"))
            continue
        try:
            sock.settimeout(max(0.0, start + deadline - clock()))
            sock.connect(socket_path)
            sock.send(message)
            flight.append(sock)
        except OSError as e:
            sock.close()
            flight.append(HelperUnreachable(f"not opened: {socket_path}: {_why(e)}"))
    return answers + [_answer(s, socket_path, start + deadline, deadline, clock) for s in flight]


def _why(e: OSError) -> str:
    return "no answer" if isinstance(e, socket.timeout) else (e.strerror or str(e))


def _answer(
    sock: socket.socket | HelperUnreachable,
    socket_path: str,
    end: float,
    deadline: float,
    clock: Callable[[], float],
) -> str | HelperUnreachable:
    """The status name the helper sent on sock, or why there is none."""
    if isinstance(sock, HelperUnreachable):
        return sock
    with sock:
        try:
            sock.settimeout(max(0.0, end + GRACE - clock()))
            reply = sock.recv(2)  # one byte expected; two lets a longer reply be seen
        except OSError as e:
            # Sent: the helper may have taken it before its deadline. Say what is
            # known, never "not opened" for what may be an opening.
            return HelperUnreachable(
                f"{socket_path}: {_why(e)} within {deadline + GRACE:g} s; "
                f"the helper opens nothing past the request's {deadline:g} s "
                "deadline: its own entry says whether it acted"
            )
    if len(reply) != 1:
        return HelperUnreachable(f"{socket_path}: answered {len(reply)} bytes, not one status byte")
    return STATUSES[reply[0]] if reply[0] < len(STATUSES) else f"UNKNOWN_{reply[0]}"

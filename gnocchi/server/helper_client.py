"""The verifier's side of the helper request (docs/contracts.md; helper/request.py is the other).

Trusts the helper only to answer one byte. Sends exactly one request (one
address, 1 to MAX_PORTS ports the helper opens all or none of) per connection
on the helper's SOCK_SEQPACKET socket, with a deadline past
which the helper acts on it no more, waits for the status byte until a little
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
# A header (version, family, count, pad, address, deadline: CLOCK_MONOTONIC, ms),
# then `count` entries (proto, port).
HEADER = struct.Struct("!BBBB16sQ")
ENTRY = struct.Struct("!BH")
VERSION = 3
MAX_PORTS = 8
PROTOCOLS = {6: "tcp", 17: "udp"}  # the proto byte, and its name (as nft writes it)
STATUSES = ("OK", "BAD_PEER", "BAD_LENGTH", "BAD_VERSION", "BAD_ADDRESS", "NOT_PROTECTED",
            "BAD_PROTO", "RATE_LIMITED", "NFT_FAILED", "EXPIRED", "BAD_COUNT", "BAD_DUPLICATE")
DEADLINE = 3.0  # seconds: the helper acts on the request only before this
GRACE = 1.0     # seconds more to wait for its answer: one nft transaction takes milliseconds


class HelperUnreachable(Exception):
    """The helper did not answer; str() says why (no socket, refused, timeout, ...)."""


def encode(address: ipaddress.IPv4Address | ipaddress.IPv6Address,
           opens: Iterable[knock_request.Open], deadline_ms: int) -> bytes:
    """The request for opens (each with .port and .proto); ValueError for what the
    helper would refuse whole, so the caller keeps to 1..MAX_PORTS distinct ports."""
    number = {name: n for n, name in PROTOCOLS.items()}
    entries = [(number[o.proto], o.port) for o in opens]
    if not 1 <= len(entries) <= MAX_PORTS:
        raise ValueError(f"{len(entries)} ports in one request: the helper takes 1 to {MAX_PORTS}")
    if len(set(entries)) != len(entries):
        raise ValueError("a port twice in one request: the helper refuses it whole")
    packed = address.packed + bytes(16 - len(address.packed))  # IPv4: then 12 zero bytes
    return HEADER.pack(VERSION, address.version, len(entries), 0, packed, deadline_ms) + b"".join(
        ENTRY.pack(*entry) for entry in entries)


def request_open(socket_path: str, address: ipaddress.IPv4Address | ipaddress.IPv6Address,
                 opens: Iterable[knock_request.Open], deadline: float = DEADLINE,
                 clock: Callable[[], float] = time.monotonic) -> str:
    """Ask the helper to open every one of opens (objects with .port, .proto) to
    address, all or none; returns its status name ("OK", ...)."""
    start = clock()
    message = encode(address, opens, int((start + deadline) * 1000))
    sent = False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(deadline)
            sock.connect(socket_path)
            sock.send(message)
            sent = True
            sock.settimeout(max(0.0, start + deadline + GRACE - clock()))
            reply = sock.recv(2)  # one byte expected; two lets a longer reply be seen
    except (TimeoutError, OSError) as e:
        why = "no answer" if isinstance(e, socket.timeout) else (e.strerror or str(e))
        if not sent:
            raise HelperUnreachable(f"not opened: {socket_path}: {why}") from None
        # Sent: the helper may have taken it before its deadline. Say what is
        # known, never "not opened" for what may be an opening.
        raise HelperUnreachable(f"{socket_path}: {why} within {deadline + GRACE:g} s; the "
                                f"helper opens nothing past the request's {deadline:g} s "
                                "deadline: its own entry says whether it acted") from None
    if len(reply) != 1:
        raise HelperUnreachable(f"{socket_path}: answered {len(reply)} bytes, not one status byte")
    status = reply[0]
    return STATUSES[status] if status < len(STATUSES) else f"UNKNOWN_{status}"

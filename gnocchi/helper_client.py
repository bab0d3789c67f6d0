"""The verifier's side of the helper request (docs/contracts.md; helper/request.py is the other).

Trusts the helper only to answer one byte. Sends exactly one 30-byte request
per connection on the helper's SOCK_SEQPACKET socket, with a deadline past
which the helper acts on it no more, waits for the status byte until a little
after that deadline, and reports either a status name or why there is none,
saying whether anything can have been opened. Builds the request only from typed values (an
ipaddress object, an int port, "tcp"/"udp"): never from packet bytes.
"""
from __future__ import annotations

import ipaddress
import socket
import struct
import time

# The format by the names helper/request.py gives it (docs/contracts.md).
# version, family, proto, pad, port, address, deadline (CLOCK_MONOTONIC, ms): 30 bytes
REQUEST = struct.Struct("!BBBBH16sQ")
VERSION = 2
PROTOCOLS = {6: "tcp", 17: "udp"}  # the proto byte, and its name (as nft writes it)
STATUSES = ("OK", "BAD_PEER", "BAD_LENGTH", "BAD_VERSION", "BAD_ADDRESS",
            "NOT_PROTECTED", "BAD_PROTO", "RATE_LIMITED", "NFT_FAILED", "EXPIRED")
DEADLINE = 3.0  # seconds: the helper acts on the request only before this
GRACE = 1.0     # seconds more to wait for its answer: one nft transaction takes milliseconds


class HelperUnreachable(Exception):
    """The helper did not answer; str() says why (no socket, refused, timeout, ...)."""


def encode(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, proto: str,
           deadline_ms: int) -> bytes:
    if address.version == 4:
        packed = address.packed + bytes(12)
    else:
        packed = address.packed
    number = next(n for n, name in PROTOCOLS.items() if name == proto)
    return REQUEST.pack(VERSION, address.version, number, 0, port, packed, deadline_ms)


def request_open(socket_path: str, address, port: int, proto: str,
                 deadline: float = DEADLINE, clock=time.monotonic) -> str:
    """Ask the helper to open port/proto to address; returns its status name ("OK", ...)."""
    start = clock()
    message = encode(address, port, proto, int((start + deadline) * 1000))
    sent = False
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(deadline)
            sock.connect(socket_path)
            sock.send(message)
            sent = True
            sock.settimeout(max(0.0, start + deadline + GRACE - clock()))
            reply = sock.recv(2)  # one byte expected; two lets a longer reply be seen
    except (socket.timeout, OSError) as e:
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

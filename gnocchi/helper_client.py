"""The verifier's side of the helper request (docs/contracts.md; helper/request.py is the other).

Trusts the helper only to answer one byte. Sends exactly one 22-byte request
per connection on the helper's SOCK_SEQPACKET socket, waits a bounded time
for the status byte, and reports either a status name or why the helper
could not be reached. Builds the request only from typed values (an
ipaddress object, an int port, "tcp"/"udp"): never from packet bytes.
"""
from __future__ import annotations

import ipaddress
import socket
import struct

# The format by the names helper/request.py gives it (docs/contracts.md).
REQUEST = struct.Struct("!BBBBH16s")  # version, family, proto, pad, port, address: 22 bytes
VERSION = 1
PROTOCOLS = {6: "tcp", 17: "udp"}  # the proto byte, and its name (as nft writes it)
STATUSES = ("OK", "BAD_PEER", "BAD_LENGTH", "BAD_VERSION", "BAD_ADDRESS",
            "NOT_PROTECTED", "BAD_PROTO", "RATE_LIMITED", "NFT_FAILED")
TIMEOUT = 3.0  # seconds for connect + send + reply; the helper does one nft transaction


class HelperUnreachable(Exception):
    """The helper did not answer; str() says why (no socket, refused, timeout, ...)."""


def encode(address: ipaddress.IPv4Address | ipaddress.IPv6Address, port: int, proto: str) -> bytes:
    if address.version == 4:
        packed = address.packed + bytes(12)
    else:
        packed = address.packed
    number = next(n for n, name in PROTOCOLS.items() if name == proto)
    return REQUEST.pack(VERSION, address.version, number, 0, port, packed)


def request_open(socket_path: str, address, port: int, proto: str,
                 timeout: float = TIMEOUT) -> str:
    """Ask the helper to open port/proto to address; returns its status name ("OK", ...)."""
    message = encode(address, port, proto)
    try:
        with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as sock:
            sock.settimeout(timeout)
            sock.connect(socket_path)
            sock.send(message)
            reply = sock.recv(2)  # one byte expected; two lets a longer reply be seen
    except socket.timeout:
        raise HelperUnreachable(f"no answer from {socket_path} within {timeout:g} s") from None
    except OSError as e:
        raise HelperUnreachable(f"{socket_path}: {e.strerror or e}") from None
    if len(reply) != 1:
        raise HelperUnreachable(f"{socket_path}: answered {len(reply)} bytes, not one status byte")
    status = reply[0]
    return STATUSES[status] if status < len(STATUSES) else f"UNKNOWN_{status}"

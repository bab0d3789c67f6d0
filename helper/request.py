"""The helper's only parser of the verifier's bytes (docs/contracts.md): any
bytes give a checked Request or the status byte that refuses them, never an
exception (the verifier may be compromised; README.md lists every check)."""
import ipaddress
import struct
from collections import namedtuple

# The format by the names gnocchi/server/helper_client.py gives it (docs/contracts.md).
# A header (version, family, count, pad, address, deadline: 28 bytes), then
# `count` entries (proto, port: 3 bytes each), nothing more. The deadline is
# CLOCK_MONOTONIC in milliseconds: past it the verifier no longer waits, so the
# helper must not act (the audit would say one thing and the table another).
HEADER = struct.Struct("!BBBB16sQ")
ENTRY = struct.Struct("!BH")
VERSION = 3
MAX_PORTS = 8
PROTOCOLS = {6: "tcp", 17: "udp"}  # the proto byte, and its name (as nft writes it)
STATUSES = ("OK", "BAD_PEER", "BAD_LENGTH", "BAD_VERSION", "BAD_ADDRESS", "NOT_PROTECTED",
            "BAD_PROTO", "RATE_LIMITED", "NFT_FAILED", "EXPIRED", "BAD_COUNT", "BAD_DUPLICATE")
(OK, BAD_PEER, BAD_LENGTH, BAD_VERSION, BAD_ADDRESS, NOT_PROTECTED,
 BAD_PROTO, RATE_LIMITED, NFT_FAILED, EXPIRED, BAD_COUNT, BAD_DUPLICATE) = range(len(STATUSES))
MAX_SIZE = HEADER.size + MAX_PORTS * ENTRY.size
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")  # never a source address
# IPv6 sources that embed an IPv4 address (mapped, compatible, 6to4, Teredo,
# NAT64): an element for one would stand for an address that never knocked.
EMBEDDING_IPV4 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96",
    "::/96", "2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48"))


# address: IPv4Address or IPv6Address; opens: ((proto, port), ...), "tcp" or "udp",
# 1..65535, distinct, 1..MAX_PORTS of them; deadline_ms: CLOCK_MONOTONIC, act only before it.
Request = namedtuple("Request", "address opens deadline_ms")


def parse(msg: bytes) -> Request | int:
    """A Request, or the status byte that refuses msg."""
    if len(msg) < HEADER.size:
        return BAD_LENGTH
    version, family, count, pad, raw, deadline_ms = HEADER.unpack_from(msg)
    if version != VERSION or pad != 0:  # version 3 has a zero pad byte
        return BAD_VERSION
    if not 1 <= count <= MAX_PORTS:
        return BAD_COUNT
    if len(msg) != HEADER.size + count * ENTRY.size:
        return BAD_LENGTH
    entries = list(ENTRY.iter_unpack(msg[HEADER.size:]))
    if any(number not in PROTOCOLS for number, _ in entries):
        return BAD_PROTO
    if len(set(entries)) != count:
        return BAD_DUPLICATE
    address = ipaddress.ip_address(raw[:4] if family == 4 else raw)
    if family not in (4, 6) or family == 4 and raw[4:] != bytes(12) or unknockable(address):
        return BAD_ADDRESS
    if any(port == 0 for _, port in entries):
        return NOT_PROTECTED
    return Request(address, tuple((PROTOCOLS[n], port) for n, port in entries), deadline_ms)


def unknockable(a) -> str | None:
    """Why no knock may open for a, or None: the verifier's rule (knock_socket.py), twin."""
    if a.version == 6 and any(a in net for net in EMBEDDING_IPV4):
        return "an IPv6 address that embeds an IPv4 address"
    if (a.is_unspecified or a.is_multicast or a.is_loopback or a.is_link_local or a.is_reserved
            or (a.is_site_local if a.version == 6 else a in THIS_NETWORK)):
        return "not a unicast address a client can knock from"

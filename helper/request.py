"""The helper's only parser of the verifier's bytes (docs/contracts.md): any
bytes give a checked Request or the status byte that refuses them, never an
exception (the verifier may be compromised; README.md lists every check)."""
import ipaddress
import re
import struct
from collections import namedtuple

# The format by the names gnocchi/server/helper_client.py gives it (docs/contracts.md).
# A header (version, family, count, name length, address, deadline: 28 bytes), then
# `count` entries (proto, port: 3 bytes each), then the client's name, nothing more.
# The deadline is CLOCK_MONOTONIC in milliseconds: past it the verifier no longer
# waits, so the helper must not act (the audit would say one thing and the table another).
HEADER = struct.Struct("!BBBB16sQ")
ENTRY = struct.Struct("!BH")
VERSION = 4
MAX_PORTS = 8
PROTOCOLS = {6: "tcp", 17: "udp"}  # the proto byte, and its name (as nft writes it)
NAME = re.compile(rb"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")  # a client's name, as the config's
STATUSES = tuple("OK BAD_PEER BAD_LENGTH BAD_VERSION BAD_ADDRESS NOT_PROTECTED BAD_PROTO "  # noqa: SIM905
                 "TOO_MANY NFT_FAILED EXPIRED BAD_COUNT BAD_DUPLICATE BAD_NAME".split())
(OK, BAD_PEER, BAD_LENGTH, BAD_VERSION, BAD_ADDRESS, NOT_PROTECTED, BAD_PROTO, TOO_MANY,
 NFT_FAILED, EXPIRED, BAD_COUNT, BAD_DUPLICATE, BAD_NAME) = range(len(STATUSES))
MAX_SIZE = HEADER.size + MAX_PORTS * ENTRY.size + 64
# IPv6 sources that embed an IPv4 address (mapped, compatible, 6to4, Teredo,
# NAT64): an element for one would stand for an address that never knocked.
EMBEDDING_IPV4 = tuple(ipaddress.IPv6Network(n) for n in ("::ffff:0:0/96", "::ffff:0:0:0/96",
    "::/96", "2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48"))


# address: IPv4Address or IPv6Address; opens: ((proto, port), ...), "tcp" or "udp",
# 1..65535, distinct, 1..MAX_PORTS of them; deadline_ms: CLOCK_MONOTONIC, act only
# before it; client: the name the verifier gives the knock's client (a claim only).
Request = namedtuple("Request", "address opens deadline_ms client")


def parse(msg: bytes) -> Request | int:
    """A Request, or the status byte that refuses msg."""
    if len(msg) < HEADER.size:
        return BAD_LENGTH
    version, family, count, size, raw, deadline_ms = HEADER.unpack_from(msg)
    if version != VERSION:
        return BAD_VERSION
    if not 1 <= count <= MAX_PORTS:
        return BAD_COUNT
    end = HEADER.size + count * ENTRY.size
    if len(msg) != end + size:
        return BAD_LENGTH
    if not NAME.fullmatch(msg[end:]):
        return BAD_NAME
    entries = list(ENTRY.iter_unpack(msg[HEADER.size:end]))
    if any(number not in PROTOCOLS for number, _ in entries):
        return BAD_PROTO
    if len(set(entries)) != count:
        return BAD_DUPLICATE
    address = ipaddress.ip_address(raw[:4] if family == 4 else raw)
    if family not in (4, 6) or family == 4 and raw[4:] != bytes(12) or unknockable(address):
        return BAD_ADDRESS
    return Request(address, tuple((PROTOCOLS[n], port) for n, port in entries), deadline_ms,
                   msg[end:].decode())


def unknockable(a: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bool:
    """Whether no knock may open for a: the verifier's rule (knock_socket.py), twin."""
    # 0.0.0.0/8 is "this network": never a source address.
    return (a.version == 6 and any(a in net for net in EMBEDDING_IPV4) or a.is_unspecified
            or a.is_multicast or a.is_loopback or a.is_link_local or a.is_reserved
            or (a.is_site_local if a.version == 6 else a.packed[0] == 0))

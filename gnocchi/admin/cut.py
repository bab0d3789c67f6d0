"""After a re-arm, cut the connections that came in while the gate was gone.

The gate judges the packet that starts a connection (a SYN, a UDP flow's first
datagram); one that started while table inet gnocchi was missing or emptied
would otherwise go on after the re-arm (docs/firewall.md, "After a flush").
gnocchi-watch takes a snapshot() whenever it finds the gate whole, and after a
re-arm cut() ends what is new since, on a port protected then and now:

- a TCP socket of this host on a protected port that the snapshot did not
  have, unless its flow was admitted by a knock (conntrack label 120, set by
  the gate's admit chain) or this host started it (conntrack's first packet
  left from a port nothing listens on), is destroyed (SOCK_DESTROY,
  as `ss -K`: the server's socket is closed and the peer gets a RST). Deleting
  the conntrack entry would not do: with nf_conntrack_tcp_loose=1 the next
  segment makes a new one, and the gate does not judge it. Sockets are
  matched by their cookie, which the kernel never reuses, so a session that
  was open before (also one conntrack was not tracking) stays;
- a UDP flow on a protected port that the snapshot did not have, unless it
  was admitted by a knock, loses its conntrack entry: its next datagram is a
  new flow, which the gate judges (an outgoing one is simply tracked anew).
  Either direction counts: a stranger's datagram from the gap that the
  service answers only after the re-arm leaves a flow whose first packet
  conntrack saw leave the protected port.
  UDP sockets are never destroyed: a server's one socket serves everyone;
- a TCP flow translated by a DNAT (to a container, a VM: forwarded, so no
  socket of this host holds it) to a port protected as the client sent it,
  that the snapshot did not have, unless it was admitted by a knock, loses its
  conntrack entry: the gate's chain translated drops the segment that would
  pick it up again (a translated flow always has its entry), so the stranger's
  connection stalls and both ends give it up.

Trusts the kernel's answers over netlink (sock_diag, ctnetlink) in this
network namespace; needs CAP_NET_ADMIN and a kernel with
CONFIG_INET_DIAG_DESTROY (Debian 12's has it). Messages are built from typed
values only.
"""

from __future__ import annotations

import ipaddress
import os
import socket
import struct
import sys
import time
from dataclasses import dataclass

NETLINK_SOCK_DIAG, NETLINK_NETFILTER = 4, 12
SOCK_DIAG_BY_FAMILY, SOCK_DESTROY = 20, 21
CT_NEW, CT_GET, CT_DELETE = 0x100, 0x101, 0x102  # NFNL_SUBSYS_CTNETLINK << 8 | msg
NLMSG_ERROR, NLMSG_DONE = 2, 3
F_REQUEST, F_ACK, F_DUMP = 0x1, 0x4, 0x300
NESTED = 0x8000
CTA_TUPLE_ORIG, CTA_STATUS, CTA_ID, CTA_LABELS = 1, 3, 12, 22
IPS_DST_NAT = 1 << 5  # the flow's destination was translated (a DNAT, a redirect)
CTA_TUPLE_IP, CTA_TUPLE_PROTO = 1, 2
CTA_IP = {4: (1, 2), 6: (3, 4)}  # (src, dst) attribute types
CTA_PROTO_NUM, CTA_PROTO_SRC_PORT, CTA_PROTO_DST_PORT = 1, 2, 3
KNOCKED_LABEL = 120  # set by the gate's admit chain on a flow a knock let in
# TCP states to look at: not LISTEN (the service itself), not TIME_WAIT or CLOSE
# (nothing flows), not SYN_SENT (this host's own connection being made).
STATES = sum(1 << s for s in (1, 3, 4, 5, 8, 9, 11, 12))
LISTENING = 1 << 10
PASSES, PASS_GAP = 3, 0.1  # a handshake a SYN from the window began may finish meanwhile
Address = ipaddress.IPv4Address | ipaddress.IPv6Address


@dataclass(frozen=True)
class Sock:
    """One TCP socket of this host, as sock_diag lists it (addresses unmapped)."""

    family: int
    local: Address
    lport: int
    remote: Address
    rport: int
    cookie: bytes
    raw_id: bytes  # inet_diag_sockid as the kernel gave it, for SOCK_DESTROY


@dataclass(frozen=True)
class Flow:
    """One conntrack entry: its original direction, and its labels."""

    proto: int
    src: Address
    sport: int
    dst: Address
    dport: int
    id: int
    labels: bytes
    status: int = 0

    @property
    def knocked(self) -> bool:
        return has_label(self.labels, KNOCKED_LABEL)

    @property
    def translated(self) -> bool:
        return bool(self.status & IPS_DST_NAT)


@dataclass(frozen=True)
class Snapshot:
    """What was there while the gate was whole."""

    tcp: frozenset  # protected TCP ports
    udp: frozenset  # protected UDP ports
    cookies: frozenset
    flows: frozenset  # conntrack ids of UDP flows to protected ports, and translated TCP flows


# ---- netlink, pure ---------------------------------------------------------------


def attr(kind: int, payload: bytes) -> bytes:
    length = 4 + len(payload)
    return struct.pack("=HH", length, kind) + payload + b"\0" * (-length % 4)


def attrs(data: bytes) -> dict[int, bytes]:
    found, i = {}, 0
    while i + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, i)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[i + 4 : i + length]
        i += (length + 3) & ~3
    return found


def has_label(labels: bytes, bit: int) -> bool:
    """conntrack labels are the kernel's bitmap of unsigned longs, in host order."""
    size = struct.calcsize("L")
    word = labels[bit // (8 * size) * size :][:size]
    return len(word) == size and int.from_bytes(word, sys.byteorder) >> bit % (8 * size) & 1 == 1


def unmapped(address: Address) -> Address:
    mapped = getattr(address, "ipv4_mapped", None)
    return mapped or address


def parse_sock(payload: bytes) -> Sock:
    """An inet_diag_msg: family, state, timer, retrans, then the 48-byte sockid (ports,
    addresses, interface, cookie)."""
    family = payload[0]
    sport, dport = struct.unpack_from("!HH", payload, 4)
    size = 4 if family == socket.AF_INET else 16
    local = unmapped(ipaddress.ip_address(payload[8 : 8 + size]))
    remote = unmapped(ipaddress.ip_address(payload[24 : 24 + size]))
    return Sock(family, local, sport, remote, dport, payload[44:52], payload[4:52])


def sock_request(family: int, states: int, sockid: bytes = b"\0" * 48) -> bytes:
    """An inet_diag_req_v2 for TCP."""
    return struct.pack("=BBBBI", family, socket.IPPROTO_TCP, 0, 0, states) + sockid


def tuple_attr(proto: int, src: Address, sport: int, dst: Address, dport: int) -> bytes:
    kinds = CTA_IP[src.version]
    ip = attr(kinds[0], src.packed) + attr(kinds[1], dst.packed)
    ports = (
        attr(CTA_PROTO_NUM, bytes([proto]))
        + attr(CTA_PROTO_SRC_PORT, struct.pack("!H", sport))
        + attr(CTA_PROTO_DST_PORT, struct.pack("!H", dport))
    )
    return attr(
        CTA_TUPLE_ORIG | NESTED,
        attr(CTA_TUPLE_IP | NESTED, ip) + attr(CTA_TUPLE_PROTO | NESTED, ports),
    )


def nfgen(version: int) -> bytes:
    family = {4: socket.AF_INET, 6: socket.AF_INET6}.get(version, socket.AF_UNSPEC)
    return struct.pack("=BBH", family, 0, 0)


def parse_flow(payload: bytes) -> Flow | None:
    """A ctnetlink entry (after its nfgenmsg), or None if it is not TCP/UDP over IP."""
    top = attrs(payload[4:])
    orig = attrs(top.get(CTA_TUPLE_ORIG, b""))
    ip, ports = attrs(orig.get(CTA_TUPLE_IP, b"")), attrs(orig.get(CTA_TUPLE_PROTO, b""))
    kinds = CTA_IP[4] if CTA_IP[4][0] in ip else CTA_IP[6]
    try:
        return Flow(
            ports[CTA_PROTO_NUM][0],
            ipaddress.ip_address(ip[kinds[0]]),
            struct.unpack("!H", ports[CTA_PROTO_SRC_PORT])[0],
            ipaddress.ip_address(ip[kinds[1]]),
            struct.unpack("!H", ports[CTA_PROTO_DST_PORT])[0],
            struct.unpack("!I", top[CTA_ID])[0],
            top.get(CTA_LABELS, b""),
            struct.unpack("!I", top.get(CTA_STATUS, bytes(4)))[0],
        )
    except (KeyError, IndexError, ValueError, struct.error):
        return None


# ---- netlink, the kernel -----------------------------------------------------------


def request(protocol: int, kind: int, flags: int, body: bytes) -> list[bytes]:
    """One request; the payloads answered. OSError(errno) on the kernel's refusal."""
    with socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, protocol) as s:
        s.settimeout(10)
        s.bind((0, 0))
        s.sendall(struct.pack("=IHHII", 16 + len(body), kind, F_REQUEST | flags, 1, 0) + body)
        found = []
        while True:
            data, i = s.recv(1 << 20), 0
            while i + 16 <= len(data):
                length, kind_, _, _, _ = struct.unpack_from("=IHHII", data, i)
                payload, i = data[i + 16 : i + length], i + ((length + 3) & ~3)
                if kind_ == NLMSG_DONE:
                    return found
                if kind_ == NLMSG_ERROR:
                    error = -struct.unpack_from("=i", payload)[0]
                    if error:
                        raise OSError(error, os.strerror(error))
                    return found
                found.append(payload)
            if not flags & F_DUMP and found:
                return found


def tcp_sockets(ports, states: int = STATES) -> list[Sock]:
    found = []
    for family in (socket.AF_INET, socket.AF_INET6):
        for payload in request(
            NETLINK_SOCK_DIAG, SOCK_DIAG_BY_FAMILY, F_DUMP, sock_request(family, states)
        ):
            sock = parse_sock(payload)
            if sock.lport in ports:
                found.append(sock)
    return found


def destroy(sock: Sock) -> None:
    """Close it as `ss -K` does; the cookie makes sure it is this very socket."""
    request(
        NETLINK_SOCK_DIAG, SOCK_DESTROY, F_ACK, sock_request(sock.family, 0xFFFFFFFF, sock.raw_id)
    )


def flow_of(sock: Sock) -> Flow | None:
    """The conntrack entry of a socket's connection (either direction), if tracked."""
    body = nfgen(sock.local.version) + tuple_attr(
        socket.IPPROTO_TCP, sock.remote, sock.rport, sock.local, sock.lport
    )
    try:
        answers = request(NETLINK_NETFILTER, CT_GET, 0, body)
    except FileNotFoundError:
        return None
    return parse_flow(answers[0]) if answers else None


def flows(tcp, udp) -> list[Flow]:
    """UDP flows on a port of udp (to it, or first seen leaving it), and translated TCP
    flows to a port of tcp (as the client sent them: the original direction)."""
    if not tcp and not udp:
        return []
    found = (parse_flow(p) for p in request(NETLINK_NETFILTER, CT_GET, F_DUMP, nfgen(0)))
    return [
        f
        for f in found
        if f
        and (
            f.proto == socket.IPPROTO_UDP
            and (f.dport in udp or f.sport in udp)
            or f.proto == socket.IPPROTO_TCP
            and f.translated
            and f.dport in tcp
        )
    ]


def delete(flow: Flow) -> None:
    """Delete this very entry (its id), not a later one with the same addresses."""
    body = (
        nfgen(flow.src.version)
        + tuple_attr(flow.proto, flow.src, flow.sport, flow.dst, flow.dport)
        + attr(CTA_ID, struct.pack("!I", flow.id))
    )
    try:
        request(NETLINK_NETFILTER, CT_DELETE, F_ACK, body)
    except FileNotFoundError:
        pass  # gone meanwhile


# ---- the snapshot and the cut ---------------------------------------------------------


def ports(protected: dict) -> tuple[frozenset, frozenset]:
    """(TCP ports, UDP ports) from nft_table.Table.protected() (ranges spelled out)."""

    def spell(items):
        return frozenset(
            p
            for item in items
            for p in ([item] if isinstance(item, int) else range(item[0], item[1] + 1))
        )

    return spell(protected.get("tcp", [])), spell(protected.get("udp", []))


def snapshot(protected: dict) -> Snapshot:
    tcp, udp = ports(protected)
    return Snapshot(
        tcp,
        udp,
        frozenset(s.cookie for s in tcp_sockets(tcp)),
        frozenset(f.id for f in flows(tcp, udp)),
    )


def strangers(before: Snapshot, protected: dict) -> tuple[list[Sock], list[Flow]]:
    """The TCP sockets, and the UDP and translated TCP flows, new since the snapshot, on
    ports protected then and now, that no knock let in."""
    tcp, udp = ports(protected)
    socks = []
    # Conntrack's original direction says who sent the first packet it saw, which for a
    # connection made while nothing tracked (a flushed ruleset) may be the server's. A
    # port a service listens on is never one a connection this host starts takes.
    served = {s.lport for s in tcp_sockets(before.tcp & tcp, LISTENING)}
    for sock in tcp_sockets(before.tcp & tcp):
        if sock.cookie in before.cookies:
            continue
        flow = flow_of(sock)
        if flow is not None and (
            flow.knocked
            or sock.lport not in served
            and (flow.src, flow.sport) == (sock.local, sock.lport)
        ):
            continue  # a knock let it in, or this host started it
        socks.append(sock)
    new = [
        f
        for f in flows(before.tcp & tcp, before.udp & udp)
        if f.id not in before.flows and not f.knocked
    ]
    return socks, new


def cut(before: Snapshot, protected: dict) -> tuple[list[str], list[str]]:
    """Cut the strangers (see the module docstring); (what was cut, what could not be)."""
    done, failed = [], []
    for _ in range(PASSES):
        socks, gone = strangers(before, protected)
        for sock in socks:
            what = f"{sock.remote} port {sock.rport} -> {sock.lport}/tcp"
            try:
                destroy(sock)
                done.append(what)
            except FileNotFoundError:
                pass  # it closed meanwhile
            except OSError as e:
                failed.append(f"{what}: {e.strerror or e}")
        for flow in gone:
            delete(flow)
            done.append(
                f"{flow.src} port {flow.sport} -> {flow.dport}/"
                + ("tcp (translated)" if flow.proto == socket.IPPROTO_TCP else "udp")
            )
        if not socks and not gone or failed:
            break
        time.sleep(PASS_GAP)
    return done, failed

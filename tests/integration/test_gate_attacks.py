"""Attacks on the gate, on the real kernel. An attacker who holds no key
crafts packets to protected ports from an address that never knocked, then
makes an ordinary connect() from the same address and port; a knocked client
tries to turn one knock into several connections; a forger who knows a
client's address tries to spend that client's knock. Nothing may connect
that no knock let in, a knock gives one connection, and the table must come
out of every attack unchanged.

    client ns 198.18.n.1 / fd00::1   --veth--   server ns .2 / ::2
    raw sockets (packets built with scapy)       table inet gnocchi: tcp 22, 2222; udp 60001
                                                 echo tcp 22, 8080 (not protected); udp 60001
                                                 tcp 2222: accepts, then aborts (RST)
                                                           or closes (FIN)
                                                 tcp 21: an "FTP server" (conntrack's ftp helper)

Each attack also runs against a control table where it is known to get
through (CONTROL, a gate that trusts conntrack's view of a flow, or
CONTROL_SYN_SPENDS, one that spends a knock on the first SYN it lets in,
below): that proves the crafted packets really reach the kernel's conntrack,
so a pass against today's table means something.
"""

import contextlib
import errno
import json
import os
import selectors
import socket
import struct
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import (
    IPv6,
    IPv6ExtHdrDestOpt,
    IPv6ExtHdrFragment,
    IPv6ExtHdrHopByHop,
    IPv6ExtHdrRouting,
    fragment6,
)

from support import (
    STATUS,
    EchoServices,
    Helper,
    Net,
    echoes,
    elements,
    inside,
    load_table,
    request,
    tcp_connect,
    udp_socket,
)

OK = STATUS["OK"]
ABORT_PORT = 2222
FLAGS = "FSRPAUEC"  # every combination of the eight TCP flags: 256
OPTIONS = {  # the options a segment may carry that make the server's stack stay silent, or not
    "none": [],
    "md5": [(19, b"\x00" * 16)],  # RFC 2385: dropped silently without a key
    "ao": [(29, b"\x01\x01" + b"\x00" * 12)],  # RFC 5925 TCP-AO
    "timestamps": [("Timestamp", (123456, 0))],
    "sack": [("SAckOK", b""), ("SAck", (1000, 2000))],
    "fastopen": [(34, b"\x11" * 8)],  # RFC 7413 cookie
}

# A table that trusts conntrack for SYNs (nft/gnocchi.nft at 05ccad8~1), the one the attacks
# got through; the real helper knocks it as it knocks today's.
CONTROL = """
table inet gnocchi {}
delete table inet gnocchi
table inet gnocchi {
    set protected_tcp { type inet_service; elements = { 22, 2222 } }
    set protected_udp { type inet_service; elements = { 60001 } }
    set knocked4 { type ipv4_addr . inet_proto . inet_service; flags timeout; size 4096; }
    set knocked6 { type ipv6_addr . inet_proto . inet_service; flags timeout; size 4096; }
    chain input {
        type filter hook input priority filter - 10; policy accept;
        ct state established,related accept
        ct state new ct status confirmed accept
        tcp dport @protected_tcp tcp flags & (syn | ack) == syn jump gate
        meta l4proto udp udp dport @protected_udp jump gate
    }
    chain gate {
        ct state new ip saddr . meta l4proto . th dport @knocked4 delete @knocked4 { ip saddr . meta l4proto . th dport } accept
        ct state new ip6 saddr . meta l4proto . th dport @knocked6 delete @knocked6 { ip6 saddr . meta l4proto . th dport } accept
        drop
    }
}
"""  # noqa: E501 (the rules as they were: an nft rule is one line)


# A gate that spends the knock on the first SYN from the knocked address (0.3's),
# whoever sent it, and lets a flow it admitted retransmit its SYN for as long as
# the server stays silent.
CONTROL_SYN_SPENDS = """
table inet gnocchi {}
delete table inet gnocchi
table inet gnocchi {
    set protected_tcp { type inet_service; elements = { 22, 2222 } }
    set protected_udp { type inet_service; elements = { 60001 } }
    set knocked4 { type ipv4_addr . inet_proto . inet_service; flags timeout; size 4096; }
    set knocked6 { type ipv6_addr . inet_proto . inet_service; flags timeout; size 4096; }
    chain input {
        type filter hook input priority filter - 10; policy accept;
        tcp dport @protected_tcp tcp flags & syn == syn jump tcp_syn
        meta l4proto udp udp dport @protected_udp jump udp_datagram
    }
    chain tcp_syn {
        ct direction reply accept
        ct label 120 ct status ! seen-reply accept
        goto admit
    }
    chain udp_datagram {
        ct status confirmed accept
        goto admit
    }
    chain admit {
        ct state new,established,related ip saddr . meta l4proto . th dport @knocked4 ct label set 120 delete @knocked4 { ip saddr . meta l4proto . th dport } accept
        ct state new,established,related ip6 saddr . meta l4proto . th dport @knocked6 ct label set 120 delete @knocked6 { ip6 saddr . meta l4proto . th dport } accept
        drop
    }
}
"""  # noqa: E501 (the rules as they were: an nft rule is one line)


@pytest.fixture(scope="module")
def net():
    with Net("ga") as net:
        yield net


@pytest.fixture
def table(net, tmp_path):
    """Today's table, with an unchanged-ness check after the attack."""
    load_table(net.server, tmp_path, tcp_ports=(22, ABORT_PORT), udp_ports=(60001,))
    before = listing(net.server)
    yield "current"
    after = listing(net.server)
    net.server.nft("delete", "table", "inet", "gnocchi")
    assert after == before, "an attack changed table inet gnocchi"


@pytest.fixture
def control(net):
    """The control table, where the attacks are known to work."""
    load_text(net.server, CONTROL)
    yield "control"
    net.server.nft("delete", "table", "inet", "gnocchi")


@pytest.fixture(params=["current", "control-syn-spends"])
def gate(request, net, tmp_path):
    """Today's table, and as a control the one that spends a knock on a SYN, which the
    forger's attacks get through."""
    if request.param == "current":
        load_table(net.server, tmp_path, tcp_ports=(22, ABORT_PORT), udp_ports=(60001,))
    else:
        load_text(net.server, CONTROL_SYN_SPENDS)
    yield request.param
    net.server.nft("delete", "table", "inet", "gnocchi")


@pytest.fixture(scope="module")
def services(net):
    with EchoServices(net.server, tcp_ports=(22, 8080), udp_ports=(60001,)):
        yield


def load_text(host, text: str) -> None:
    host.run(["nft", "-f", "-"], input=text)


def listing(host) -> str:
    """The table as nft -j lists it, but for the /64s that connected with a knock
    (knockers6): a knocked IPv6 connection adds one there, and should."""
    out = json.loads(host.nft("-j", "list", "table", "inet", "gnocchi").stdout)
    for item in out["nftables"]:
        if item.get("set", {}).get("name") == "knockers6":
            item["set"].pop("elem", None)
    return json.dumps(out)


def knockers(host) -> list:
    return elements(host, "knockers6")


def addresses(net, v6: bool) -> tuple[str, str]:
    return (net.client.ip6, net.server.ip6) if v6 else (net.client.ip, net.server.ip)


def send_raw(host, packets) -> None:
    """Send whole IP packets (header included) from host."""
    with inside(host):
        raw4 = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
        raw6 = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
    with raw4, raw6:
        for p in packets:
            (raw6 if p.version == 6 else raw4).sendto(bytes(p), (p.dst, 0))
    time.sleep(0.2)  # let the server's stack and conntrack see them all


def ip_layer(src: str, dst: str):
    return IPv6(src=src, dst=dst) if ":" in dst else IP(src=src, dst=dst)


def connects_from(host, src: str, dst: str, port: int, sports, wait: float = 1.5) -> set:
    """Ordinary connect()s from each (src, sport) at once: the ports that got a connection.
    `wait` covers the first SYN retransmission (1 s)."""
    family = socket.AF_INET6 if ":" in dst else socket.AF_INET
    socks = {}
    with inside(host):
        for sport in sports:
            s = socket.socket(family, socket.SOCK_STREAM)
            s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            s.bind((src, sport))
            s.setblocking(False)
            err = s.connect_ex((dst, port))
            assert err == errno.EINPROGRESS, f"connect from port {sport}: {os.strerror(err)}"
            socks[s] = sport
    poller = selectors.DefaultSelector()
    for s in socks:
        poller.register(s, selectors.EVENT_WRITE)
    connected, deadline = set(), time.monotonic() + wait
    try:
        while poller.get_map() and time.monotonic() < deadline:
            for key, _ in poller.select(deadline - time.monotonic()):
                s = key.fileobj
                poller.unregister(s)
                err = s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
                # Only silence (a dropped SYN) is the answer sought: another
                # error would mean the harness tested something else. A reset
                # comes after the handshake (the service aborted it).
                assert err in (0, errno.ECONNRESET), f"port {socks[s]}: {os.strerror(err)}"
                connected.add(socks[s])
    finally:
        poller.close()
        for s in socks:
            s.close()
    return connected


def connect_until_reset(host, src: str, dst: str, port: int, sport: int) -> bool:
    """One connect() from (src, sport), then read until the service's RST: True
    if it connected. The client sends nothing more (no FIN), so the flow ends
    as the server ended it."""
    with inside(host):
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_STREAM)
    with s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, sport))
        s.settimeout(1.5)
        try:
            s.connect((dst, port))
            assert s.recv(1) == b"", "the service sent data"
        except TimeoutError:
            return False
        except ConnectionResetError:  # after the handshake: it did connect
            pass
        return True


def crafted_segments(src, dst, dport, first_sport):
    """One segment per (flag combination, option set), each from its own source port."""
    segments, sport = [], first_sport
    for options in OPTIONS.values():
        for bits in range(256):
            flags = "".join(f for i, f in enumerate(FLAGS) if bits >> i & 1)
            segments.append(
                ip_layer(src, dst)
                / TCP(sport=sport, dport=dport, flags=flags, seq=1000, ack=5000, options=options)
            )
            sport += 1
    return segments


class SynAcks:
    """The client ports that got a SYN-ACK from the server while the block ran:
    raw TCP sockets in the client's namespace see every segment that arrives."""

    def __init__(self, host):
        with inside(host):
            self.socks = [
                socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP),
                socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_TCP),
            ]
        self.ports: set = set()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        time.sleep(0.2)  # the server's answers to the last segments
        for sock, skip_ip in zip(self.socks, (True, False), strict=True):
            sock.setblocking(False)
            while True:
                try:
                    data = sock.recv(4096)
                except BlockingIOError:
                    break
                segment = data[(data[0] & 0x0F) * 4 :] if skip_ip else data  # v6: no IP header
                flags = segment[13]
                if flags & 0x12 == 0x12:  # SYN and ACK
                    self.ports.add(struct.unpack("!H", segment[2:4])[0])
            sock.close()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_no_crafted_segment_is_answered_or_lets_a_connection_through(net, services, table, v6):
    # 256 flag combinations x 6 option sets, each from its own port: none with
    # SYN set draws a SYN-ACK (so none reached the service: SYN|ECE|CWR, what an
    # ECN client sends, included), and an ordinary connect() from each port after
    # gets nothing either. None marks its source as one that connected with a knock.
    src, dst = addresses(net, v6)
    segments = crafted_segments(src, dst, 22, 20000)
    with SynAcks(net.client) as answered:
        send_raw(net.client, segments)
    assert answered.ports == set()
    assert connects_from(net.client, src, dst, 22, [s[TCP].sport for s in segments]) == set()
    assert knockers(net.server) == []


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_an_ecn_client_stays_out_without_a_knock_and_gets_in_with_one(net, services, table, v6):
    # With net.ipv4.tcp_ecn=1 (it applies to IPv6 too) a client's SYN carries ECE
    # and CWR: the gate judges it as any SYN.
    src, dst = addresses(net, v6)
    net.client.run(["sysctl", "-q", "-w", "net.ipv4.tcp_ecn=1"])
    helper = Helper(net.server)
    try:
        with SynAcks(net.client) as answered:
            assert connects_from(net.client, src, dst, 22, [20100]) == set()
        assert answered.ports == set()
        assert helper.send(request(src, 22)) == [OK]
        assert connects_from(net.client, src, dst, 22, [20101]) == {20101}
    finally:
        helper.close()
        net.client.run(["sysctl", "-q", "-w", "net.ipv4.tcp_ecn=2"])


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_control_an_md5_signed_ack_opens_the_control_table(net, services, control, v6):
    src, dst = addresses(net, v6)
    send_raw(
        net.client,
        [
            ip_layer(src, dst)
            / TCP(sport=31000, dport=22, flags="A", seq=1000, ack=5000, options=OPTIONS["md5"])
        ],
    )
    assert connects_from(net.client, src, dst, 22, [31000, 31001]) == {31000}


def syn(src, dst, sport, **kw):
    return TCP(sport=sport, dport=22, flags="S", seq=1000, **kw)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_fragments_and_extension_headers_do_not_hide_a_syn(net, services, table, v6):
    src, dst = addresses(net, v6)
    padding = b"x" * 64
    if v6:
        base = IPv6(src=src, dst=dst)
        packets = [
            base / IPv6ExtHdrHopByHop() / syn(src, dst, 32000),
            base / IPv6ExtHdrDestOpt() / syn(src, dst, 32001),
            base / IPv6ExtHdrRouting(segleft=0) / syn(src, dst, 32002),
            base / IPv6ExtHdrFragment(id=7) / syn(src, dst, 32003),  # an atomic fragment
            base
            / IPv6ExtHdrHopByHop()
            / IPv6ExtHdrDestOpt()
            / IPv6ExtHdrFragment(id=8)
            / syn(src, dst, 32004),
            # The TCP flags only in the second fragment.
            *fragment6(base / IPv6ExtHdrFragment(id=9) / syn(src, dst, 32005) / padding, 56),
        ]
    else:
        packets = [
            *fragment(IP(src=src, dst=dst) / syn(src, dst, 32005) / padding, fragsize=8),
            IP(src=src, dst=dst, flags="DF") / syn(src, dst, 32006),
            IP(src=src, dst=dst, options=b"\x01\x01\x01\x00") / syn(src, dst, 32007),  # IP options
        ]
    sports = sorted({p[TCP].sport for p in packets if TCP in p} | {32005})  # fragments: raw
    send_raw(net.client, packets)
    assert connects_from(net.client, src, dst, 22, sports) == set()


class TcpService:
    """A listener in host, each connection handed to handle() on a thread of its own."""

    def __init__(self, host, address, handle):
        with inside(host):
            self.listener = socket.create_server(
                address, family=socket.AF_INET6, dualstack_ipv6=True
            )
        self.listener.settimeout(0.2)
        self.handle, self.accepted, self.stop = handle, 0, threading.Event()
        threading.Thread(target=self.serve, daemon=True).start()

    def serve(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.listener.accept()
            except (TimeoutError, OSError):
                continue
            self.accepted += 1
            self.handle(conn)

    def close(self):
        self.stop.set()
        time.sleep(0.3)
        self.listener.close()


def ftp_server(host) -> TcpService:
    """Port 21 in the server: greets every connection with a PASV answer that
    names the protected port 22, which conntrack's ftp helper (assigned by
    the admin's own table) turns into an expectation: ct state related."""
    a, b, c, d = (int(x) for x in host.ip.split("."))
    line = f"227 Entering Passive Mode ({a},{b},{c},{d},0,22)\r\n".encode()

    def greet(conn):
        with conn:
            # The helper reads only lines that follow a newline it saw:
            # a greeting first, then the PASV answer in its own segment.
            conn.sendall(b"220 ready\r\n")
            time.sleep(0.1)
            conn.sendall(line)
            time.sleep(0.5)

    return TcpService(host, ("::", 21), greet)


FTP_HELPER = """
table inet admin {
    ct helper ftp-standard { type "ftp" protocol tcp; }
    chain pre { type filter hook prerouting priority filter; policy accept;
                tcp dport 21 ct helper set "ftp-standard"; }
}
"""


@pytest.mark.parametrize("table_kind", ["current", "control"])
def test_a_conntrack_helper_expectation_does_not_open_a_protected_port(
    net, services, tmp_path, table_kind
):
    srv = net.server
    if table_kind == "current":
        load_table(srv, tmp_path, tcp_ports=(22, ABORT_PORT))
    else:
        load_text(srv, CONTROL)
    load_text(srv, FTP_HELPER)
    ftp = ftp_server(srv)
    try:
        control = tcp_connect(net.client, srv.ip, 21)
        assert control is not None and control.recv(100).startswith(b"220")
        assert control.recv(100).startswith(b"227")
        time.sleep(0.1)
        got = connects_from(net.client, net.client.ip, srv.ip, 22, [33000])
        control.close()
    finally:
        ftp.close()
        srv.nft("delete", "table", "inet", "admin")
        srv.nft("delete", "table", "inet", "gnocchi")
    assert got == (set() if table_kind == "current" else {33000})


def aborting_service(host, how: str) -> TcpService:
    """TCP ABORT_PORT in the server: accepts, then ends each connection with
    a RST (abort) or a FIN (close); .accepted counts the connections."""

    def end(conn):
        if how == "rst":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()

    return TcpService(host, ("::", ABORT_PORT), end)


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
@pytest.mark.parametrize("how", ["rst", "fin"])
def test_a_server_that_ends_the_connection_gives_no_second_one(net, table, how, v6):
    src, dst = addresses(net, v6)
    port = 34000 + 10 * (2 * v6 + (how == "fin"))  # each case its own ports
    service = aborting_service(net.server, how)
    helper = Helper(net.server)
    try:
        assert helper.send(request(src, ABORT_PORT)) == [OK]
        assert connect_until_reset(net.client, src, dst, ABORT_PORT, port)
        # Again from the very same address and port, and from others: nothing.
        assert not connect_until_reset(net.client, src, dst, ABORT_PORT, port)
        assert connects_from(net.client, src, dst, ABORT_PORT, [port, port + 1]) == set()
        # A new knock: the old flow's port reused at once (conntrack may still hold
        # that flow, admitted and assured), then another port: one connection.
        assert helper.send(request(src, ABORT_PORT)) == [OK]
        reused = connect_until_reset(net.client, src, dst, ABORT_PORT, port)
        other = connects_from(net.client, src, dst, ABORT_PORT, [port + 2])
        assert reused + len(other) == 1
        for _ in range(20):  # the service's thread accepts it a little later
            if service.accepted == 2:
                break
            time.sleep(0.1)
        assert service.accepted == 2
    finally:
        helper.close()
        service.close()


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_control_a_server_rst_gives_a_second_connection_with_the_control_table(net, control, v6):
    src, dst = addresses(net, v6)
    service = aborting_service(net.server, "rst")
    helper = Helper(net.server)
    try:
        assert helper.send(request(src, ABORT_PORT)) == [OK]
        assert connect_until_reset(net.client, src, dst, ABORT_PORT, 34100)
        assert connect_until_reset(net.client, src, dst, ABORT_PORT, 34100)
        assert connect_until_reset(net.client, src, dst, ABORT_PORT, 34100)
        assert service.accepted == 3
    finally:
        helper.close()
        service.close()


def test_a_client_that_aborts_gets_no_second_connection(net, services, table):
    helper = Helper(net.server)
    try:
        assert helper.send(request(net.client.ip, 22)) == [OK]
        with inside(net.client):
            s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((net.client.ip, 35000))
        s.settimeout(1)
        s.connect((net.server.ip, 22))
        assert echoes(s)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        s.close()  # RST from the client
        time.sleep(0.2)
        assert connects_from(net.client, net.client.ip, net.server.ip, 22, [35000]) == set()
    finally:
        helper.close()


def test_a_knocked_clients_retransmitted_syn_still_connects(net, table):
    # The service's accept queue is full, so the kernel drops the knocked
    # client's first SYN after the gate let it in (no SYN-ACK, even with
    # syncookies). Once there is room, the client's retransmitted SYN gets in:
    # the knock waits for a handshake that completes, and is spent by it.
    helper = Helper(net.server)
    with inside(net.server):
        listener = socket.create_server((net.server.ip, ABORT_PORT), backlog=0)
    try:
        assert helper.send(request(net.client.ip, ABORT_PORT)) == [OK]
        assert connects_from(
            net.client, net.client.ip, net.server.ip, ABORT_PORT, [36000], wait=0.5
        ) == {36000}  # fills the queue
        assert helper.send(request(net.client.ip, ABORT_PORT)) == [OK]
        with inside(net.client):
            late = socket.socket()
        late.bind((net.client.ip, 36001))
        late.setblocking(False)
        assert late.connect_ex((net.server.ip, ABORT_PORT)) == errno.EINPROGRESS
        time.sleep(0.5)  # the first SYN: dropped
        assert len(elements(net.server, "knocked4")) == 1  # and the knock still waits
        listener.accept()[0].close()  # room for one more
        late.settimeout(3)
        late.setblocking(True)
        assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        late.send(b"x")  # connected by the retransmission
        late.close()
        assert elements(net.server, "knocked4") == []  # which spent the knock
    finally:
        listener.close()
        helper.close()


def udp_datagrams(src, dst, sport, payload=b"hello"):
    if ":" in dst:
        base = IPv6(src=src, dst=dst)
        return [
            base / UDP(sport=sport, dport=60001) / payload,
            base / IPv6ExtHdrDestOpt() / UDP(sport=sport + 1, dport=60001) / payload,
            *fragment6(
                base
                / IPv6ExtHdrFragment(id=11)
                / UDP(sport=sport + 2, dport=60001)
                / (payload * 20),
                56,
            ),
        ]
    base = IP(src=src, dst=dst)
    return [
        base / UDP(sport=sport, dport=60001) / payload,
        base / UDP(sport=sport + 1, dport=60001, chksum=0) / payload,
        *fragment(base / UDP(sport=sport + 2, dport=60001) / (payload * 20), fragsize=8),
    ]


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_crafted_udp_opens_no_protected_udp_port(net, services, table, v6):
    src, dst = addresses(net, v6)
    send_raw(net.client, udp_datagrams(src, dst, 37000))
    for sport in (37000, 37001, 37002):  # then ordinary datagrams from the same ports
        with inside(net.client):
            s = socket.socket(socket.AF_INET6 if v6 else socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, sport))
        s.connect((dst, 60001))
        assert not echoes(s), f"a datagram from port {sport} got through"
        s.close()


TRACKING = """
table inet admin {
    chain input { type filter hook input priority filter; policy accept; ct state invalid drop; }
}
"""


def test_a_udp_flow_open_before_arming_goes_on(net, services, tmp_path):
    # A flow conntrack already tracked (the admin's ruleset uses conntrack,
    # as most do) and the service answered.
    load_text(net.server, TRACKING)
    flow = udp_socket(net.client, net.server.ip, 60001)
    assert echoes(flow)
    load_table(net.server, tmp_path, tcp_ports=(22,), udp_ports=(60001,))
    try:
        assert echoes(flow, b"still here after arming")
        assert not echoes(udp_socket(net.client, net.server.ip, 60001))  # a new flow needs a knock
    finally:
        net.server.nft("delete", "table", "inet", "gnocchi")
        net.server.nft("delete", "table", "inet", "admin")


def test_one_knock_for_a_udp_port_admits_one_flow(net, services, table):
    helper = Helper(net.server)
    try:
        assert helper.send(request(net.client.ip, 60001, 17)) == [OK]
        first = udp_socket(net.client, net.server.ip, 60001)
        assert echoes(first) and echoes(first, b"again")
        assert not echoes(udp_socket(net.client, net.server.ip, 60001))
    finally:
        helper.close()


def test_a_syn_conntrack_cannot_track_spends_no_knock(net, services, table):
    # A SYN with a bad checksum is invalid to conntrack (and to TCP): the knock
    # must survive it, for the client's real SYN.
    helper = Helper(net.server)
    try:
        assert helper.send(request(net.client.ip, 22)) == [OK]
        send_raw(
            net.client,
            [
                IP(src=net.client.ip, dst=net.server.ip)
                / TCP(sport=38000, dport=22, flags="S", chksum=0x1234)
            ],
        )
        assert len(elements(net.server, "knocked4")) == 1
        assert connects_from(net.client, net.client.ip, net.server.ip, 22, [38001]) == {38001}
        assert connects_from(net.client, net.client.ip, net.server.ip, 22, [38002]) == set()
    finally:
        helper.close()


NOTRACK = """
table inet admin {
    chain raw { type filter hook prerouting priority raw; policy accept; tcp dport 22 notrack; }
}
"""


def test_a_port_conntrack_does_not_track_stays_closed(net, services, table):
    # gnocchi needs conntrack on its ports (docs/firewall.md): with a notrack
    # rule of the admin's, a knock opens nothing, and is not spent.
    load_text(net.server, NOTRACK)
    helper = Helper(net.server)
    try:
        assert helper.send(request(net.client.ip, 22)) == [OK]
        assert connects_from(net.client, net.client.ip, net.server.ip, 22, [38100]) == set()
        assert len(elements(net.server, "knocked4")) == 1
        net.server.nft("flush", "set", "inet", "gnocchi", "knocked4")
    finally:
        helper.close()
        net.server.nft("delete", "table", "inet", "admin")


def test_a_one_way_udp_flow_conntrack_tracked_before_arming_goes_on(net, services, tmp_path):
    load_text(net.server, TRACKING)
    with inside(net.server):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((net.server.ip, 60003))
    sink.settimeout(0.5)
    try:
        flow = udp_socket(net.client, net.server.ip, 60003)
        flow.send(b"before")
        assert sink.recv(100) == b"before"  # never answered: not "established"
        load_table(net.server, tmp_path, tcp_ports=(22,), udp_ports=(60003,))
        flow.send(b"after arming")
        assert sink.recv(100) == b"after arming"
        udp_socket(net.client, net.server.ip, 60003).send(b"stranger")  # a new flow
        with pytest.raises((TimeoutError, socket.timeout)):
            sink.recv(100)
    finally:
        sink.close()
        net.server.nft("delete", "table", "inet", "gnocchi")
        net.server.nft("delete", "table", "inet", "admin")


def test_a_connection_the_server_starts_from_a_protected_port_works(net, table):
    # The peer's SYN-ACK comes to the protected port: it answers the server.
    with inside(net.client):
        listener = socket.create_server((net.client.ip, 39000))
    listener.settimeout(2)
    with inside(net.server):
        out = socket.socket()
    try:
        out.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)  # earlier tests' TIME_WAIT
        out.bind((net.server.ip, ABORT_PORT))
        out.settimeout(2)
        out.connect((net.client.ip, 39000))
        listener.accept()[0].close()
    finally:
        out.close()
        listener.close()


# ---- a knock is spent by the handshake that completes, not by the first SYN ---------

NO_RST = """
table inet norst {
    chain out { type filter hook output priority 0; policy accept; tcp flags & rst == rst drop; }
}
"""


def handshakes(net, src: str, dst: str, port: int, sports, complete=True, options=()) -> dict:
    """Crafted SYNs (with TCP options) from each of sports, then (complete) the right
    ACK for each SYN-ACK: the handshakes a client makes when it sends its SYNs before
    any completes. The client's kernel must not reset them meanwhile (NO_RST).
    {sport: the server's sequence number} for the SYN-ACKs seen."""
    with inside(net.client):
        rx = socket.socket(
            socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_TCP
        )
    rx.settimeout(0.3)
    send_raw(
        net.client,
        [
            ip_layer(src, dst)
            / TCP(sport=p, dport=port, flags="S", seq=1000, options=list(options))
            for p in sports
        ],
    )
    seqs = {}
    try:
        while True:
            data = rx.recv(4096)
            segment = data if ":" in dst else data[(data[0] & 0x0F) * 4 :]
            sport, dport, seq = struct.unpack("!HHI", segment[:8])
            if sport == port and dport in sports and segment[13] & 0x12 == 0x12:
                seqs[dport] = seq
    except TimeoutError:
        pass
    finally:
        rx.close()
    if complete:
        send_raw(
            net.client,
            [
                ip_layer(src, dst) / TCP(sport=p, dport=port, flags="A", seq=1001, ack=seq + 1)
                for p, seq in seqs.items()
            ],
        )
    return seqs


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_client_sending_many_syns_before_any_handshake_completes_gets_one_connection(
    net, table, v6
):
    # A client that holds a key (a stolen one, say): 20 SYNs from 20 ports, all
    # in before any handshake completes, then every handshake completed.
    src, dst = addresses(net, v6)
    load_text(net.client, NO_RST)
    service = TcpService(net.server, ("::", ABORT_PORT), lambda conn: conn.close())
    helper = Helper(net.server)
    try:
        assert helper.send(request(src, ABORT_PORT)) == [OK]
        sports = list(range(39100 + 100 * v6, 39120 + 100 * v6))
        assert len(handshakes(net, src, dst, ABORT_PORT, sports)) == 20  # all SYNs let in
        time.sleep(0.5)
        assert service.accepted == 1
        assert elements(net.server, "knocked6" if v6 else "knocked4") == []
    finally:
        helper.close()
        service.close()
        net.client.nft("delete", "table", "inet", "norst")


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_final_ack_conntrack_calls_invalid_completes_no_handshake(net, table, v6):
    # A client that holds a key (a stolen one, say) completes each of 5 handshakes
    # with the right ACK, carrying a SACK block beyond anything the server sent.
    # The server's TCP ignores the block and takes the ACK; conntrack calls the
    # segment invalid ("ACK is over the upper bound") and leaves it without a flow,
    # so it is not seen as the knocked flow's (label 121). Such a segment must be
    # dropped, not let through as a stray one: it would connect without spending
    # the knock, once per handshake.
    src, dst = addresses(net, v6)
    load_text(net.client, NO_RST)
    service = TcpService(net.server, ("::", ABORT_PORT), lambda conn: conn.close())
    helper = Helper(net.server)
    try:
        assert helper.send(request(src, ABORT_PORT)) == [OK]
        sports = list(range(39300 + 100 * v6, 39305 + 100 * v6))
        seqs = handshakes(
            net,
            src,
            dst,
            ABORT_PORT,
            sports,
            complete=False,
            options=[("MSS", 1400), ("SAckOK", b"")],
        )
        assert len(seqs) == 5  # the knock let every SYN in
        send_raw(
            net.client,
            [
                ip_layer(src, dst)
                / TCP(
                    sport=p,
                    dport=ABORT_PORT,
                    flags="A",
                    seq=1001,
                    ack=(seq + 1) % 2**32,
                    options=[("SAck", ((seq + 100001) % 2**32, (seq + 100101) % 2**32))],
                )
                for p, seq in seqs.items()
            ],
        )
        time.sleep(0.5)
        assert service.accepted == 0
        assert len(elements(net.server, "knocked6" if v6 else "knocked4")) == 1  # unspent
        # The knock still gives its one connection: the plain final ACK of a handshake.
        sport, seq = next(iter(seqs.items()))
        send_raw(
            net.client,
            [
                ip_layer(src, dst)
                / TCP(sport=sport, dport=ABORT_PORT, flags="A", seq=1001, ack=(seq + 1) % 2**32)
            ],
        )
        time.sleep(0.5)
        assert service.accepted == 1
        assert elements(net.server, "knocked6" if v6 else "knocked4") == []
    finally:
        helper.close()
        service.close()
        net.client.nft("delete", "table", "inet", "norst")


@pytest.mark.xfail(
    strict=True,
    reason=(
        "SYN cookies: a knocked client fills the service's SYN queue with SYNs from its "
        "address (the gate lets them all in while the knock waits), so the service answers "
        "with cookies and keeps no half-open state; after its one connection it aborts it "
        "and sends its final ACK again: the flow's conntrack entry (closed, label 120) lets "
        "it through, and the kernel makes a new connection from the cookie, for as long as "
        "the cookie is valid (about two minutes). docs/firewall.md, 'SYN cookies', says "
        "so. A fix the lead may choose: bound the SYNs a knocked element lets in below any "
        "listen backlog (a per-element limit in tcp_syn), or judge non-SYN segments of "
        "closed or unknown flows (needs a way to tell conntrack's TCP state, or nft's "
        "socket expression, which nftables 1.0.6 offers only in part)"
    ),
)
def test_a_knocked_client_that_pushes_the_service_into_syn_cookies_gets_one_connection(net, table):
    load_text(net.client, NO_RST)
    with inside(net.server):
        listener = socket.create_server((net.server.ip, ABORT_PORT), backlog=1)
    listener.settimeout(0.2)
    accepted, stop = [], threading.Event()

    def abort_each():
        while not stop.is_set():
            with contextlib.suppress(TimeoutError, OSError):
                conn, _ = listener.accept()
                accepted.append(conn.getpeername())
                conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                conn.close()

    threading.Thread(target=abort_each, daemon=True).start()
    helper = Helper(net.server)
    src, dst = net.client.ip, net.server.ip
    try:
        assert helper.send(request(src, ABORT_PORT)) == [OK]
        seqs = handshakes(net, src, dst, ABORT_PORT, list(range(39500, 39540)), complete=False)
        assert len(seqs) == 40  # every SYN answered: most of them with a cookie
        sport, seq = max(seqs.items())
        final = ip_layer(src, dst) / TCP(
            sport=sport, dport=ABORT_PORT, flags="A", seq=1001, ack=(seq + 1) % 2**32
        )
        for _ in range(4):  # the handshake's ACK, then the same again after each abort
            send_raw(net.client, [final])
            time.sleep(0.3)
        assert elements(net.server, "knocked4") == []
        assert len(accepted) == 1, f"{len(accepted)} connections from one knock"
    finally:
        stop.set()
        helper.close()
        listener.close()
        net.client.nft("delete", "table", "inet", "norst")


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_a_forger_who_cannot_see_the_servers_answers_does_not_spend_a_knock(
    net, services, gate, v6
):
    # The forger knows alice's address, not her packets: SYNs from her address,
    # from many ports and with every option set; then on each flow an ACK of a
    # guessed sequence number (one in 65,536 lands in conntrack's window), a
    # FIN and a RST. Alice's own connect then still gets in, once.
    src, dst = addresses(net, v6)
    load_text(net.client, NO_RST)  # the forger's half-open flows stay open on the server
    helper = Helper(net.server)
    try:
        assert helper.send(request(src, 22)) == [OK]
        sports = list(range(40000, 40060))
        seqs = handshakes(net, src, dst, 22, sports, complete=False)

        def forged(flags):
            return [
                ip_layer(src, dst)
                / TCP(
                    sport=p,
                    dport=22,
                    flags=flags,
                    seq=1001,
                    ack=(seqs.get(p, 0) + 70000 + 7919 * p) % 2**32,
                )
                for p in sports
            ]

        syns = [
            ip_layer(src, dst)
            / TCP(sport=40100 + i, dport=22, flags="S", seq=1000, options=options)
            for i, options in enumerate(OPTIONS.values())
        ]
        send_raw(net.client, forged("A") + forged("PA") + forged("FA") + syns)
        net.client.nft("delete", "table", "inet", "norst")  # which dropped RSTs, ours too
        send_raw(net.client, forged("R"))
        got = connects_from(net.client, src, dst, 22, [40200])
        again = connects_from(net.client, src, dst, 22, [40201])
    finally:
        helper.close()
        if "norst" in net.client.nft("list", "tables").stdout:
            net.client.nft("delete", "table", "inet", "norst")
    if gate == "current":
        assert len(seqs) == len(sports)  # the forged SYNs passed, and were answered
        assert (got, again) == ({40200}, set())  # alice's knock: one connection, hers
    else:
        assert got == set()  # the control: the first forged SYN spent it


def test_a_parked_syn_does_not_connect_after_the_window(net, services, gate):
    # A SYN that the server's stack drops silently (a TCP-MD5 option, no key)
    # leaves a flow the gate let in and nobody answered. Once the knock's window
    # is over, a SYN on that very flow gets nothing (the control let it in, the
    # flow being labelled as admitted and never answered).
    helper = Helper(net.server, open_seconds=1)
    src, dst = net.client.ip, net.server.ip
    try:
        assert helper.send(request(src, 22)) == [OK]
        send_raw(
            net.client,
            [
                IP(src=src, dst=dst)
                / TCP(sport=40300, dport=22, flags="S", seq=1000, options=OPTIONS["md5"])
            ],
        )
        time.sleep(1.5)  # the window is over
        got = connects_from(net.client, src, dst, 22, [40300])
    finally:
        helper.close()
    assert got == (set() if gate == "current" else {40300})

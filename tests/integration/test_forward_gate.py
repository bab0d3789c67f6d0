"""The gate on the forward path, on the real kernel: ports that the server
publishes for hosts behind it, opened by a knock like its own.

    client ns 198.18.n.1 (and .3, a stranger)        server ns .2: table inet gnocchi,
      raw sockets (scapy)                              loaded from a config by gnocchi's
                                                       loader ([protect], [forwards])
       tcp 8080, 8053/udp -> container:22, :60001      Docker's rules (iptables-nft)
       tcp 8090           -> container:22              a table shaped like Podman's (netavark)
       tcp 8081           -> container:22              Docker, not protected
       tcp 2200, 2201     -> vm:22                     the admin's own nft DNAT (2201
                                                       not protected)
       tcp 2222, 2223, 2253/udp -> vm:22, :23, :60001  gnocchi's [forwards]
    container 198.19.n.2 (behind bridge br0), vm 198.19.n.130 (behind a veth):
      a service on tcp 22 and udp 60001 that names its host, then echoes

Each path is judged by the port the client sent its packets to (ct original):
closed before a knock, open once after, closed again, never to a stranger; and
the crafted packets of tests/integration/test_gate_attacks.py, sent to a
forwarded port, get nothing either.
"""

import errno
import json
import re
import select
import socket
import struct
import subprocess
import threading
import time

import pytest
from scapy.layers.inet import IP, TCP, UDP, fragment
from scapy.layers.inet6 import IPv6, IPv6ExtHdrDestOpt, IPv6ExtHdrFragment, fragment6
from test_gate_attacks import (
    NO_RST,
    OPTIONS,
    SynAcks,
    TcpService,
    connect_until_reset,
    connects_from,
    crafted_segments,
    ftp_server,
    handshakes,
    ip_layer,
    load_text,
    send_raw,
)
from test_gate_tampering import Watch

from gnocchi.admin import nft_table
from support import (
    PYTHON,
    REPO,
    STATUS,
    TABLE_FILE,
    Helper,
    Keys,
    elements,
    inside,
    request,
    write_config,
)
from support.forward import (
    ABORT,
    DOCKER_OPEN,
    DOCKER_TCP,
    DOCKER_UDP,
    FORWARD_ABORT,
    FORWARD_TCP,
    FORWARD_UDP,
    PODMAN_TCP,
    VM_OPEN,
    VM_TCP,
    Banner,
    Lab,
    answered,
    docker_rules,
    podman_table,
    reached,
)

OK = STATUS["OK"]

# name: (the port the client connects to, the host it reaches, the family)
PATHS = {
    "docker": (DOCKER_TCP, "container", 4),
    "podman": (PODMAN_TCP, "container", 4),
    "vm-port-forward": (VM_TCP, "vm", 4),
    "vm-port-forward-ipv6": (VM_TCP, "vm", 6),
    "gnocchi-forward": (FORWARD_TCP, "vm", 4),
    "gnocchi-forward-ipv6": (FORWARD_TCP, "vm", 6),
}


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("forward")
    with Lab("fw") as lab:
        lab.publish()
        lab.config = write_config(d, Keys(d), "/nonexistent", extra=lab.forwards())
        with inside(lab.server):
            nft_table.load_wanted(nft_table.wanted(str(lab.config), str(TABLE_FILE)))
        with Banner(lab.container) as container, Banner(lab.vm) as vm:
            lab.banners = {"container": container, "vm": vm}
            lab.helper = Helper(lab.server)
            try:
                yield lab
            finally:
                lab.helper.close()


@pytest.fixture(autouse=True)
def no_pending_knocks(lab):
    for name in ("knocked4", "knocked6"):
        lab.server.nft("flush", "set", "inet", "gnocchi", name)


def ends(lab, v: int) -> tuple[str, str, str]:
    """(the client's address, a stranger's, the server's) in family v."""
    i = 0 if v == 4 else 1
    return (lab.client.ip, lab.client.ip6)[i], lab.stranger[i], (lab.server.ip, lab.server.ip6)[i]


def connect(lab, src: str, dst: str, port: int) -> socket.socket | None:
    """A TCP connection from src (an address of the client's host), or None."""
    with inside(lab.client):
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    s.bind((src, 0))
    s.settimeout(0.5)
    try:
        s.connect((dst, port))
        return s
    except OSError:
        s.close()
        return None


def udp_from(lab, src: str, dst: str, port: int) -> socket.socket:
    with inside(lab.client):
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((src, 0))
    s.connect((dst, port))
    return s


def knocked(lab, v: int) -> list:
    return elements(lab.server, f"knocked{v}")


@pytest.mark.parametrize("path", PATHS)
def test_a_forwarded_port_is_closed_before_a_knock_open_once_after_and_closed_again(lab, path):
    port, behind, v = PATHS[path]
    name = getattr(lab, behind).name
    client, stranger, server = ends(lab, v)
    assert not reached(name, connect(lab, client, server, port))
    assert not reached(name, connect(lab, stranger, server, port))
    assert lab.helper.send(request(client, port)) == [OK]
    assert not reached(name, connect(lab, stranger, server, port))
    first = connect(lab, client, server, port)
    assert reached(name, first), "the knocked client did not reach the host behind"
    assert knocked(lab, v) == [], "the handshake did not spend the knock"
    assert not reached(name, connect(lab, client, server, port)), "a second connection"
    first.sendall(b"still")
    assert first.recv(5) == b"still", "the admitted connection does not go on"
    first.close()


@pytest.mark.parametrize(
    "port, behind",
    [(DOCKER_UDP, "container"), (FORWARD_UDP, "vm")],
    ids=["docker", "gnocchi-forward"],
)
def test_one_knock_for_a_forwarded_udp_port_admits_one_flow(lab, port, behind):
    name = getattr(lab, behind).name
    client, stranger, server = ends(lab, 4)
    assert not answered(name, udp_from(lab, client, server, port))
    assert lab.helper.send(request(client, port, 17)) == [OK]
    assert not answered(name, udp_from(lab, stranger, server, port))
    flow = udp_from(lab, client, server, port)
    assert answered(name, flow) and answered(name, flow), "one flow, both ways, for as long"
    assert not answered(name, udp_from(lab, client, server, port)), "a second flow"


def test_a_published_port_that_is_not_protected_stays_open_to_everyone(lab):
    # Docker publishes 8081 too; gnocchi protects only what the config names.
    _, stranger, server = ends(lab, 4)
    assert reached(lab.container.name, connect(lab, stranger, server, DOCKER_OPEN))


def test_an_unused_knock_for_a_forward_closes_by_itself(lab):
    helper = Helper(lab.server, open_seconds=1)
    client, _, server = ends(lab, 4)
    try:
        assert helper.send(request(client, FORWARD_TCP)) == [OK]
        assert reached(lab.vm.name, connect(lab, client, server, FORWARD_TCP))  # the control
        assert helper.send(request(client, FORWARD_TCP)) == [OK]
        time.sleep(1.5)
        assert knocked(lab, 4) == []
        assert not reached(lab.vm.name, connect(lab, client, server, FORWARD_TCP))
    finally:
        helper.close()


def test_a_knock_for_a_port_that_is_not_a_forward_translates_nothing(lab):
    # The server's own protected port (22, nothing listens): chain reach finds no
    # target for it, so the knocked SYN stays on this host and gets its RST.
    client, _, server = ends(lab, 4)
    assert lab.helper.send(request(client, 22)) == [OK]
    with inside(lab.client):
        s = socket.socket()
    s.settimeout(0.5)
    assert s.connect_ex((server, 22)) == errno.ECONNREFUSED
    s.close()


# ---- the crafted packets of test_gate_attacks.py, to a forwarded port ---------------------


@pytest.mark.parametrize("path", ["docker", "vm-port-forward-ipv6"])
def test_no_crafted_segment_to_a_forwarded_port_is_answered_or_lets_a_connection_through(lab, path):
    # 256 flag combinations x 6 option sets from a stranger, each from its own port:
    # none with SYN set is answered, and an ordinary connect() from each port after
    # gets nothing. The control, the same SYN to a port the same DNAT publishes
    # unprotected, is answered: the crafted packets do cross the DNAT. (A stranger's
    # packets to gnocchi's own forwards are never translated: they meet the input gate,
    # tests/integration/test_gate_attacks.py.)
    port, _, v = PATHS[path]
    _, stranger, server = ends(lab, v)
    segments = crafted_segments(stranger, server, port, 20000)
    control = ip_layer(stranger, server) / TCP(sport=19999, dport=VM_OPEN, flags="S")
    with SynAcks(lab.client) as answered_ports:
        send_raw(lab.client, segments + [control])
    assert answered_ports.ports == {19999}  # the client ports that got a SYN-ACK
    assert (
        connects_from(lab.client, stranger, server, port, [s[TCP].sport for s in segments]) == set()
    )


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_fragments_and_extension_headers_do_not_hide_a_forwarded_syn(lab, v6):
    _, src, dst = ends(lab, 6 if v6 else 4)
    padding = b"x" * 64

    def syn(sport):
        return TCP(sport=sport, dport=VM_TCP, flags="S", seq=1000)

    if v6:
        base = IPv6(src=src, dst=dst)
        packets = [
            base / IPv6ExtHdrDestOpt() / syn(32001),
            base / IPv6ExtHdrFragment(id=7) / syn(32003),
            *fragment6(base / IPv6ExtHdrFragment(id=9) / syn(32005) / padding, 56),
        ]
    else:
        packets = [
            *fragment(IP(src=src, dst=dst) / syn(32005) / padding, fragsize=8),
            IP(src=src, dst=dst, options=b"\x01\x01\x01\x00") / syn(32007),
        ]
    sports = sorted({p[TCP].sport for p in packets if TCP in p} | {32005})
    with SynAcks(lab.client) as answered_ports:
        send_raw(lab.client, packets)
    assert answered_ports.ports == set()
    assert connects_from(lab.client, src, dst, VM_TCP, sports) == set()


@pytest.mark.parametrize("path", ["docker", "gnocchi-forward-ipv6"])
def test_a_forger_who_cannot_see_the_answers_does_not_spend_a_forwarded_knock(lab, path):
    # SYNs from the client's own address and many ports, then on each flow an ACK of
    # a guessed sequence number, a FIN and a RST: the client's own connect still gets
    # in, once.
    port, _, v = PATHS[path]
    src, _, dst = ends(lab, v)
    load_text(lab.client, NO_RST)
    try:
        assert lab.helper.send(request(src, port)) == [OK]
        sports = list(range(40000, 40040))
        seqs = handshakes(lab, src, dst, port, sports, complete=False)

        def forged(flags):
            return [
                ip_layer(src, dst)
                / TCP(
                    sport=p,
                    dport=port,
                    flags=flags,
                    seq=1001,
                    ack=(seqs.get(p, 0) + 70000 + 7919 * p) % 2**32,
                )
                for p in sports
            ]

        syns = [
            ip_layer(src, dst)
            / TCP(sport=40100 + i, dport=port, flags="S", seq=1000, options=options)
            for i, options in enumerate(OPTIONS.values())
        ]
        send_raw(lab.client, forged("A") + forged("PA") + forged("FA") + syns)
        lab.client.nft("delete", "table", "inet", "norst")
        send_raw(lab.client, forged("R"))
        got = connects_from(lab.client, src, dst, port, [40200])
        again = connects_from(lab.client, src, dst, port, [40201])
    finally:
        if "norst" in lab.client.nft("list", "tables").stdout:
            lab.client.nft("delete", "table", "inet", "norst")
    assert len(seqs) == len(sports), "the forged SYNs passed the gate and were answered"
    assert (got, again) == ({40200}, set())


def test_many_syns_before_any_handshake_give_one_forwarded_connection(lab):
    src, _, dst = ends(lab, 4)
    load_text(lab.client, NO_RST)
    service = TcpService(lab.vm, ("::", ABORT), lambda conn: conn.close())
    try:
        assert lab.helper.send(request(src, FORWARD_ABORT)) == [OK]
        sports = list(range(39100, 39120))
        assert len(handshakes(lab, src, dst, FORWARD_ABORT, sports)) == 20
        time.sleep(0.5)
        assert service.accepted == 1
        assert knocked(lab, 4) == []
    finally:
        service.close()
        lab.client.nft("delete", "table", "inet", "norst")


@pytest.mark.parametrize("how", ["rst", "fin"])
def test_a_host_behind_that_ends_the_connection_gives_no_second_one(lab, how):
    src, _, dst = ends(lab, 4)
    port = 34000 + 10 * (how == "fin")

    def end(conn):
        if how == "rst":
            conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\1\0\0\0\0\0\0\0")
        conn.close()

    service = TcpService(lab.vm, ("::", ABORT), end)
    try:
        assert lab.helper.send(request(src, FORWARD_ABORT)) == [OK]
        assert connect_until_reset(lab.client, src, dst, FORWARD_ABORT, port)
        assert not connect_until_reset(lab.client, src, dst, FORWARD_ABORT, port)
        assert connects_from(lab.client, src, dst, FORWARD_ABORT, [port + 1]) == set()
        assert lab.helper.send(request(src, FORWARD_ABORT)) == [OK]
        reused = connect_until_reset(lab.client, src, dst, FORWARD_ABORT, port)
        other = connects_from(lab.client, src, dst, FORWARD_ABORT, [port + 2])
        assert reused + len(other) == 1
        for _ in range(20):
            if service.accepted == 2:
                break
            time.sleep(0.1)
        assert service.accepted == 2
    finally:
        service.close()


def test_a_parked_syn_does_not_reach_the_host_behind_after_the_window(lab):
    # A SYN the host behind drops silently (TCP-MD5, no key) leaves a translated flow
    # that nobody answered; after the window, a SYN on that very flow gets nothing.
    helper = Helper(lab.server, open_seconds=1)
    src, _, dst = ends(lab, 4)
    try:
        assert helper.send(request(src, FORWARD_TCP)) == [OK]
        send_raw(
            lab.client,
            [
                IP(src=src, dst=dst)
                / TCP(sport=40300, dport=FORWARD_TCP, flags="S", seq=1000, options=OPTIONS["md5"])
            ],
        )
        time.sleep(1.5)
        assert connects_from(lab.client, src, dst, FORWARD_TCP, [40300]) == set()
    finally:
        helper.close()


@pytest.mark.parametrize("port", [DOCKER_UDP, FORWARD_UDP], ids=["docker", "gnocchi-forward"])
def test_crafted_udp_opens_no_forwarded_udp_port(lab, port):
    _, src, dst = ends(lab, 4)
    base = IP(src=src, dst=dst)
    send_raw(
        lab.client,
        [
            base / UDP(sport=37000, dport=port) / b"hello",
            base / UDP(sport=37001, dport=port, chksum=0) / b"hello",
            *fragment(base / UDP(sport=37002, dport=port) / (b"hello" * 20), fragsize=8),
        ],
    )
    for sport in (37000, 37001, 37002):
        with inside(lab.client):
            s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, sport))
        s.connect((dst, port))
        assert not answered(lab.container.name if port == DOCKER_UDP else lab.vm.name, s)
        s.close()


def test_an_ipv6_source_that_connects_through_a_forward_is_noted_as_a_knocker(lab):
    # The neighbour defence of the knock port's flood limit (knockers6) counts a /64
    # that connected with a knock through a forward, as through this host's own port.
    src, _, dst = ends(lab, 6)
    lab.server.nft("flush", "set", "inet", "gnocchi", "knockers6")
    assert lab.helper.send(request(src, FORWARD_TCP)) == [OK]
    assert reached(lab.vm.name, connect(lab, src, dst, FORWARD_TCP))
    assert [e["val"] if isinstance(e, dict) else e for e in elements(lab.server, "knockers6")] == [
        src.rsplit(":", 2)[0] + "::"
    ]


# ---- a knocked handshake's own packets, to a forwarded port ----------------------------------

# The paths the cases below run on: Docker's DNAT, the admin's port forward (both families),
# gnocchi's own forward.
HANDSHAKE_PATHS = ["docker", "vm-port-forward", "vm-port-forward-ipv6", "gnocchi-forward"]


def first_port(path: str, base: int) -> int:
    """Client ports of their own for each path: the hosts behind keep the half-open and
    aborted connections of one case while the next runs."""
    return base + 10 * HANDSHAKE_PATHS.index(path)


def accepted_behind(lab, behind: str) -> int:
    time.sleep(0.5)  # the Banner's thread accepts a little later
    return lab.banners[behind].accepted


@pytest.mark.parametrize("path", HANDSHAKE_PATHS)
def test_a_final_ack_conntrack_calls_invalid_completes_no_forwarded_handshake(lab, path):
    # A knocked client (a stolen key, say) completes each of 5 handshakes with the right
    # ACK, carrying a SACK block past anything the host behind sent. conntrack calls it
    # invalid and gives it no flow, so the kernel does not translate it: it stays on this
    # host, where nothing may take it (input: ct state invalid drop), and never reaches
    # the host behind. The knock still gives its one connection, to the plain final ACK.
    port, behind, v = PATHS[path]
    src, _, dst = ends(lab, v)
    before = lab.banners[behind].accepted
    load_text(lab.client, NO_RST)
    try:
        assert lab.helper.send(request(src, port)) == [OK]
        sports = list(range(first_port(path, 41000), first_port(path, 41005)))
        seqs = handshakes(
            lab, src, dst, port, sports, complete=False, options=[("MSS", 1400), ("SAckOK", b"")]
        )
        assert len(seqs) == 5  # the knock let every SYN in, and the host behind answered

        def final_ack(sport, seq, options=()):
            return ip_layer(src, dst) / TCP(
                sport=sport,
                dport=port,
                flags="A",
                seq=1001,
                ack=(seq + 1) % 2**32,
                options=list(options),
            )

        send_raw(
            lab.client,
            [
                final_ack(p, seq, [("SAck", ((seq + 100001) % 2**32, (seq + 100101) % 2**32))])
                for p, seq in seqs.items()
            ],
        )
        assert accepted_behind(lab, behind) == before
        assert len(knocked(lab, v)) == 1, "an invalid final ACK spent the knock"
        send_raw(lab.client, [final_ack(*next(iter(seqs.items())))])
        assert accepted_behind(lab, behind) == before + 1
        assert knocked(lab, v) == []
    finally:
        lab.client.nft("delete", "table", "inet", "norst")


@pytest.mark.parametrize("path", HANDSHAKE_PATHS)
def test_an_ecn_client_reaches_a_forwarded_port_with_a_knock_only(lab, path):
    # With net.ipv4.tcp_ecn=1 (for IPv6 too) the client's SYN carries ECE and CWR.
    port, behind, v = PATHS[path]
    name = getattr(lab, behind).name
    src, stranger, dst = ends(lab, v)
    lab.client.run(["sysctl", "-q", "-w", "net.ipv4.tcp_ecn=1"])
    try:
        with SynAcks(lab.client) as answered_ports:
            assert not reached(name, connect(lab, src, dst, port))
        assert answered_ports.ports == set()
        assert lab.helper.send(request(src, port)) == [OK]
        assert not reached(name, connect(lab, stranger, dst, port))
        first = connect(lab, src, dst, port)
        assert reached(name, first), "the knocked ECN client did not reach the host behind"
        first.close()
        assert knocked(lab, v) == []
        assert not reached(name, connect(lab, src, dst, port)), "a second connection"
    finally:
        lab.client.run(["sysctl", "-q", "-w", "net.ipv4.tcp_ecn=2"])


@pytest.mark.parametrize("path", HANDSHAKE_PATHS)
def test_a_forwarded_syn_conntrack_cannot_track_spends_no_knock(lab, path):
    # A SYN with a bad checksum is invalid to conntrack: it is neither translated nor
    # let in, and the knock waits for the client's real SYN.
    port, behind, v = PATHS[path]
    src, _, dst = ends(lab, v)
    sport = first_port(path, 42000)
    before = lab.banners[behind].accepted
    assert lab.helper.send(request(src, port)) == [OK]
    send_raw(
        lab.client, [ip_layer(src, dst) / TCP(sport=sport, dport=port, flags="S", chksum=0x1234)]
    )
    assert len(knocked(lab, v)) == 1, "a SYN conntrack cannot track spent the knock"
    assert connects_from(lab.client, src, dst, port, [sport + 1]) == {sport + 1}
    assert connects_from(lab.client, src, dst, port, [sport + 2]) == set()
    assert accepted_behind(lab, behind) == before + 1


@pytest.mark.parametrize("path", HANDSHAKE_PATHS)
def test_a_forwarded_port_conntrack_does_not_track_stays_closed(lab, path):
    # gnocchi needs conntrack (docs/firewall.md): with a notrack rule of the admin's for
    # the published port, nothing is translated either (NAT needs a flow), so the SYN
    # meets this host's own gate: nothing connects, the knock is not spent, and the host
    # behind accepted nothing.
    port, behind, v = PATHS[path]
    src, _, dst = ends(lab, v)
    sport = first_port(path, 42500)
    before = lab.banners[behind].accepted
    load_text(
        lab.server,
        "table inet admin { chain raw { type filter hook prerouting priority raw; "
        f"policy accept; tcp dport {port} notrack; }}\n}}\n",
    )
    try:
        assert lab.helper.send(request(src, port)) == [OK]
        assert connects_from(lab.client, src, dst, port, [sport]) == set()
        assert len(knocked(lab, v)) == 1
        assert accepted_behind(lab, behind) == before
    finally:
        lab.server.nft("delete", "table", "inet", "admin")


# The host behind drops the first SYN from each client port (its queue full, say).
FIRST_SYN_DROPPED = """
table inet firstsyn {
    set seen { type inet_service; flags dynamic; }
    chain input {
        type filter hook input priority filter; policy accept;
        tcp dport 22 tcp flags & (syn | ack) == syn tcp sport != @seen add @seen { tcp sport } drop
    }
}
"""


@pytest.mark.parametrize("path", HANDSHAKE_PATHS)
def test_a_knocked_clients_retransmitted_syn_reaches_the_host_behind(lab, path):
    # The gate lets the knocked client's first SYN in; the host behind drops it. The
    # knock waits for a handshake that completes, so the retransmitted SYN (a second
    # later, on the same flow) gets through, connects, and spends it.
    port, behind, v = PATHS[path]
    host = getattr(lab, behind)
    src, _, dst = ends(lab, v)
    load_text(host, FIRST_SYN_DROPPED)
    with inside(lab.client):
        late = socket.socket(socket.AF_INET6 if v == 6 else socket.AF_INET)
    try:
        assert lab.helper.send(request(src, port)) == [OK]
        late.bind((src, 0))
        late.setblocking(False)
        assert late.connect_ex((dst, port)) == errno.EINPROGRESS
        time.sleep(0.5)  # the first SYN: dropped behind
        assert len(knocked(lab, v)) == 1, "the SYN the host behind dropped spent the knock"
        assert select.select([], [late], [], 3)[1] == [late], "no retransmission connected"
        assert late.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0
        assert reached(host.name, late)
        assert knocked(lab, v) == []
    finally:
        late.close()
        host.nft("delete", "table", "inet", "firstsyn")


@pytest.mark.parametrize("path", HANDSHAKE_PATHS)
def test_a_client_that_aborts_gets_no_second_forwarded_connection(lab, path):
    # A RST from the client ends its flow; the same port again, or another, gets nothing.
    port, behind, v = PATHS[path]
    name = getattr(lab, behind).name
    src, _, dst = ends(lab, v)
    before = lab.banners[behind].accepted
    assert lab.helper.send(request(src, port)) == [OK]
    first = connect(lab, src, dst, port)
    assert reached(name, first)
    sport = first.getsockname()[1]
    first.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    first.close()  # RST from the client
    time.sleep(0.2)
    assert connects_from(lab.client, src, dst, port, [sport, first_port(path, 43000)]) == set()
    assert knocked(lab, v) == []
    assert accepted_behind(lab, behind) == before + 1


def ftp_published(lab) -> str:
    """The admin's own table for an FTP server in the container, published on port 21
    with conntrack's ftp helper (and so its NAT half, which rewrites the address in a
    PASV answer to the one the client connected to)."""
    return f"""
table inet admin {{
    ct helper ftp-standard {{ type "ftp" protocol tcp; }}
    chain nat {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport 21 dnat ip to {lab.container.ip}:21
    }}
    chain pre {{
        type filter hook prerouting priority filter; policy accept;
        tcp dport 21 ct helper set "ftp-standard"
    }}
}}
"""


@pytest.mark.parametrize("table_kind", ["current", "control"])
def test_a_conntrack_helper_expectation_does_not_open_a_forwarded_port(lab, table_kind):
    # The FTP server behind names port 22 of its own address in a PASV answer; the ftp
    # helper's NAT half rewrites it to this server's address and makes an expectation
    # for it, translated to the container. The connection the client then makes where
    # the answer says is "related", and DNATed: judged by the port it was sent to (22,
    # protected), it gets nothing. The control (chain forward flushed, loaded again
    # after) shows the expectation does lead to the container.
    client, _, server = ends(lab, 4)
    banner = lab.banners["container"]
    accept_ftp = ["DOCKER-USER", "-d", lab.container.ip, "-p", "tcp", "--dport", "21"]
    load_text(lab.server, ftp_published(lab))
    lab.server.run(["iptables", "-w", "-I", *accept_ftp, "-j", "ACCEPT"])
    ftp = ftp_server(lab.container)
    if table_kind == "control":
        lab.server.nft("flush", "chain", "inet", "gnocchi", "forward")
    try:
        control = connect(lab, client, server, 21)
        assert control is not None
        control.settimeout(1)
        assert control.recv(100).startswith(b"220")
        pasv = re.search(rb"\((\d+),(\d+),(\d+),(\d+),(\d+),(\d+)\)", control.recv(100))
        assert pasv is not None
        numbers = [int(n) for n in pasv.groups()]
        address, port = ".".join(map(str, numbers[:4])), numbers[4] * 256 + numbers[5]
        assert (address, port) == (server, 22), "the PASV answer was not rewritten"
        before = banner.accepted
        got = connects_from(lab.client, client, server, port, [33100 + (table_kind == "control")])
        after = accepted_behind(lab, "container")
        control.close()
    finally:
        ftp.close()
        lab.server.run(["iptables", "-w", "-D", *accept_ftp, "-j", "ACCEPT"])
        lab.server.nft("delete", "table", "inet", "admin")
        if table_kind == "control":
            with inside(lab.server):
                nft_table.load_wanted(nft_table.wanted(str(lab.config), str(TABLE_FILE)))
    if table_kind == "current":
        assert (got, after) == (set(), before)
    else:
        assert (len(got), after) == (1, before + 1)


# ---- Docker and Podman reload their rules; gnocchi's stay ----------------------------------


def gnocchi_table(lab) -> str:
    out = json.loads(lab.server.nft("-j", "list", "table", "inet", "gnocchi").stdout)
    return json.dumps(
        [
            o
            for o in out["nftables"]
            if o.get("set", {}).get("name") not in ("knocked4", "knocked6", "knockers6")
        ]
    )


def test_the_gate_holds_when_docker_and_podman_reload_their_rules(lab):
    before = gnocchi_table(lab)
    srv = lab.server
    # Docker's restart: its chains flushed and deleted, then made again.
    for table in ("nat", "filter"):
        srv.run(["iptables", "-w", "-t", table, "-F"])
        srv.run(["iptables", "-w", "-t", table, "-X"])
    for argv in docker_rules("br0", lab.container.ip):
        srv.run(argv)
    srv.run(["iptables", "-w", "-I", "DOCKER-USER", "-i", "veth-vm", "-j", "ACCEPT"])
    srv.run(["iptables", "-w", "-I", "DOCKER-USER", "-o", "veth-vm", "-j", "ACCEPT"])
    # Podman's: netavark deletes its table and makes it again.
    srv.nft("delete", "table", "inet", "netavark")
    srv.run(
        ["nft", "-f", "-"],
        input=podman_table("br0", f"{lab.container.ip.rsplit('.', 1)[0]}.0/25", lab.container.ip),
    )
    assert gnocchi_table(lab) == before
    client, stranger, server = ends(lab, 4)
    for port in (DOCKER_TCP, PODMAN_TCP):
        assert not reached(lab.container.name, connect(lab, stranger, server, port))
        assert lab.helper.send(request(client, port)) == [OK]
        assert reached(lab.container.name, connect(lab, client, server, port))
        assert not reached(lab.container.name, connect(lab, client, server, port))


# ---- after a re-arm, the strangers who came in through a forward are cut ---------------------


class ForwardWatch(Watch):
    """The checkout's gnocchi-watch in the server namespace, with the lab's config (its
    ports and forwards, which a re-arm fills in again)."""

    def __init__(self, lab):
        self.net = lab
        self.proc = lab.server.popen(
            [
                PYTHON,
                "-m",
                "gnocchi.admin",
                "table",
                "watch",
                "--config",
                str(lab.config),
                "--table",
                str(TABLE_FILE),
            ],
            cwd=REPO,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: list[str] = []
        threading.Thread(target=self._read, daemon=True).start()

    def ready(self, reference):
        for attempt in range(1, 6):
            self.net.server.nft("flush", "chain", "inet", "gnocchi", "forward")
            self.wait_for("was CHANGED", count=attempt)
            whole_again(self.net, reference)
            time.sleep(0.5)
            if "cannot be told" not in self.lines[-1]:
                return
        raise AssertionError("the watch never saw the gate whole:\n" + "\n".join(self.lines))


def whole_again(lab, reference, timeout=5.0):
    from gnocchi.admin import gate

    deadline = time.monotonic() + timeout
    while True:
        with inside(lab.server):
            live = nft_table.live()
        if (
            live is not None
            and not gate.differences(live.objects, reference.objects)
            and not gate.unguarded(live.objects)
            and live.forwards()
        ):
            return
        assert time.monotonic() < deadline, "the gate was not put back in time"
        time.sleep(0.01)


def alive(sock: socket.socket) -> bool:
    sock.settimeout(2)
    try:
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except OSError:
        return False


def test_a_stranger_who_came_in_while_the_forward_chain_was_flushed_is_cut(lab):
    reference = nft_table.test_load(str(TABLE_FILE))
    client, stranger, server = ends(lab, 4)
    watch = ForwardWatch(lab)
    try:
        watch.ready(reference)
        assert lab.helper.send(request(client, DOCKER_TCP)) == [OK]
        mine = connect(lab, client, server, DOCKER_TCP)
        assert reached(lab.container.name, mine)
        watch.freeze()
        lab.server.nft("flush", "chain", "inet", "gnocchi", "forward")
        strangers = [connect(lab, stranger, server, DOCKER_TCP) for _ in range(3)]
        assert all(reached(lab.container.name, s) for s in strangers), "nobody got in"
        watch.thaw()
        whole_again(lab, reference)
        entry = watch.wait_for(r"cut \d+ connections?")[-1]
        assert "tcp (translated)" in entry, entry
        time.sleep(0.3)
        assert [s for s in strangers if alive(s)] == [], "a stranger is still inside"
        assert alive(mine), "the knocked client's connection was cut"
    finally:
        watch.stop()


def test_status_names_the_forwards_the_live_table_holds(lab):
    from gnocchi.admin import status

    with inside(lab.server):
        _, lines = status.report(str(lab.config), str(TABLE_FILE))
    shown = [line for line in lines if line.startswith("forwards: ")]
    assert shown == [
        f"forwards: {FORWARD_TCP}/tcp to {lab.vm.ip}:22, {FORWARD_TCP}/tcp to "
        f"[{lab.vm.ip6}]:22, 2223/tcp to {lab.vm.ip}:23, 2223/tcp to "
        f"[{lab.vm.ip6}]:23, {FORWARD_UDP}/udp to {lab.vm.ip}:60001 (for a knocked "
        "source only)"
    ], lines

"""gnocchi.server.knock_socket: --listen, a datagram's real addresses, the
sources no knock is accepted from, and the batch reader on real sockets.
(The socket systemd passes is tested with systemd-socket-activate in
tests/verifier/.)"""

import ipaddress
import os
import select
import socket
import struct

import pytest
from nacl.public import PrivateKey, SealedBox
from nacl.secret import SecretBox

from gnocchi.server import knock_socket
from gnocchi.shared import protocol, seal

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def in_pktinfo(dest: str) -> tuple:
    return (
        socket.IPPROTO_IP,
        knock_socket.IP_PKTINFO,
        struct.pack("i4s4s", 2, bytes(4), V4(dest).packed),
    )


def in6_pktinfo(dest: str) -> tuple:
    return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, V6(dest).packed + struct.pack("I", 2))


@pytest.mark.parametrize(
    "sockaddr, ancdata, source, dest",
    [
        (("198.18.3.1", 4000), [in_pktinfo("198.18.3.2")], V4("198.18.3.1"), V4("198.18.3.2")),
        # an IPv4 datagram on a dual-stack socket: IP_PKTINFO says so, the source is unmapped
        (
            ("::ffff:198.18.3.1", 4000, 0, 0),
            [in_pktinfo("198.18.3.2")],
            V4("198.18.3.1"),
            V4("198.18.3.2"),
        ),
        # an IPv6 packet from a v4-mapped source: no IP_PKTINFO, so it stays IPv6
        (
            ("::ffff:198.18.3.1", 4000, 0, 0),
            [in6_pktinfo("fd00::2")],
            V6("::ffff:198.18.3.1"),
            V6("fd00::2"),
        ),
        (("fd00::1", 4000, 0, 0), [in6_pktinfo("fd00::2")], V6("fd00::1"), V6("fd00::2")),
        (("fd00::1", 4000, 0, 0), [], V6("fd00::1"), None),
        (
            ("198.18.3.1", 4000),
            [(socket.IPPROTO_IP, knock_socket.IP_PKTINFO, b"short")],
            V4("198.18.3.1"),
            None,
        ),
    ],
)
def test_addresses_are_as_the_datagram_arrived(sockaddr, ancdata, source, dest):
    assert knock_socket.addresses(sockaddr, ancdata) == (source, dest)


def test_a_dual_stack_socket_reports_an_ipv4_datagram_as_ipv4():
    with (
        socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as server,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client,
    ):
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 0))
        knock_socket.enable_pktinfo(server)
        client.sendto(b"x", ("127.0.0.1", server.getsockname()[1]))
        server.settimeout(5)
        _, ancdata, _, sockaddr = server.recvmsg(16, knock_socket.ANCILLARY)
    assert sockaddr[0] == "::ffff:127.0.0.1"
    assert knock_socket.addresses(sockaddr, ancdata) == (V4("127.0.0.1"), V4("127.0.0.1"))


@pytest.mark.parametrize(
    "address, why",
    [
        ("198.18.3.1", None),
        ("203.0.113.7", None),
        ("10.0.0.1", None),
        ("fd00::1", None),
        ("2a00:1450::1", None),
        ("0.0.0.0", "unicast"),
        ("0.1.2.3", "unicast"),
        ("127.0.0.1", "unicast"),
        ("224.0.0.1", "unicast"),
        ("255.255.255.255", "unicast"),
        ("240.0.0.1", "unicast"),
        ("169.254.1.1", "unicast"),
        ("::", "embeds"),
        ("::1", "embeds"),
        ("ff02::1", "unicast"),
        ("fe80::1", "unicast"),
        ("fec0::1", "unicast"),
        ("::ffff:198.18.3.1", "embeds"),
        ("::198.18.3.1", "embeds"),
        ("2002:c612:301::1", "embeds"),
        ("2001::1", "embeds"),
        ("64:ff9b::c612:301", "embeds"),
        ("64:ff9b:1::1", "embeds"),
    ],
)
def test_unknockable_sources(address, why):
    found = knock_socket.unknockable(ipaddress.ip_address(address))
    assert found is None if why is None else why in found


@pytest.mark.parametrize(
    "text, parsed",
    [
        ("198.18.0.1:4000", (V4("198.18.0.1"), 4000)),
        ("[fd00::1]:4000", (V6("fd00::1"), 4000)),
        ("[::]:65535", (V6("::"), 65535)),
    ],
)
def test_parse_listen(text, parsed):
    assert knock_socket.parse_listen(text) == parsed


@pytest.mark.parametrize(
    "text",
    [
        "198.18.0.1",
        "198.18.0.1:",
        "198.18.0.1:0",
        "198.18.0.1:65536",
        "host:4000",
        "[198.18.0.1]x:1",
        ":4000",
    ],
)
def test_parse_listen_refuses_what_is_not_ip_port(text):
    with pytest.raises(knock_socket.StartupError, match="expected IP:PORT or \\[IPv6\\]:PORT"):
        knock_socket.parse_listen(text)


# The batch reader (recvmmsg through ctypes), on real sockets over loopback.


def dual_stack_socket() -> socket.socket:
    """As gnocchi.socket makes it: [::]:PORT, IPv4 too, with IP_PKTINFO and IPV6_PKTINFO."""
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.bind(("::", 0))
    knock_socket.enable_pktinfo(sock)
    return sock


def sender(family: int, loopback: str) -> socket.socket:
    s = socket.socket(family, socket.SOCK_DGRAM)
    s.bind((loopback, 0))
    return s


def read_all(datagrams: knock_socket.Datagrams, sock: socket.socket, expected: int) -> list:
    """(packet, length, sockaddr, ancdata) of `expected` datagrams, read in batches."""
    found = []
    while len(found) < expected:
        assert select.select([sock], [], [], 5)[0], f"{len(found)} of {expected} arrived"
        for i in range(datagrams.read()):
            found.append((datagrams.packet(i), datagrams.length(i), *datagrams.sender(i)))
    return found


@pytest.mark.parametrize(
    "family, loopback", [(socket.AF_INET, "127.0.0.1"), (socket.AF_INET6, "::1")]
)
def test_the_batch_reader_gives_what_recvmsg_gives(family, loopback):
    # Each datagram is sent twice: socket.recvmsg reads the first copy, the
    # batch reader the second; bytes, source and ancillary data must agree.
    payloads = [
        b"",
        b"x",
        os.urandom(protocol.NONCE_LEN),
        os.urandom(protocol.MIN_PACKET),
        os.urandom(protocol.MAX_PACKET),
    ]
    with dual_stack_socket() as server, sender(family, loopback) as client:
        to = (loopback, server.getsockname()[1])
        datagrams = knock_socket.Datagrams(server)
        for payload in payloads:
            client.sendto(payload, to)
            assert select.select([server], [], [], 5)[0]
            expected = server.recvmsg(knock_socket.RECV_BUFFER, knock_socket.ANCILLARY)
            client.sendto(payload, to)
            ((packet, length, sockaddr, ancdata),) = read_all(datagrams, server, 1)
            assert packet == expected[0] == payload and length == len(payload)
            assert sorted(ancdata) == sorted(expected[1])
            assert sockaddr[:2] == expected[3][:2]
            source = client.getsockname()
            v4 = family == socket.AF_INET
            assert sockaddr[:2] == ((f"::ffff:{source[0]}" if v4 else source[0]), source[1])
            assert knock_socket.addresses(sockaddr, ancdata) == (
                (V4(loopback), V4(loopback)) if v4 else (V6(loopback), V6(loopback))
            )
        assert datagrams.read() == 0  # nothing waiting: EAGAIN, no exception


def test_an_oversize_datagram_is_cut_and_seen_as_oversize():
    key = os.urandom(protocol.KEY_LEN)
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        knock_socket.enable_pktinfo(server)
        big = os.urandom(protocol.MAX_PACKET + 500)
        with sender(socket.AF_INET, "127.0.0.1") as client:
            for d in (big, big[: protocol.MAX_PACKET]):
                client.sendto(d, server.getsockname())
        datagrams = knock_socket.Datagrams(server)
        (cut, cut_len, _, _), (whole, whole_len, _, _) = read_all(datagrams, server, 2)
        assert (cut, cut_len) == (big[: knock_socket.RECV_BUFFER], knock_socket.RECV_BUFFER)
        assert (whole, whole_len) == (big[: protocol.MAX_PACKET], protocol.MAX_PACKET)
        assert (
            protocol.unseal(cut_len, datagrams.head(0), datagrams.boxes[0], datagrams.opened, key)
            == protocol.SIZE
        )
        assert (
            protocol.unseal(whole_len, datagrams.head(1), datagrams.boxes[1], datagrams.opened, key)
            == protocol.MAC
        )


def test_unseal_checks_a_knock_where_it_lies_in_the_receive_buffer():
    key, seed = os.urandom(protocol.KEY_LEN), os.urandom(protocol.KEY_LEN)
    knock = seal.build_packet(key, seed, 7, b"open 22", bytes([127, 0, 0, 1]))
    flipped = knock[:-1] + bytes([knock[-1] ^ 1])
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        with sender(socket.AF_INET, "127.0.0.1") as client:
            for d in (knock, flipped):
                client.sendto(d, server.getsockname())
        datagrams = knock_socket.Datagrams(server)
        assert [r[0] for r in read_all(datagrams, server, 2)] == [knock, flipped]
        assert (
            protocol.unseal(
                datagrams.length(1), datagrams.head(1), datagrams.boxes[1], datagrams.opened, key
            )
            == protocol.MAC
        )
        unsealed = protocol.unseal(
            datagrams.length(0), datagrams.head(0), datagrams.boxes[0], datagrams.opened, key
        )
        assert unsealed.plaintext == SecretBox(key).decrypt(knock)


def test_unseal_opens_a_v2_knock_of_any_size_where_it_lies_in_the_receive_buffer():
    private, seed = os.urandom(protocol.KEY_LEN), os.urandom(protocol.KEY_LEN)
    keys2 = [(protocol.public_key(private), private)]
    knocks = [
        seal.build_packet2(keys2[0][0], seed, 7, b"open 22", bytes([127, 0, 0, 1]), body_len=n)
        for n in (16, protocol.MAX_BODY)
    ]
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        with sender(socket.AF_INET, "127.0.0.1") as client:
            for d in knocks:
                client.sendto(d, server.getsockname())
        datagrams = knock_socket.Datagrams(server)
        assert [r[0] for r in read_all(datagrams, server, 2)] == knocks
        assert len(knocks[1]) == protocol.MAX_PACKET2
        for i, knock in enumerate(knocks):
            unsealed = protocol.unseal(
                datagrams.length(i),
                datagrams.head(i),
                datagrams.boxes[i],
                datagrams.opened,
                None,
                keys2,
            )
            assert unsealed.plaintext == SealedBox(PrivateKey(private)).decrypt(knock[24:])


def test_a_full_receive_queue_is_read_in_batches():
    count = knock_socket.BATCH + 10
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as server:
        server.bind(("127.0.0.1", 0))
        with sender(socket.AF_INET, "127.0.0.1") as client:
            for i in range(count):
                client.sendto(b"%d" % i, server.getsockname())
        datagrams = knock_socket.Datagrams(server)
        assert select.select([server], [], [], 5)[0]
        assert datagrams.read() == knock_socket.BATCH  # the queue holds them all by now
        first = [datagrams.packet(i) for i in range(knock_socket.BATCH)]
        rest = [r[0] for r in read_all(datagrams, server, 10)]
        assert first + rest == [b"%d" % i for i in range(count)]


def test_control_messages_stop_at_a_truncated_one():
    one = struct.pack("@Nii", socket.CMSG_LEN(12), socket.IPPROTO_IP, knock_socket.IP_PKTINFO)
    data = bytes(range(12))
    full = one + data + bytes(socket.CMSG_SPACE(12) - socket.CMSG_LEN(12))
    assert knock_socket.control_messages(full) == [
        (socket.IPPROTO_IP, knock_socket.IP_PKTINFO, data)
    ]
    assert knock_socket.control_messages(full + one + data[:5]) == [
        (socket.IPPROTO_IP, knock_socket.IP_PKTINFO, data)
    ]
    assert knock_socket.control_messages(full[:-8]) == []


def test_listen_fds_takes_this_process_s_descriptors_and_leaves_none_to_children(monkeypatch):
    # sd_listen_fds(3), as python3-systemd's daemon.listen_fds() answered it.
    for pid, count, expected in (
        (os.getpid(), "2", [3, 4]),
        (os.getpid() + 1, "2", []),
        (os.getpid(), "x", []),
        (os.getpid(), "0", []),
    ):
        monkeypatch.setenv("LISTEN_PID", str(pid))
        monkeypatch.setenv("LISTEN_FDS", count)
        monkeypatch.setenv("LISTEN_FDNAMES", "knock")
        assert knock_socket.listen_fds() == expected
        assert not {"LISTEN_PID", "LISTEN_FDS", "LISTEN_FDNAMES"} & set(os.environ)
    assert knock_socket.listen_fds() == []  # started by hand


def test_notify_reaches_systemd_s_socket_by_path_and_by_abstract_name(tmp_path, monkeypatch):
    for address, env in (
        (str(tmp_path / "notify"), str(tmp_path / "notify")),
        (f"\0gnocchi-test-{os.getpid()}", f"@gnocchi-test-{os.getpid()}"),
    ):
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as systemd:
            systemd.bind(address)
            monkeypatch.setenv("NOTIFY_SOCKET", env)
            knock_socket.notify("READY=1")
            assert systemd.recv(64) == b"READY=1"
    monkeypatch.delenv("NOTIFY_SOCKET")
    knock_socket.notify("READY=1")  # not asked for: nothing, no error

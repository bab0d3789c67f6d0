"""gnocchi.knock_socket: --listen, a datagram's real addresses, and the
sources no knock is accepted from. (The socket systemd passes is tested with
systemd-socket-activate in tests/verifier/.)"""
import ipaddress
import socket
import struct

import pytest

from gnocchi import knock_socket

V4, V6 = ipaddress.IPv4Address, ipaddress.IPv6Address


def in_pktinfo(dest: str) -> tuple:
    return (socket.IPPROTO_IP, knock_socket.IP_PKTINFO,
            struct.pack("i4s4s", 2, bytes(4), V4(dest).packed))


def in6_pktinfo(dest: str) -> tuple:
    return (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO, V6(dest).packed + struct.pack("I", 2))


@pytest.mark.parametrize("sockaddr, ancdata, source, dest", [
    (("198.18.3.1", 4000), [in_pktinfo("198.18.3.2")], V4("198.18.3.1"), V4("198.18.3.2")),
    # an IPv4 datagram on a dual-stack socket: IP_PKTINFO says so, the source is unmapped
    (("::ffff:198.18.3.1", 4000, 0, 0), [in_pktinfo("198.18.3.2")],
     V4("198.18.3.1"), V4("198.18.3.2")),
    # an IPv6 packet from a v4-mapped source: no IP_PKTINFO, so it stays IPv6
    (("::ffff:198.18.3.1", 4000, 0, 0), [in6_pktinfo("fd00::2")],
     V6("::ffff:198.18.3.1"), V6("fd00::2")),
    (("fd00::1", 4000, 0, 0), [in6_pktinfo("fd00::2")], V6("fd00::1"), V6("fd00::2")),
    (("fd00::1", 4000, 0, 0), [], V6("fd00::1"), None),
    (("198.18.3.1", 4000), [(socket.IPPROTO_IP, knock_socket.IP_PKTINFO, b"short")],
     V4("198.18.3.1"), None),
])
def test_addresses_are_as_the_datagram_arrived(sockaddr, ancdata, source, dest):
    assert knock_socket.addresses(sockaddr, ancdata) == (source, dest)


def test_a_dual_stack_socket_reports_an_ipv4_datagram_as_ipv4():
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as server, \
            socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as client:
        server.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        server.bind(("::", 0))
        knock_socket.enable_pktinfo(server)
        client.sendto(b"x", ("127.0.0.1", server.getsockname()[1]))
        server.settimeout(5)
        _, ancdata, _, sockaddr = server.recvmsg(16, knock_socket.ANCILLARY)
    assert sockaddr[0] == "::ffff:127.0.0.1"
    assert knock_socket.addresses(sockaddr, ancdata) == (V4("127.0.0.1"), V4("127.0.0.1"))


@pytest.mark.parametrize("address, why", [
    ("198.18.3.1", None), ("203.0.113.7", None), ("10.0.0.1", None), ("fd00::1", None),
    ("2a00:1450::1", None),
    ("0.0.0.0", "unicast"), ("0.1.2.3", "unicast"), ("127.0.0.1", "unicast"),
    ("224.0.0.1", "unicast"), ("255.255.255.255", "unicast"), ("240.0.0.1", "unicast"),
    ("169.254.1.1", "unicast"), ("::", "embeds"), ("::1", "embeds"), ("ff02::1", "unicast"),
    ("fe80::1", "unicast"), ("fec0::1", "unicast"),
    ("::ffff:198.18.3.1", "embeds"), ("::198.18.3.1", "embeds"), ("2002:c612:301::1", "embeds"),
    ("2001::1", "embeds"), ("64:ff9b::c612:301", "embeds"), ("64:ff9b:1::1", "embeds"),
])
def test_unknockable_sources(address, why):
    found = knock_socket.unknockable(ipaddress.ip_address(address))
    assert found is None if why is None else why in found


@pytest.mark.parametrize("text, parsed", [
    ("198.18.0.1:4000", (V4("198.18.0.1"), 4000)),
    ("[fd00::1]:4000", (V6("fd00::1"), 4000)),
    ("[::]:65535", (V6("::"), 65535)),
])
def test_parse_listen(text, parsed):
    assert knock_socket.parse_listen(text) == parsed


@pytest.mark.parametrize("text", ["198.18.0.1", "198.18.0.1:", "198.18.0.1:0", "198.18.0.1:65536",
                                  "host:4000", "[198.18.0.1]x:1", ":4000"])
def test_parse_listen_refuses_what_is_not_ip_port(text):
    with pytest.raises(knock_socket.StartupError, match="expected IP:PORT or \\[IPv6\\]:PORT"):
        knock_socket.parse_listen(text)

"""Sources are what they are. A knock that arrived over IPv6 is an
IPv6 knock: from an address that embeds an IPv4 one (mapped, compatible,
6to4, Teredo, NAT64) it is refused and logged with that very address, never
turned into the IPv4 address inside it. The packets are real IPv6 datagrams
with those sources, crafted in the client namespace, to the dual-stack
socket systemd makes for ListenDatagram=PORT."""

import ipaddress
import socket

import pytest
from test_daemon import start
from support import PYTHON, knock, request, send_datagrams

from gnocchi.server import knock_socket

pytestmark = pytest.mark.netns

SEND_RAW = """
import socket, sys
from scapy.layers.inet6 import IPv6, UDP
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
payload = bytes.fromhex(sys.stdin.read())
raw = socket.socket(socket.AF_INET6, socket.SOCK_RAW, socket.IPPROTO_RAW)
raw.sendto(bytes(IPv6(src=src, dst=dst) / UDP(sport=40000, dport=port) / payload), (dst, 0))
"""
EMBEDDING = [
    "::ffff:198.18.40.77",
    "::198.18.40.77",
    "2002:c612:284d::1",
    "2001:0:4136:e378:8000:63bf:3fff:fdd2",
    "64:ff9b::c612:284d",
]


def send_from(net, source: str, port: int, packet: bytes) -> None:
    net.client.run(
        [PYTHON, "-c", SEND_RAW, source, net.server.ip6, str(port)], input=packet.hex(), timeout=30
    )


@pytest.mark.parametrize("source", EMBEDDING)
def test_a_knock_from_an_ipv6_source_that_embeds_ipv4_is_refused_as_it_came(
    daemons, net, k, tmp_path, helper, source
):
    d = start(
        daemons,
        net,
        k,
        tmp_path,
        helper,
        listen=str(k.port),
        extra=f'server_addresses = ["{net.server.ip}"]',
    )
    send_from(net, source, k.port, knock(k, "alice", 1, b"open 22", net.server.ip))
    # This kernel delivers every one of them (checked).
    [refused] = d.wait_events("refused", 1)
    shown = refused["GNOCCHI_SOURCE_IP"]
    assert ipaddress.ip_address(shown) == ipaddress.ip_address(source)
    assert refused["GNOCCHI_CLIENT"] == "alice"
    assert "embeds an IPv4 address" in refused["MESSAGE"] and shown in refused["MESSAGE"]
    assert helper.messages == []
    assert "198.18.40.77" not in d.text()
    # An honest IPv4 knock still opens, for the address it came from.
    send_datagrams(net, k.port, [knock(k, "alice", 2, b"open 22", net.server.ip)])
    [accepted] = d.wait_events("accepted", 1)
    assert accepted["GNOCCHI_SOURCE_IP"] == net.client.ip
    assert helper.messages == [request(net.client.ip, 22)]


def test_addresses_reads_the_family_from_the_kernel_not_from_the_text():
    v4_info = (
        socket.IPPROTO_IP,
        knock_socket.IP_PKTINFO,
        bytes(4) + bytes([198, 18, 0, 2]) + bytes([198, 18, 0, 2]),
    )
    v6_info = (
        socket.IPPROTO_IPV6,
        socket.IPV6_PKTINFO,
        ipaddress.IPv6Address("fd00::2").packed + bytes(4),
    )
    mapped = ("::ffff:198.18.40.77", 4000, 0, 0)
    # An IPv4 datagram on a dual-stack socket: IP_PKTINFO came with it.
    assert knock_socket.addresses(mapped, [v6_info, v4_info]) == (
        ipaddress.ip_address("198.18.40.77"),
        ipaddress.ip_address("198.18.0.2"),
    )
    # An IPv6 packet from ::ffff:198.18.40.77: it stays what it is.
    assert knock_socket.addresses(mapped, [v6_info]) == (
        ipaddress.ip_address("::ffff:198.18.40.77"),
        ipaddress.ip_address("fd00::2"),
    )
    assert knock_socket.addresses(("198.18.1.1", 4000), [v4_info])[0] == ipaddress.ip_address(
        "198.18.1.1"
    )

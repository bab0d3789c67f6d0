"""gnocchi/admin/cut.py's netlink messages, without root: what it sends is built from
typed values, what it reads is parsed from the kernel's layouts (the kernel itself:
tests/integration/test_gate_tampering.py)."""

import ipaddress
import socket
import struct
import sys

from gnocchi.admin import cut

A4, B4 = ipaddress.ip_address("198.18.0.1"), ipaddress.ip_address("198.18.0.2")


def test_a_knocked_flow_is_told_by_label_120_in_the_kernels_bitmap():
    size = struct.calcsize("L")
    words = [0] * (16 // size)
    words[120 // (8 * size)] = 1 << (120 % (8 * size))
    labels = b"".join(w.to_bytes(size, sys.byteorder) for w in words)
    assert cut.has_label(labels, 120)
    assert not cut.has_label(labels, 121) and not cut.has_label(labels, 0)
    assert not cut.has_label(b"", 120), "a flow without labels was admitted by no knock"


def test_an_inet_diag_message_gives_the_socket_unmapped_and_its_cookie():
    mapped = ipaddress.ip_address("::ffff:198.18.0.2").packed
    payload = (
        struct.pack("=BBBB", socket.AF_INET6, 1, 0, 0)
        + struct.pack("!HH", 22, 40000)
        + mapped
        + ipaddress.ip_address("::ffff:198.18.0.1").packed
        + struct.pack("=I", 0)
        + b"COOKIE!!"
        + b"\0" * 20
    )
    sock = cut.parse_sock(payload)
    assert (sock.local, sock.lport, sock.remote, sock.rport) == (B4, 22, A4, 40000)
    assert sock.cookie == b"COOKIE!!" and len(sock.raw_id) == 48
    assert sock.raw_id.endswith(b"COOKIE!!")
    request = cut.sock_request(sock.family, 0xFFFFFFFF, sock.raw_id)
    assert len(request) == 56 and request[:2] == bytes([socket.AF_INET6, socket.IPPROTO_TCP])


def test_a_conntrack_entry_reads_back_as_it_was_built():
    body = (
        cut.nfgen(4)
        + cut.tuple_attr(socket.IPPROTO_UDP, A4, 5353, B4, 51820)
        + cut.attr(cut.CTA_ID, struct.pack("!I", 77))
        + cut.attr(cut.CTA_LABELS, b"\0" * 16)
    )
    flow = cut.parse_flow(body)
    assert flow == cut.Flow(17, A4, 5353, B4, 51820, 77, b"\0" * 16)
    assert not flow.knocked
    assert cut.parse_flow(cut.nfgen(4) + cut.attr(cut.CTA_ID, b"\0" * 4)) is None


def test_protected_ranges_are_spelled_out():
    assert cut.ports({"tcp": [22, [8000, 8002]], "udp": []}) == (
        frozenset({22, 8000, 8001, 8002}),
        frozenset(),
    )

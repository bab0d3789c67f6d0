"""Properties of gnocchi.server.knock_socket's parsers of what recvmmsg filled
in (hypothesis): control_messages reads any msg_control buffer without raising
and never past its end; addresses makes (source, destination) of any sockaddr
and control messages, never raising, and says IPv4 only when IP_PKTINFO does.
"""

import ipaddress
import socket
import struct

from hypothesis import given, settings, strategies as st

from gnocchi.server import knock_socket

moderate = settings(max_examples=300, deadline=None)
HEADER = socket.CMSG_LEN(0)
kinds = st.sampled_from(
    [
        (socket.IPPROTO_IP, knock_socket.IP_PKTINFO),
        (socket.IPPROTO_IPV6, socket.IPV6_PKTINFO),
        (socket.SOL_SOCKET, 29),
        (0, 0),
    ]
)
messages = st.lists(st.tuples(kinds, st.binary(max_size=40)), max_size=4)


def encode(found: list) -> bytes:
    """A msg_control buffer as the kernel lays it out (CMSG_SPACE apart)."""
    out = b""
    for (level, kind), data in found:
        out += struct.pack("@Nii", HEADER + len(data), level, kind) + data
        out += bytes(socket.CMSG_SPACE(len(data)) - HEADER - len(data))
    return out


@moderate
@given(messages)
def test_control_messages_read_back_what_the_kernel_wrote(found):
    assert knock_socket.control_messages(encode(found)) == [(lvl, k, d) for (lvl, k), d in found]


@moderate
@given(
    st.one_of(
        st.binary(max_size=200),
        st.tuples(messages, st.integers(0, 200)).map(lambda t: encode(t[0])[: t[1]]),
    )
)
def test_any_control_buffer_gives_messages_within_it(control):
    found = knock_socket.control_messages(control)
    assert sum(len(data) for _, _, data in found) <= len(control)
    assert all(isinstance(level, int) and isinstance(kind, int) for level, kind, _ in found)


sources = st.one_of(
    st.ip_addresses(v=4).map(lambda a: (str(a), 40000)),
    st.ip_addresses(v=6).map(lambda a: (str(a), 40000, 0, 0)),
    st.ip_addresses(v=4).map(lambda a: (f"::ffff:{a}", 40000, 0, 0)),
)


@moderate
@given(sources, st.lists(st.tuples(kinds, st.binary(max_size=40)), max_size=3))
def test_addresses_never_raise_and_only_ip_pktinfo_makes_a_source_ipv4(sockaddr, found):
    ancdata = [(level, kind, data) for (level, kind), data in found]
    source, dest = knock_socket.addresses(sockaddr, ancdata)
    pktinfo = any(
        level == socket.IPPROTO_IP and kind == knock_socket.IP_PKTINFO and len(data) >= 12
        for level, kind, data in ancdata
    )
    given_source = ipaddress.ip_address(sockaddr[0])
    if pktinfo:
        assert dest is not None and dest.version == 4
        assert source == (getattr(given_source, "ipv4_mapped", None) or given_source)
    else:
        assert source == given_source
        assert dest is None or dest.version == 6

"""What the verifier and the root helper must agree on, written twice because
helper/ imports nothing from gnocchi/: the request format (gnocchi/server/helper_client.py
and helper/request.py, pinned to docs/contracts.md by golden bytes) and the
source addresses no knock may open for."""

import ipaddress

import pytest
from hypothesis import given, settings, strategies as st

import request as helper_request  # helper/request.py, by the name the helper imports it
from gnocchi.server import config, helper_client, knock_socket
from gnocchi.shared.knock_request import Open
from support import ENTRY, HEADER, STATUS, request

GOLDEN = [
    # (address, [(port, proto), ...], client, deadline in ms) -> the bytes of docs/contracts.md
    (
        ("198.51.100.7", [(22, "tcp")], "alice", 123456789),
        "04040105c6336407" + "00" * 12 + "00000000075bcd15" + "060016" + "616c696365",
    ),
    (
        ("203.0.113.9", [(60001, "udp"), (22, "tcp")], "b", 1),
        "04040201cb007109" + "00" * 12 + "0000000000000001" + "11ea61060016" + "62",
    ),
    (
        ("2001:db8::1", [(443, "tcp"), (443, "udp"), (60001, "udp")], "web-1.example", 2**64 - 1),
        "04"
        "06"
        "03"
        "0d"
        "20010db8000000000000000000000001" + "ff" * 8 + "06"
        "01bb"
        "11"
        "01bb"
        "11"
        "ea61" + b"web-1.example".hex(),
    ),
]
NUMBER = {"tcp": 6, "udp": 17}


@pytest.mark.parametrize("fields, golden", GOLDEN, ids=[g[0][0] for g in GOLDEN])
def test_both_sides_agree_on_the_bytes(fields, golden):
    address, opens, client, deadline = fields
    wire = bytes.fromhex(golden)
    assert (
        helper_client.encode(
            ipaddress.ip_address(address), [Open(*o) for o in opens], client, deadline
        )
        == wire
    )
    (port, proto), *more = [(port, NUMBER[proto]) for port, proto in opens]
    assert request(address, port, proto, more=more, client=client, deadline_ms=deadline) == wire
    assert helper_request.parse(wire) == helper_request.Request(
        ipaddress.ip_address(address),
        tuple((proto, port) for port, proto in opens),
        deadline,
        client,
    )


def test_the_helper_takes_every_client_name_the_config_takes_and_no_other():
    # The config's rule (gnocchi/server/config.py NAME) and the helper's, as bytes.
    assert helper_request.NAME.pattern.decode() == config.NAME.pattern


def test_both_sides_name_the_status_bytes_alike():
    assert helper_client.STATUSES == helper_request.STATUSES == tuple(STATUS)


@pytest.mark.parametrize("name", ["HEADER", "ENTRY", "VERSION", "PROTOCOLS", "MAX_PORTS"])
def test_both_sides_give_the_format_the_same_names(name):
    ours, theirs = getattr(helper_client, name), getattr(helper_request, name)
    if name in ("HEADER", "ENTRY"):  # one spelling of each struct, also in the tests' copy
        tests = {"HEADER": HEADER, "ENTRY": ENTRY}[name]
        assert ours.format == theirs.format == tests.format
        assert ours.size == {"HEADER": 28, "ENTRY": 3}[name]
    else:
        assert ours == theirs
    assert helper_client.MAX_PORTS == 8  # docs/contracts.md


# The source addresses no knock may open for, also written twice:
# gnocchi/server/knock_socket.py and helper/request.py, both unknockable(): the verifier's
# says why not, or None; the helper's whether not.
@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        st.ip_addresses(),
        st.sampled_from(
            [
                "0.1.2.3",
                "127.0.0.1",
                "224.0.0.1",
                "255.255.255.255",
                "240.0.0.1",
                "169.254.1.1",
                "198.18.3.1",
                "::",
                "::1",
                "ff02::1",
                "fe80::1",
                "fec0::1",
                "fd00::1",
                "::ffff:198.18.3.1",
                "::198.18.3.1",
                "::ffff:0:c612:301",
                "2002:c612:301::1",
                "2001::1",
                "64:ff9b::1",
                "64:ff9b:1::1",
            ]
        ).map(ipaddress.ip_address),
    )
)
def test_both_sides_refuse_the_same_sources(address):
    assert (knock_socket.unknockable(address) is None) == (not helper_request.unknockable(address))


# And a table of the cases that matter, each with its expected answer.
SOURCES = [
    ("198.51.100.7", True),
    ("198.18.40.77", True),
    ("10.1.2.3", True),
    ("2001:db8::1", True),
    ("fd00::1", True),
    ("::ffff:198.18.40.77", False),  # IPv4-mapped
    ("::ffff:0:c612:284d", False),  # IPv4-translated (SIIT)
    ("::198.18.40.77", False),  # IPv4-compatible
    ("2002:c612:284d::1", False),  # 6to4
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),  # Teredo
    ("64:ff9b::c612:284d", False),
    ("64:ff9b:1::c612:284d", False),  # NAT64
    ("127.0.0.1", False),
    ("::1", False),
    ("0.1.2.3", False),
    ("0.0.0.0", False),
    ("::", False),
    ("224.0.0.1", False),
    ("ff02::1", False),
    ("255.255.255.255", False),
    ("240.0.0.1", False),
    ("169.254.1.1", False),
    ("fe80::1", False),
    ("fec0::1", False),
]


@pytest.mark.parametrize("address, knockable", SOURCES, ids=[s[0] for s in SOURCES])
def test_both_sides_refuse_each_special_source(address, knockable):
    a = ipaddress.ip_address(address)
    assert (knock_socket.unknockable(a) is None) == knockable
    assert (not helper_request.unknockable(a)) == knockable


def test_gnocchi_check_knows_the_helpers_share():
    # gnocchi check warns when the knocked sets cannot hold every client's share.
    from gnocchi.admin import check
    import nft  # helper/nft.py

    assert check.SHARE == nft.SHARE

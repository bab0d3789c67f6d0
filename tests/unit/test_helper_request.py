"""helper/request.py, the helper's only parser: whatever the bytes, parse
returns a Request or a status and never raises, and what it accepts is the
canonical encoding of exactly what it returns."""

import ipaddress
import re

import pytest
from hypothesis import given, settings, strategies as st

import request as rq  # helper/request.py, by the name the helper imports it
from support import request

NUMBER = {"tcp": 6, "udp": 17}


def encode(r: rq.Request) -> bytes:
    (port, proto), *more = [(port, NUMBER[proto]) for proto, port in r.opens]
    return request(
        str(r.address), port, proto, more=more, client=r.client, deadline_ms=r.deadline_ms
    )


@settings(max_examples=1000, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=64),
        # a v4 header, so the checks past the version see bytes too
        st.tuples(st.integers(0, 9), st.integers(0, 70), st.binary(max_size=100)).map(
            lambda t: bytes([4, 4, t[0], t[1], 198, 18, 1, 1]) + bytes(20) + t[2]
        ),
    )
)
def test_any_bytes_give_a_request_or_a_status(msg):
    out = rq.parse(msg)
    assert isinstance(out, rq.Request) or out in range(len(rq.STATUSES))
    if isinstance(out, rq.Request):
        assert encode(out) == msg


NAMES = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", fullmatch=True)


@settings(max_examples=1000, deadline=None)
@given(
    st.sampled_from([4, 6]),
    st.lists(
        st.tuples(st.sampled_from([6, 17]), st.integers(0, 65535)),
        min_size=1,
        max_size=rq.MAX_PORTS,
    ),
    st.binary(min_size=16, max_size=16),
    st.integers(0, 2**64 - 1),
    NAMES,
)
def test_well_formed_requests(family, entries, raw, deadline, name):
    if family == 4:
        raw = raw[:4] + bytes(12)
    msg = (
        rq.HEADER.pack(4, family, len(entries), len(name), raw, deadline)
        + b"".join(rq.ENTRY.pack(*e) for e in entries)
        + name.encode()
    )
    out = rq.parse(msg)
    address = ipaddress.ip_address(raw[:4] if family == 4 else raw)
    if len(set(entries)) != len(entries):
        assert out == rq.BAD_DUPLICATE
    elif rq.unknockable(address):
        assert out == rq.BAD_ADDRESS
    else:
        assert out == rq.Request(
            address, tuple((rq.PROTOCOLS[n], p) for n, p in entries), deadline, name
        )
        assert encode(out) == msg


@settings(max_examples=500, deadline=None)
@given(st.binary(max_size=70))
def test_a_name_is_what_the_config_allows_or_the_request_is_refused(name):
    out = rq.parse(request("198.18.1.1", 22, client=name))
    if len(name) > 255:
        return
    allowed = re.fullmatch(rb"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}", name) is not None
    assert (out.client == name.decode()) if allowed else out == rq.BAD_NAME


TWO = request("198.18.1.1", 22, more=[(60001, 17)])


@pytest.mark.parametrize(
    "msg, status",
    [
        (TWO, rq.OK),
        (request("198.18.1.1", 22, count=0, client="")[:28], rq.BAD_COUNT),  # no entry at all
        (request("198.18.1.1", 22, count=0), rq.BAD_COUNT),  # count 0, one entry after
        (request("198.18.1.1", 1, more=[(p, 6) for p in range(2, 10)]), rq.BAD_COUNT),  # 9
        (request("198.18.1.1", 22, count=255), rq.BAD_COUNT),
        (request("198.18.1.1", 22, count=2), rq.BAD_LENGTH),  # says 2, carries 1
        (request("198.18.1.1", 22, more=[(23, 6)], count=1), rq.BAD_LENGTH),  # says 1, carries 2
        (TWO[:-1], rq.BAD_LENGTH),
        (TWO + b"\0", rq.BAD_LENGTH),
        (TWO[:27], rq.BAD_LENGTH),
        (request("198.18.1.1", 22, more=[(22, 6)]), rq.BAD_DUPLICATE),
        (request("198.18.1.1", 22, more=[(60001, 17), (22, 6)]), rq.BAD_DUPLICATE),
        (request("198.18.1.1", 22, more=[(22, 17)]), rq.OK),  # 22/tcp and 22/udp: two
        (request("198.18.1.1", 22, more=[(23, 1)]), rq.BAD_PROTO),  # one bad entry: all
        (request("198.18.1.1", 22, more=[(0, 6)]), rq.OK),  # the live set decides
        (request("198.18.1.1", 22, version=2), rq.BAD_VERSION),
        (request("198.18.1.1", 22, version=3), rq.BAD_VERSION),
        (request("198.18.1.1", 22, client=""), rq.BAD_NAME),
        (request("198.18.1.1", 22, client="-alice"), rq.BAD_NAME),
        (request("198.18.1.1", 22, client="alice\n"), rq.BAD_NAME),
        (request("198.18.1.1", 22, client="alice", size=4), rq.BAD_LENGTH),
        (request("198.18.1.1", 22, client="x" * 64), rq.OK),
        (request("198.18.1.1", 22, client="x" * 65), rq.BAD_NAME),
    ],
)
def test_the_count_the_length_and_each_entry_are_checked(msg, status):
    out = rq.parse(msg)
    assert (rq.OK if isinstance(out, rq.Request) else out) == status


def test_a_version_2_request_is_a_bad_version_whatever_its_length():
    v2 = bytes.fromhex("020406000016c6120101" + "00" * 12 + "00000000075bcd15")  # 30 bytes
    assert rq.parse(v2) == rq.BAD_VERSION


@pytest.mark.parametrize("family", [0, 2, 5, 10, 255])
@pytest.mark.parametrize("address", ["198.18.1.1", "2001:db8:4::1"])
def test_an_address_family_other_than_4_or_6_is_a_bad_address(family, address):
    # 2 and 10 are Linux's AF_INET and AF_INET6: the request says 4 or 6.
    assert rq.parse(request(address, 22)) != rq.BAD_ADDRESS
    assert rq.parse(request(address, 22, family=family)) == rq.BAD_ADDRESS


@pytest.mark.parametrize("at", range(4, 16))
def test_an_ipv4_address_with_any_byte_set_after_it_is_a_bad_address(at):
    # An IPv4 address is 4 bytes, then 12 zero bytes: anything else there would be
    # a second reading of the same request.
    good = request("198.18.1.1", 22)
    address_at = 4  # the header's version, family, count and pad come first
    msg = good[: address_at + at] + b"\x01" + good[address_at + at + 1 :]
    assert rq.parse(good) != rq.BAD_ADDRESS and rq.parse(msg) == rq.BAD_ADDRESS

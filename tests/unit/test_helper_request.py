"""helper/request.py, the helper's only parser: whatever the bytes, parse
returns a Request or a status and never raises, and what it accepts is the
canonical encoding of exactly what it returns."""
import ipaddress

from hypothesis import given, settings, strategies as st

import request as rq  # helper/request.py, by the name the helper imports it
from support import request


def encode(r: rq.Request) -> bytes:
    return request(str(r.address), r.port, {"tcp": 6, "udp": 17}[r.proto],
                   deadline_ms=r.deadline_ms)


@settings(max_examples=1000, deadline=None)
@given(st.binary(max_size=64))
def test_any_bytes_give_a_request_or_a_status(msg):
    out = rq.parse(msg)
    assert isinstance(out, rq.Request) or out in range(len(rq.STATUSES))
    if isinstance(out, rq.Request):
        assert encode(out) == msg


@settings(max_examples=1000, deadline=None)
@given(st.sampled_from([4, 6]), st.sampled_from([6, 17]), st.integers(0, 65535),
       st.binary(min_size=16, max_size=16), st.integers(0, 2**64 - 1))
def test_well_formed_requests(family, proto, port, raw, deadline):
    if family == 4:
        raw = raw[:4] + bytes(12)
    msg = rq.REQUEST.pack(2, family, proto, 0, port, raw, deadline)
    out = rq.parse(msg)
    address = ipaddress.ip_address(raw[:4] if family == 4 else raw)
    if not rq.knockable(address):
        assert out == rq.BAD_ADDRESS
    elif port == 0:
        assert out == rq.NOT_PROTECTED
    else:
        assert out == rq.Request(address, rq.PROTOCOLS[proto], port, deadline)
        assert encode(out) == msg

"""One request format, written twice: gnocchi/helper_client.py (the verifier's
side) and helper/request.py (the root side, which imports nothing from
gnocchi/). Golden bytes pin both to docs/contracts.md."""
import ipaddress

import pytest

import request as helper_request  # helper/request.py, by the name the helper imports it
from gnocchi import helper_client
from support import STATUS, request

GOLDEN = [
    # (address, port, proto) -> the 22 bytes of docs/contracts.md
    (("198.51.100.7", 22, "tcp"),
     "01" "04" "06" "00" "0016" "c6336407" + "00" * 12),
    (("203.0.113.9", 60001, "udp"),
     "01" "04" "11" "00" "ea61" "cb007109" + "00" * 12),
    (("2001:db8::1", 443, "tcp"),
     "01" "06" "06" "00" "01bb" "20010db8000000000000000000000001"),
]


@pytest.mark.parametrize("fields, golden", GOLDEN, ids=[g[0][0] for g in GOLDEN])
def test_both_sides_agree_on_the_bytes(fields, golden):
    address, port, proto = fields
    wire = bytes.fromhex(golden)
    assert helper_client.encode(ipaddress.ip_address(address), port, proto) == wire
    assert request(address, port, {"tcp": 6, "udp": 17}[proto]) == wire  # the tests' own copy
    parsed = helper_request.parse(wire)
    assert parsed == helper_request.Request(ipaddress.ip_address(address),
                                            {"tcp": 6, "udp": 17}[proto], port)


def test_both_sides_name_the_status_bytes_alike():
    assert helper_client.STATUS_NAMES == helper_request.STATUSES == tuple(STATUS)
    assert helper_client.REQUEST.size == helper_request.SIZE == 22

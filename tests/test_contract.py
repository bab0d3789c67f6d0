"""One request format, written twice: gnocchi/helper_client.py (the verifier's
side) and helper/request.py (the root side, which imports nothing from
gnocchi/). Golden bytes pin both to docs/contracts.md."""
import importlib.util
import ipaddress
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
from gnocchi import helper_client  # noqa: E402

spec = importlib.util.spec_from_file_location("helper_request", ROOT / "helper" / "request.py")
helper_request = importlib.util.module_from_spec(spec)
spec.loader.exec_module(helper_request)

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
    parsed = helper_request.parse(wire)
    assert parsed == helper_request.Request(ipaddress.ip_address(address),
                                            {"tcp": 6, "udp": 17}[proto], port)


def test_both_sides_name_the_status_bytes_alike():
    assert helper_client.STATUS_NAMES == helper_request.STATUSES
    assert helper_client.REQUEST.size == helper_request.SIZE == 22


# The verifier refuses a knock from these sources before it asks the helper,
# and the helper refuses them again: both lists must agree.
SOURCES = [
    ("198.51.100.7", True), ("198.18.40.77", True), ("10.1.2.3", True),
    ("2001:db8::1", True), ("fd00::1", True),
    ("::ffff:198.18.40.77", False),                     # IPv4-mapped
    ("::ffff:0:c612:284d", False),                      # IPv4-translated (SIIT)
    ("::198.18.40.77", False),                          # IPv4-compatible
    ("2002:c612:284d::1", False),                       # 6to4
    ("2001:0:4136:e378:8000:63bf:3fff:fdd2", False),    # Teredo
    ("64:ff9b::c612:284d", False), ("64:ff9b:1::c612:284d", False),  # NAT64
    ("127.0.0.1", False), ("::1", False), ("0.1.2.3", False), ("0.0.0.0", False), ("::", False),
    ("224.0.0.1", False), ("ff02::1", False), ("255.255.255.255", False), ("240.0.0.1", False),
    ("169.254.1.1", False), ("fe80::1", False), ("fec0::1", False),
]


@pytest.mark.parametrize("address, knockable", SOURCES, ids=[s[0] for s in SOURCES])
def test_both_sides_refuse_the_same_sources(address, knockable):
    from gnocchi import verifier
    a = ipaddress.ip_address(address)
    assert (verifier.unknockable(a) is None) == knockable
    assert helper_request.knockable(a) == knockable

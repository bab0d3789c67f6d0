"""helper/nft.py: the libnftables JSON it sends, apply() (metainfo first, rc
checked), how it reads the sets' elements, and its count of the openings
pending. FakeNftables stands in for libnftables here only; the real one runs
in tests/integration/."""

import ipaddress

import pytest

import nft
import request as rq
from support import FakeNftables

METAINFO = {"metainfo": {"json_schema_version": 1}}


def req(address: str, opens, client="alice") -> rq.Request:
    return rq.Request(ipaddress.ip_address(address), tuple(opens), 0, client)


@pytest.mark.parametrize(
    "elems, port, protected",
    [
        ([22], 22, True),
        ([22], 23, False),
        ([], 22, False),
        ([{"elem": {"val": 22, "comment": "ssh"}}], 22, True),
        # gnocchi's protected sets hold single ports (no interval flag): a range in a
        # hand-made table protects nothing for the helper, which refuses its ports.
        ([22, {"range": [8000, 8100]}], 8000, False),
        ([{"elem": {"val": {"range": [8000, 8100]}, "comment": "web"}}], 8050, False),
    ],
)
def test_every_element_form_of_a_protected_set_is_read(elems, port, protected):
    table = nft.Table(FakeNftables(protected=elems))
    assert table.look(req("198.18.1.1", [("tcp", port)]), 0.0) == ""
    assert table.unprotected([("tcp", port)]) == ([] if protected else [f"tcp/{port}"])


@pytest.mark.parametrize(
    "address, opens, name",
    [
        ("198.18.1.1", (("tcp", 22),), "knocked4"),
        ("fd00::7", (("udp", 22), ("tcp", 22), ("udp", 60001)), "knocked6"),
    ],
)
def test_add_puts_every_element_in_one_transaction_with_the_timeout_and_client(
    address, opens, name
):
    ctx = FakeNftables()
    table = nft.Table(ctx)
    assert table.add(req(address, opens, "bob"), 7) == ""
    assert table.add(req(address, opens, "bob"), 7) == ""  # again: pending, so re-armed
    vals = [{"val": {"concat": [address, proto, port]}} for proto, port in opens]

    def element(**extra):
        return {
            "element": {
                "family": "inet",
                "table": "gnocchi",
                "name": name,
                "elem": [{"elem": {**v, **extra}} for v in vals],
            }
        }

    add = {"add": element(timeout=7, comment="bob")}
    assert ctx.sent == [
        {"nftables": [METAINFO, add]},  # none pending: the add alone
        {"nftables": [METAINFO, add, {"delete": element()}, add]},
    ]
    assert table.pending == {(ipaddress.ip_address(address), *o): "bob" for o in opens}
    source = ipaddress.ip_address(address).packed[: 4 if "." in address else 8]
    assert table.held == {"bob": len(opens), source: len(opens)}


def test_the_knocked_sets_are_read_with_their_clients_in_every_element_form():
    ctx = FakeNftables(
        pending=[
            {
                "elem": {
                    "val": {"concat": ["198.18.1.1", "tcp", 22]},
                    "timeout": 30,
                    "expires": 3,
                    "comment": "alice",
                }
            },
            {"elem": {"val": {"concat": ["fd00::7", "udp", 60001]}, "timeout": 30}},
            {"concat": ["198.18.1.2", "tcp", 22]},
        ]
    )
    table = nft.Table(ctx)
    assert table.look(req("198.18.1.9", [("tcp", 22)]), 0.0) == ""
    assert table.pending == {
        (ipaddress.ip_address("198.18.1.1"), "tcp", 22): "alice",
        (ipaddress.ip_address("fd00::7"), "udp", 60001): "",
        (ipaddress.ip_address("198.18.1.2"), "tcp", 22): "",
    }


@pytest.mark.parametrize(
    "address, source", [("198.18.1.1", "c6120101"), ("2001:db8:1:2:3:4:5:6", "20010db800010002")]
)
def test_a_source_is_an_ipv4_address_or_an_ipv6_64(address, source):
    assert nft.source(ipaddress.ip_address(address)).hex() == source


def test_a_knock_again_counts_once_and_moves_to_its_latest_client():
    table = nft.Table(FakeNftables())
    a, b = (
        (ipaddress.ip_address("fd00::1"), "tcp", 22),
        (ipaddress.ip_address("fd00::2"), "tcp", 22),
    )
    for key, client in ((a, "alice"), (a, "alice"), (b, "alice"), (a, "bob")):
        table.note(key, client)
    assert +table.held == {"alice": 1, "bob": 1, bytes.fromhex("fd00" + "00" * 6): 2}


def test_apply_is_one_transaction_with_metainfo_first_and_checks_rc():
    ctx = FakeNftables(protected=(22,))
    table = nft.Table(ctx)
    listing = {"list": {"set": {"family": "inet", "table": "gnocchi", "name": "protected_tcp"}}}
    listed, err = table.apply(listing)
    assert err == "" and listed["nftables"][1]["set"]["elem"] == [22]
    assert ctx.sent == [{"nftables": [METAINFO, listing]}]
    assert table.apply() == ({"nftables": []}, "")  # rc 0, no output
    failing = nft.Table(FakeNftables(fail_list="Error: No such file or directory"))
    assert failing.apply(listing) == ({}, "Error: No such file or directory")
    assert failing.look(req("198.18.1.1", [("tcp", 22)]), 0.0) == "Error: No such file or directory"


def test_a_failure_without_error_text_still_reads_as_a_failure():
    class Silent:
        def json_cmd(self, command):
            return 1, "", ""

    assert nft.Table(Silent()).apply() == ({}, "libnftables rc 1")

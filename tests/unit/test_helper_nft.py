"""helper/nft.py: pure builders of libnftables JSON, and apply(), the one call
that runs them (metainfo first, rc checked). FakeNftables stands in for
libnftables here only; the real one runs in tests/integration/."""
import ipaddress

import pytest

import nft
import request as rq  # helper/request.py, by the name the helper imports it
from support import FakeNftables

METAINFO = {"metainfo": {"json_schema_version": 1}}


def test_list_protected_names_the_protocols_set_in_gnocchis_table():
    assert nft.list_protected("tcp") == [
        {"list": {"set": {"family": "inet", "table": "gnocchi", "name": "protected_tcp"}}}]
    assert nft.list_protected("udp")[0]["list"]["set"]["name"] == "protected_udp"


@pytest.mark.parametrize("elems, port, protected", [
    ([22], 22, True), ([22], 23, False), ([], 22, False),
    ([22, {"range": [8000, 8100]}], 8000, True), ([{"range": [8000, 8100]}], 8100, True),
    ([{"range": [8000, 8100]}], 8101, False), ([{"range": [8000, 8100]}], 7999, False),
    ([{"elem": {"val": 22, "comment": "ssh"}}], 22, True),
    ([{"elem": {"val": {"range": [8000, 8100]}, "comment": "web"}}], 8050, True),
])
def test_protects_reads_every_element_form(elems, port, protected):
    listed = {"nftables": [METAINFO, {"set": {"name": "protected_tcp", "elem": elems}}]}
    assert nft.protects(listed, port) is protected


@pytest.mark.parametrize("address, opens, name", [
    ("198.18.1.1", (("tcp", 22),), "knocked4"),
    ("fd00::7", (("udp", 22), ("tcp", 22), ("udp", 60001)), "knocked6")])
def test_open_once_adds_deletes_and_adds_every_element_with_the_timeout(address, opens, name):
    req = rq.Request(ipaddress.ip_address(address), opens, deadline_ms=0)
    elem = {"family": "inet", "table": "gnocchi", "name": name, "elem": [
        {"elem": {"val": {"concat": [address, proto, port]}, "timeout": 7}}
        for proto, port in opens]}
    assert nft.open_once(req, 7) == [{"add": {"element": elem}}, {"delete": {"element": elem}},
                                     {"add": {"element": elem}}]


def test_apply_is_one_transaction_with_metainfo_first_and_checks_rc():
    ctx = FakeNftables(protected=(22,))
    listed, err = nft.apply(ctx, nft.list_protected("tcp"))
    assert err == "" and nft.protects(listed, 22)
    assert ctx.sent == [{"nftables": [METAINFO, *nft.list_protected("tcp")]}]
    assert nft.apply(ctx, []) == ({"nftables": []}, "")  # rc 0, no output
    failing = FakeNftables(fail_list="Error: No such file or directory")
    assert nft.apply(failing, nft.list_protected("tcp")) == ({}, "Error: No such file or directory")


def test_a_failure_without_error_text_still_reads_as_a_failure():
    class Silent:
        def json_cmd(self, command):
            return 1, "", ""
    assert nft.apply(Silent(), []) == ({}, "libnftables rc 1")

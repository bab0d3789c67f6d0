"""helper/nft.py: the libnftables JSON it sends, apply() (metainfo first, rc
checked), how it reads a protected set's elements, and on which kernels it
adds once. FakeNftables stands in for libnftables here only; the real one
runs in tests/integration/."""
import ipaddress

import pytest

import nft
from support import FakeNftables

METAINFO = {"metainfo": {"json_schema_version": 1}}


@pytest.mark.parametrize("elems, port, protected", [
    ([22], 22, True), ([22], 23, False), ([], 22, False),
    ([22, {"range": [8000, 8100]}], 8000, True), ([{"range": [8000, 8100]}], 8100, True),
    ([{"range": [8000, 8100]}], 8101, False), ([{"range": [8000, 8100]}], 7999, False),
    ([{"elem": {"val": 22, "comment": "ssh"}}], 22, True),
    ([{"elem": {"val": {"range": [8000, 8100]}, "comment": "web"}}], 8050, True),
])
def test_every_element_form_of_a_protected_set_is_read(elems, port, protected):
    table = nft.Table(FakeNftables(protected=elems), True)
    assert table.unprotected([("tcp", port)], 0.0) == ([] if protected else [("tcp", port)], "")


@pytest.mark.parametrize("address, opens, name", [
    ("198.18.1.1", (("tcp", 22),), "knocked4"),
    ("fd00::7", (("udp", 22), ("tcp", 22), ("udp", 60001)), "knocked6")])
@pytest.mark.parametrize("rearms", [True, False])
def test_add_puts_every_element_in_one_transaction_with_the_timeout(address, opens, name, rearms):
    ctx = FakeNftables()
    table = nft.Table(ctx, rearms)
    assert table.add(ipaddress.ip_address(address), opens, 7) == ""
    vals = [{"val": {"concat": [address, proto, port]}} for proto, port in opens]
    def element(**times):
        return {"element": {"family": "inet", "table": "gnocchi", "name": name,
                            "elem": [{"elem": {**v, **times}} for v in vals]}}
    if rearms:
        assert ctx.sent == [{"nftables": [METAINFO, {"add": element(timeout=7, expires=7)}]}]
    else:
        assert ctx.sent == [{"nftables": [METAINFO, {"add": element(timeout=7)},
                                          {"delete": element()}, {"add": element(timeout=7)}]}]


@pytest.mark.parametrize("release, rearms", [
    ("6.12.0", True), ("6.18.3-amd64", True), ("7.0.1", True), ("6.11.9-1-cloud", False),
    ("6.1.0-28-amd64", False), ("5.15.0", False), ("", False), ("x.y", False)])
def test_one_add_only_on_kernels_that_re_arm(release, rearms):
    assert nft.rearms(release) is rearms


def test_apply_is_one_transaction_with_metainfo_first_and_checks_rc():
    ctx = FakeNftables(protected=(22,))
    table = nft.Table(ctx, True)
    listing = {"list": {"set": {"family": "inet", "table": "gnocchi", "name": "protected_tcp"}}}
    listed, err = table.apply(listing)
    assert err == "" and listed["nftables"][1]["set"]["elem"] == [22]
    assert ctx.sent == [{"nftables": [METAINFO, listing]}]
    assert table.apply() == ({"nftables": []}, "")  # rc 0, no output
    failing = nft.Table(FakeNftables(fail_list="Error: No such file or directory"), True)
    assert failing.apply(listing) == ({}, "Error: No such file or directory")
    assert failing.unprotected([("tcp", 22)], 0.0) == ([], "Error: No such file or directory")


def test_a_failure_without_error_text_still_reads_as_a_failure():
    class Silent:
        def json_cmd(self, command):
            return 1, "", ""
    assert nft.Table(Silent(), True).apply() == ({}, "libnftables rc 1")

"""Review: the helper must go on serving whatever else the admin keeps in
the knocked sets. An element added by hand without a timeout (a standing
pass for one address: `nft add element inet gnocchi knocked4 { A . tcp . 22 }`)
is listed by nft -j as a bare {"concat": [...]}, not {"elem": {...}}; a
helper that reads knocked4 (branch `helper`'s start-up probe does) must not
die on it, or no knock opens anything until the element is gone."""
import json

import pytest

from support import STATUS, Helper, Net, load_table, request


@pytest.fixture
def server(tmp_path):
    with Net("rh") as net:
        load_table(net.server, tmp_path)
        yield net.server


def test_a_standing_element_without_a_timeout_does_not_stop_the_helper(server):
    server.nft("add", "element", "inet", "gnocchi", "knocked4", "{ 198.18.7.7 . tcp . 22 }")
    helper = Helper(server)
    try:
        assert helper.send(request("198.18.1.1", 22)) == [STATUS["OK"]], helper.log.read_text()
        assert helper.send(request("198.18.1.1", 22)) == [STATUS["OK"]], helper.log.read_text()
    finally:
        helper.close()
    listed = json.loads(server.nft("-j", "list", "set", "inet", "gnocchi", "knocked4").stdout)
    elems = [e for item in listed["nftables"] for e in item.get("set", {}).get("elem", [])]
    assert {"concat": ["198.18.7.7", "tcp", 22]} in elems  # the admin's, untouched
    assert [e["elem"]["val"]["concat"] for e in elems if "elem" in e] == [["198.18.1.1", "tcp", 22]]

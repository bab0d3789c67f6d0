"""gnocchi doctor's reading of the admin's own rules (gnocchi/admin/chains.py: reach): would a
knock, a new UDP datagram to the knock port from anywhere, get through each input chain
that is not gnocchi's? Each ruleset is loaded into a real kernel (a test namespace) and
read back with `nft -j`, exactly as doctor reads it.
"""
import json

import pytest

from gnocchi.admin import chains
from support import TABLE_FILE, Net

PORT = 40123


@pytest.fixture(scope="module")
def host():
    with Net("dr") as net:
        net.server.nft("-f", str(TABLE_FILE))  # gnocchi's own table is never judged
        yield net.server


def verdicts(host, rules: str) -> dict:
    host.run(["nft", "-f", "-"], input=rules)
    try:
        listing = json.loads(host.nft("-j", "list", "ruleset").stdout)["nftables"]
    finally:
        for line in host.nft("list", "tables").stdout.splitlines():
            if line != "table inet gnocchi":
                host.nft("delete", *line.split())
    found = chains.reach([o for o in listing if "metainfo" not in o], PORT)
    return {" ".join(k): v[0] for k, v in found.items()}


def chain(policy: str, *rules: str, family="inet", name="filter") -> str:
    body = "\n".join(rules)
    return (f"table {family} {name} {{\n chain input {{\n  type filter hook input priority 0;"
            f" policy {policy};\n{body}\n }}\n}}\n")


CASES = [
    ("the usual default-drop server: ssh only",
     chain("drop", "ct state established,related accept", "iif lo accept",
           "tcp dport 22 accept"), "drop"),
    ("the knock port accepted",
     chain("drop", "ct state established,related accept", f"udp dport {PORT} accept"),
     "accept"),
    ("in a set, with a range",
     chain("drop", f"udp dport {{ 53, {PORT - 5}-{PORT + 5} }} accept"), "accept"),
    ("new connections to it accepted",
     chain("drop", f"ct state new udp dport {PORT} accept"), "accept"),
    ("all UDP accepted", chain("drop", "meta l4proto udp accept"), "accept"),
    ("only loopback accepted", chain("drop", "iif lo accept"), "drop"),
    ("UDP answered with ICMP",
     chain("accept", "tcp dport 22 accept", "meta l4proto udp reject"), "reject"),
    ("accepted in a chain it jumps to",
     "table ip f {\n chain knock { udp dport %d accept; }\n chain input {\n"
     "  type filter hook input priority 0; policy drop;\n  jump knock\n }\n}\n" % PORT,
     "accept"),
    ("accepted only from some sources",
     chain("drop", f"ip saddr 10.0.0.0/8 udp dport {PORT} accept"), "unknown"),
    ("an open firewall", chain("accept"), "accept"),
    ("another port's drop does not matter", chain("accept", "udp dport 53 drop"), "accept"),
]


@pytest.mark.parametrize("what,rules,expected", CASES, ids=[c[0] for c in CASES])
def test_reach(host, what, rules, expected):
    found = verdicts(host, rules)
    assert len(found) == 1, found
    assert list(found.values()) == [expected], (what, found)


def test_no_chain_but_gnocchis_means_nothing_to_judge(host):
    listing = json.loads(host.nft("-j", "list", "ruleset").stdout)["nftables"]
    assert chains.reach([o for o in listing if "metainfo" not in o], PORT) == {}

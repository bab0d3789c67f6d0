"""gnocchi.admin.chains, doctor's evaluator of the admin's own rules, without root:
would a knock (a new UDP datagram to the knock port, from anywhere) get through
each input chain that is not gnocchi's? Each case is a committed `nft -j list
ruleset` listing of real rules (tests/unit/fixtures/rulesets/; the kernel test
tests/integration/test_doctor_ruleset.py says they are what the kernel lists).
"""

import copy
import json
from pathlib import Path

import pytest

from gnocchi.admin import chains

FIXTURES = sorted((Path(__file__).parent / "fixtures" / "rulesets").glob("*.json"))


def load(path: Path) -> dict:
    return json.loads(path.read_text())


@pytest.mark.parametrize("path", FIXTURES, ids=lambda p: p.stem)
def test_reach(path):
    fixture = load(path)
    found = chains.reach(fixture["listing"], fixture["port"])
    assert len(found) == 1, found
    [(verdict, why)] = found.values()
    assert verdict == fixture["expected"], (fixture["what"], why)


def test_gnocchis_own_table_is_never_judged():
    listing = copy.deepcopy(load(FIXTURES[0])["listing"])
    for obj in listing:
        (inner,) = obj.values()
        inner["family"] = "inet"
        inner["name" if "table" in obj else "table"] = "gnocchi"
    assert chains.reach(listing, 40123) == {}


# ---- the forward path (tests/integration/test_forward_doctor.py: the kernel lists them so) ----

NATIVE = load(Path(__file__).parent / "fixtures" / "forward" / "native.json")["listing"]
GNOCCHI = [
    {
        "chain": {
            "family": "inet",
            "table": "gnocchi",
            "name": name,
            "handle": i,
            "type": kind,
            "hook": hook,
            "prio": prio,
            "policy": "accept",
        }
    }
    for i, (name, kind, hook, prio) in enumerate(
        (
            ("input", "filter", "input", -10),
            ("forward", "filter", "forward", -10),
            ("reach", "nat", "prerouting", -110),
        )
    )
]


@pytest.mark.parametrize(
    "proto, port, daddr, expected",
    [
        ("tcp", 22, "198.51.100.5", "accept"),
        ("tcp", 22, "2001:db8::5", "accept"),
        ("tcp", 23, "198.51.100.5", "drop"),
        ("tcp", 22, "198.51.100.6", "drop"),
        ("udp", 22, "198.51.100.5", "drop"),
    ],
)
def test_reach_through_a_forward_chain(proto, port, daddr, expected):
    import ipaddress

    found = chains.reach(NATIVE, port, proto, "forward", ipaddress.ip_address(daddr))
    assert list(found) == [("inet", "filter", "forward")]
    assert found[("inet", "filter", "forward")][0] == expected


def test_published_names_each_translated_port_and_where_it_goes():
    found = {(p.protos, p.ports, p.to) for p in chains.published(NATIVE)}
    assert found == {
        (("tcp",), (2222, 2223), "198.51.100.5:22"),
        (("tcp",), ((8000, 8010),), "198.51.100.6"),
        (("udp",), (5353,), "this host's port 53"),
        (("tcp", "udp"), None, "198.51.100.7"),  # by address: every port
    }
    assert all(
        p.where.startswith("inet filter pre (rule handle ") for p in chains.published(NATIVE)
    )


def test_published_leaves_gnocchis_own_translation_out():
    reach = [
        {
            "rule": {
                "family": "inet",
                "table": "gnocchi",
                "chain": "reach",
                "handle": 1,
                "expr": [{"dnat": {"family": "ip", "addr": {"map": {}}}}],
            }
        }
    ]
    assert chains.published(GNOCCHI + reach) == []


def test_before_names_their_chains_that_the_kernel_runs_first():
    assert chains.before(NATIVE + GNOCCHI) == [("inet filter pre", "prerouting", -120, "nat", -110)]
    assert chains.before(NATIVE) == []  # no gnocchi table: nothing to come before

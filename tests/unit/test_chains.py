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

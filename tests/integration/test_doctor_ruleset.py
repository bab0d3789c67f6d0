"""gnocchi doctor's reading of the admin's own rules (gnocchi/admin/chains.py) is
unit-tested without root on committed `nft -j list ruleset` listings
(tests/unit/fixtures/rulesets/, tests/unit/test_chains.py). Here, the real kernel
says those listings are what it lists: each fixture's rules are loaded into a
test namespace beside gnocchi's own table and read back with `nft -j`, exactly
as doctor reads them.

A new case: a fixture file with "what", "rules", "expected" and "port"; then
    GNOCCHI_WRITE_FIXTURES=1 bash tests/run tests/integration/test_doctor_ruleset.py
fills in its "listing" from the kernel (CONTRIBUTING.md, "Test vectors").
"""

import json
import os
from pathlib import Path

import pytest

from gnocchi.admin import chains
from support import TABLE_FILE, Net

FIXTURES = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "rulesets"
PORT = 40123


@pytest.fixture(scope="module")
def host():
    with Net("dr") as net:
        net.server.nft("-f", str(TABLE_FILE))  # gnocchi's own table is never judged
        yield net.server


def listed(host, rules: str) -> list[dict]:
    """The admin's objects in `nft -j list ruleset` once rules are loaded (not
    metainfo, not table inet gnocchi), as doctor reads them."""
    host.run(["nft", "-f", "-"], input=rules)
    try:
        listing = json.loads(host.nft("-j", "list", "ruleset").stdout)["nftables"]
    finally:
        for line in host.nft("list", "tables").stdout.splitlines():
            if line != "table inet gnocchi":
                host.nft("delete", *line.split())
    return [o for o in listing if "metainfo" not in o and not ours(o)]


def ours(obj: dict) -> bool:
    (inner,) = obj.values()
    return (inner.get("family"), inner.get("table", inner.get("name"))) == ("inet", "gnocchi")


def without_handles(value):
    """Handles number objects in the order a namespace made them: not part of a rule."""
    if isinstance(value, dict):
        return {k: without_handles(v) for k, v in value.items() if k != "handle"}
    if isinstance(value, list):
        return [without_handles(v) for v in value]
    return value


@pytest.mark.parametrize("path", sorted(FIXTURES.glob("*.json")), ids=lambda p: p.stem)
def test_the_fixture_is_what_the_kernel_lists(host, path):
    fixture = json.loads(path.read_text())
    assert fixture["port"] == PORT
    now = listed(host, fixture["rules"])
    if os.environ.get("GNOCCHI_WRITE_FIXTURES") == "1":
        fixture["listing"] = now
        path.write_text(json.dumps(fixture, indent=1) + "\n")
    assert without_handles(now) == without_handles(fixture["listing"]), (
        f"{path.name} is not what the kernel lists for its rules: if the rules or nft "
        "changed, GNOCCHI_WRITE_FIXTURES=1 rewrites it"
    )


def test_no_chain_but_gnocchis_means_nothing_to_judge(host):
    listing = json.loads(host.nft("-j", "list", "ruleset").stdout)["nftables"]
    assert chains.reach([o for o in listing if "metainfo" not in o], PORT) == {}

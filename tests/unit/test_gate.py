"""gnocchi/admin/gate.py on committed `nft -j` listings (tests/unit/tables/, made by
make.py there): the live table is compared with what gnocchi loads by its rules,
not its name, and the probes find a gate that no longer drops strangers."""

import json
import pathlib

import pytest

from gnocchi.admin import gate

TABLES = pathlib.Path(__file__).parent / "tables"


def listing(name: str) -> list:
    return json.loads((TABLES / f"{name}.json").read_text())["nftables"]


EXPECTED = listing("shipped")


def test_what_gnocchi_loads_matches_itself_and_stops_every_stranger():
    assert gate.differences(EXPECTED, EXPECTED) == []
    assert gate.unguarded(EXPECTED) == []


@pytest.mark.parametrize(
    "name, difference",
    [
        ("flushed-chain", "chain input: 5 of its 5 rules missing"),
        ("flushed-table", "chain admit: 4 of its 4 rules missing"),
        ("rule-deleted", "chain admit: 1 of its 4 rules missing"),
        ("accept-inserted", "chain input: 1 rule added"),
        ("dormant", "table flags"),
        ("no-tcp-gate", "chain input: 1 of its 5 rules missing"),
        ("forward-flushed", "chain forward: 1 of its 1 rules missing"),
        ("translated-accept-inserted", "chain translated: 1 rule added"),
        ("no-forward-chain", "chain forward is missing"),
    ],
)
def test_an_emptied_or_bypassed_gate_differs_and_lets_strangers_in(name, difference):
    live = listing(name)
    assert any(d.startswith(difference) for d in gate.differences(live, EXPECTED)), (
        gate.differences(live, EXPECTED)
    )
    assert gate.unguarded(live), f"{name}: the probes found no stranger getting in"


def test_a_deleted_set_differs_even_where_the_gate_still_holds():
    live = listing("set-deleted")
    assert "set knock_sites6 is missing" in gate.differences(live, EXPECTED)
    assert gate.unguarded(live) == []


def test_set_elements_and_counters_are_state_not_definition():
    live = json.loads(json.dumps(EXPECTED))
    for obj in live:
        if "set" in obj:
            obj["set"]["elem"] = [2222, 443] if obj["set"]["name"] == "protected_tcp" else []
        if "rule" in obj:
            obj["rule"]["handle"] += 100
    assert gate.differences(live, EXPECTED) == []


def test_rules_in_another_order_differ():
    live = json.loads(json.dumps(EXPECTED))
    admit = [i for i, o in enumerate(live) if o.get("rule", {}).get("chain") == "admit"]
    live[admit[0]], live[admit[-1]] = live[admit[-1]], live[admit[0]]
    assert gate.differences(live, EXPECTED) == ["chain admit: rules in another order"]
    # The drop now comes first: strangers are still dropped (and every knock with
    # them), so only the comparison sees it.
    assert gate.unguarded(live) == []


def test_the_missing_rule_is_named_by_what_gets_through():
    found = gate.unguarded(listing("no-tcp-gate"))
    assert all(line.startswith("a TCP") for line in found), found
    assert (
        "a TCP SYN to a protected port (IPv4, conntrack new): passes chain input "
        "(policy accept)" in found
    )
    assert "a TCP SYN to a protected port (IPv6, conntrack established)" in " ".join(found)


def test_an_accept_for_one_address_opens_the_gate_for_that_family():
    found = gate.unguarded(listing("accept-inserted"))
    assert found and all("IPv4" in line and "accepted in chain input" in line for line in found)


def test_what_a_probe_cannot_know_counts_as_letting_it_in():
    assert gate.unguarded(listing("lo-exempt")), "iifname lo: the probe's interface is unknown"


def test_logging_and_counting_before_the_drop_keep_the_gate():
    assert gate.unguarded(listing("counted")) == []


def test_a_statement_the_probes_do_not_know_is_not_trusted():
    live = json.loads(json.dumps(EXPECTED))
    for obj in live:
        if obj.get("rule", {}).get("chain") == "admit" and obj["rule"]["expr"] == [{"drop": None}]:
            obj["rule"]["expr"] = [{"queue": {"num": 1}}]
    found = gate.unguarded(live)
    assert found and all(
        "cannot tell (a queue statement in chain input)" in line
        or "cannot tell (a queue statement in chain forward)" in line
        for line in found
    ), found


def test_a_table_without_an_input_chain_guards_nothing():
    live = [o for o in EXPECTED if "chain" not in o or o["chain"].get("hook") != "input"]
    assert all(
        line.endswith("no chain of table inet gnocchi hooks input") for line in gate.unguarded(live)
    )


def test_an_emptied_forward_chain_lets_in_only_what_a_dnat_forwards():
    found = gate.unguarded(listing("forward-flushed"))
    assert found and all(
        "forwarded to another host after a DNAT): passes chain forward (policy accept)" in line
        for line in found
    ), found
    assert len(found) == len([p for p in gate.probes() if p.hook == "forward"])


def test_a_table_without_a_forward_chain_guards_no_published_port():
    found = gate.unguarded(listing("no-forward-chain"))
    assert found and all(
        line.endswith("no chain of table inet gnocchi hooks forward") for line in found
    ), found


def test_a_redirected_connection_is_judged_by_the_port_the_client_sent_it_to():
    # An accept for one address, inserted where translated connections are judged:
    # probes redirected to this host and forwarded after a DNAT get in, others not.
    found = gate.unguarded(listing("translated-accept-inserted"))
    assert found and all(
        "IPv4" in line
        and "accepted in chain translated" in line
        and ("redirected" in line or "forwarded" in line)
        for line in found
    ), found


def test_other_tables_are_neither_compared_nor_probed():
    other = [
        {"table": {"family": "inet", "name": "filter", "handle": 9}},
        {
            "chain": {
                "family": "inet",
                "table": "filter",
                "name": "input",
                "handle": 1,
                "type": "filter",
                "hook": "input",
                "prio": 0,
                "policy": "drop",
            }
        },
    ]
    assert gate.differences(EXPECTED + other, EXPECTED) == []
    assert gate.unguarded(listing("flushed-chain") + other)


def test_summary_names_the_first_few_and_counts_the_rest():
    assert gate.summary(["a", "b", "c", "d", "e"]) == "a; b; c (and 2 more)"
    assert gate.summary(["a"]) == "a"

"""`gnocchi doctor` on a server that publishes hosts behind it (tests/support/forward.py:
Docker's rules by iptables-nft, a table shaped like Podman's, the admin's port forward,
gnocchi's own [forwards]), on the real kernel: it names what it can see of the forward
path, each with its fix.
"""

import json
import os
from pathlib import Path

import pytest
from test_doctor_ruleset import listed, without_handles

from gnocchi.admin import doctor, nft_table
from support import TABLE_FILE, Keys, Net, inside, write_config
from support.forward import (
    DOCKER_OPEN,
    DOCKER_TCP,
    DOCKER_UDP,
    FORWARD_TCP,
    PODMAN_TCP,
    VM_OPEN,
    VM_TCP,
    Lab,
)

EARLY = (
    """
table inet early {
    chain pre {
        type nat hook prerouting priority dstnat - 20; policy accept;
        tcp dport %d dnat ip to 198.51.100.7:22
    }
    chain accepting {
        type filter hook forward priority filter - 20; policy accept;
        ct state established,related accept
    }
}
"""
    % FORWARD_TCP
)


@pytest.fixture(scope="module")
def lab(tmp_path_factory):
    d = tmp_path_factory.mktemp("doctor")
    with Lab("fd") as lab:
        lab.publish(vm_allowed=False)  # Docker's FORWARD policy drops what goes to the VM
        lab.config = write_config(d, Keys(d), "/nonexistent", extra=lab.forwards())
        with inside(lab.server):
            nft_table.load_wanted(nft_table.wanted(str(lab.config), str(TABLE_FILE)))
        yield lab


def findings(lab) -> dict[str, doctor.Finding]:
    d = doctor.Doctor(str(lab.config), str(TABLE_FILE))
    with inside(lab.server):
        d.files()
        d.armed()
        d.forward_path()
    return {f.what: f for f in d.findings}


def named(found: dict, start: str) -> doctor.Finding:
    hits = [f for what, f in found.items() if what.startswith(start)]
    assert len(hits) == 1, (start, list(found))
    return hits[0]


def test_doctor_says_when_the_kernel_does_not_forward(lab):
    lab.server.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=0"])
    try:
        found = findings(lab)
    finally:
        lab.server.run(["sysctl", "-q", "-w", "net.ipv4.ip_forward=1"])
    off = named(found, "the kernel forwards IPv4")
    assert not off.ok and not off.warn and "net.ipv4.ip_forward is 0" in off.detail
    assert off.fix.startswith("sysctl -w net.ipv4.ip_forward=1")
    assert named(found, "the kernel forwards IPv6").ok
    assert named(findings(lab), "the kernel forwards IPv4").ok


def test_doctor_names_each_published_port_and_whether_gnocchi_guards_it(lab):
    found = findings(lab)
    for port, proto in (
        (DOCKER_TCP, "tcp"),
        (DOCKER_UDP, "udp"),
        (PODMAN_TCP, "tcp"),
        (VM_TCP, "tcp"),
    ):
        assert named(found, f"{port}/{proto} (published").ok
    for port, by in ((DOCKER_OPEN, "by ip nat DOCKER)"), (VM_OPEN, "by inet portfwd pre)")):
        open_ = named(found, f"{port}/tcp (published")
        assert not open_.ok and open_.warn and by in open_.what, open_
        assert open_.fix == f"gnocchi protect {port}/tcp"
        assert "open to everyone" in open_.detail


def test_doctor_names_a_chain_of_theirs_that_drops_a_forward(lab):
    # Docker's FORWARD policy is drop: gnocchi's forwards to the VM need an accept there.
    found = findings(lab)
    dropped = named(
        found, f"ip filter FORWARD lets forwards.vm-ssh through (tcp to {lab.vm.ip}:22)"
    )
    assert not dropped.ok and "iptables -I DOCKER-USER -d " + lab.vm.ip in dropped.fix
    assert named(
        found, f"inet netavark FORWARD lets forwards.vm-ssh through (tcp to {lab.vm.ip}:22)"
    ).ok  # Podman's accepts: policy accept
    for way in ("-i", "-o"):
        lab.server.run(["iptables", "-w", "-I", "DOCKER-USER", way, "veth-vm", "-j", "ACCEPT"])
    try:
        allowed = named(findings(lab), "ip filter FORWARD lets forwards.vm-ssh through (tcp")
    finally:
        for way in ("-i", "-o"):
            lab.server.run(["iptables", "-w", "-D", "DOCKER-USER", way, "veth-vm", "-j", "ACCEPT"])
    assert allowed.ok or allowed.warn  # an interface the evaluator cannot know


def test_doctor_names_their_chains_that_run_before_gnocchis(lab):
    assert not [w for w in findings(lab) if "runs before gnocchi's" in w]  # Docker, Podman
    lab.server.run(["nft", "-f", "-"], input=EARLY)
    try:
        found = findings(lab)
    finally:
        lab.server.nft("delete", "table", "inet", "early")
    nat = named(found, "inet early pre (nat, prerouting, priority -120) runs before gnocchi's")
    assert not nat.ok and "forwards.vm-ssh's port first" in nat.detail
    accepts = named(found, "inet early accepting (filter, forward, priority -20) runs before")
    assert accepts.ok and "do not skip gnocchi's chain" in accepts.detail


NATIVE = Path(__file__).resolve().parents[1] / "unit" / "fixtures" / "forward" / "native.json"


def test_the_forward_fixture_is_what_the_kernel_lists():
    # tests/unit/test_chains.py reads it; GNOCCHI_WRITE_FIXTURES=1 writes it anew.
    fixture = json.loads(NATIVE.read_text())
    with Net("fx") as net:
        net.server.nft("-f", str(TABLE_FILE))
        now = listed(net.server, fixture["rules"])
    if os.environ.get("GNOCCHI_WRITE_FIXTURES") == "1":
        fixture["listing"] = now
        NATIVE.write_text(json.dumps(fixture, indent=1) + "\n")
    assert without_handles(now) == without_handles(fixture["listing"])

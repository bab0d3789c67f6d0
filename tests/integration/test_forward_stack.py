"""Knock-to-reach end to end: the real `gnocchi-knock --proxy` (as ssh's ProxyCommand
runs it) knocks the real verifier, whose config has [forwards], and the real helper;
the table is what gnocchi's loader makes of that config. The forger and neighbour
attacks of tests/integration/test_knock_lockouts.py, against a forward.

    client ns 198.18.n.1 / fd00:198:18:n::1     server ns .2 / ::2 (verifier, helper, table)
      gnocchi-knock --proxy SERVER 2222            [forwards.vm-ssh] 2222 -> vm:22, [vm]:22
      a forger: SYNs from alice's address          [forwards.vm-udp] 2253/udp -> vm:60001
      neighbours: /64s of alice's /48 (raw)      vm ns 198.19.n.130: a service that names it
"""

from __future__ import annotations

import os
import random
import subprocess
import time

import pytest
from scapy.layers.inet import IP, TCP
from scapy.layers.inet6 import IPv6, UDP
from test_knock_lockouts import Paced, knocks, neighbours

from gnocchi.admin import nft_table
from gnocchi.shared import keys
from support import PYTHON, REPO, TABLE_FILE, Daemon, Helper, Keys, inside, write_config
from support.forward import FORWARD_TCP, FORWARD_UDP, Banner, Lab


class Stack:
    """The server of a Lab with the real verifier and helper, and alice's and bob's keys."""

    def __init__(self, lab: Lab, d):
        self.lab, self.d = lab, d
        self.k = Keys(d)
        self.helper = Helper(lab.server, peer_user="root")
        self.files = {}
        for name in ("alice", "bob"):
            self.files[name] = d / f"{name}.key"
            keys.write_secret(self.files[name], self.k.seeds[name])
        clients = f"""
[clients.alice]
public_key = "{self.k.public("alice")}"
allow = ["vm-ssh", "vm-udp"]
default = "open {FORWARD_TCP}"

[clients.bob]
public_key = "{self.k.public("bob")}"
allow = ["22"]
"""
        self.config = write_config(
            d,
            self.k,
            str(self.helper.path),
            clients=clients,
            extra=f'server_addresses = ["{lab.server.ip}"]\n' + lab.forwards(),
        )
        with inside(lab.server):
            nft_table.load_wanted(nft_table.wanted(str(self.config), str(TABLE_FILE)))
        self.verifier = Daemon(lab, self.config, f"[::]:{self.k.port}", stderr=d / "verifier.err")

    def knock(
        self, name: str, *options: str, v6=False, port: str | None = None
    ) -> subprocess.CompletedProcess:
        """The real gnocchi-knock -v OPTIONS SERVER [PORT], to the server's IPv4 or IPv6
        address (signing the IPv4 one, as protocol v1 does)."""
        server = self.lab.server.ip6 if v6 else self.lab.server.ip
        return self.lab.client.run(
            [
                PYTHON,
                "-m",
                "gnocchi.client.knock",
                "-v",
                "--server-key-file",
                str(self.k.server_file),
                "--client-key-file",
                str(self.files[name]),
                "--state-dir",
                str(self.d / f"{name}-state"),
                "--sign-ip",
                self.lab.server.ip,
                *options,
                server,
                *([port] if port else []),
            ],
            check=False,
            input="hello",
            cwd=REPO,
            timeout=30,
            env=dict(os.environ, PYTHONPATH=str(REPO)),
        )

    def proxy(self, name="alice", v6=False) -> subprocess.CompletedProcess:
        return self.knock(name, "--proxy", v6=v6, port=str(FORWARD_TCP))

    def close(self):
        self.verifier.stop()
        self.helper.close()


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("stack")
    with Lab("fs") as lab, Banner(lab.vm):
        s = Stack(lab, d)
        try:
            yield s
        finally:
            s.close()


def banner(stack: Stack) -> str:
    return stack.lab.vm.name + "\nhello"


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_the_proxy_reaches_the_host_behind_a_forward_on_one_knock(stack, v6):
    result = stack.proxy(v6=v6)
    assert result.returncode == 0 and result.stdout == banner(stack), result.stderr
    assert knocks(result) == 1, result.stderr
    assert stack.verifier.of("accepted")[-1]["GNOCCHI_REQUEST"] == f"open {FORWARD_TCP}/tcp"


def test_a_client_whose_allow_list_lacks_the_forward_is_refused(stack):
    result = stack.knock("bob", "--open", str(FORWARD_TCP))
    assert result.returncode == 0, result.stderr  # a knock is never answered
    refused = stack.verifier.wait_events("refused", 1)[-1]
    assert refused["GNOCCHI_CLIENT"] == "bob"
    assert f"{FORWARD_TCP}/tcp is not in this client's allow list" in refused["GNOCCHI_REASON"]


def test_a_knock_from_ipv6_for_a_forward_with_only_an_ipv4_target_is_refused(stack):
    before = len(stack.verifier.of("refused"))
    result = stack.knock("alice", "--open", f"{FORWARD_UDP}/udp", v6=True)
    assert result.returncode == 0, result.stderr
    refused = stack.verifier.wait_events("refused", before + 1)[-1]
    assert refused["GNOCCHI_CLIENT"] == "alice"
    assert refused["GNOCCHI_REASON"] == (
        f"forward vm-udp ({FORWARD_UDP}/udp) reaches only {stack.lab.vm.ip}:60001: knock over IPv4"
    )


@pytest.mark.parametrize("rate", [200, 2000])
def test_a_forger_sending_syns_from_the_clients_address_does_not_keep_it_from_a_forward(
    stack, tmp_path, rate
):
    lab = stack.lab
    ports = random.Random(rate).sample(range(1024, 65536), 4000)
    syns = [
        IP(src=lab.client.ip, dst=lab.server.ip)
        / TCP(sport=p, dport=FORWARD_TCP, flags="S", seq=p * 7919)
        for p in ports
    ]
    forger = Paced(lab.client, syns, rate, 2.5, tmp_path / "syns")
    time.sleep(0.5)
    result = stack.proxy()
    sent = forger.sent()
    assert sent >= rate * 2, f"the forger sent {sent} SYNs"
    assert result.returncode == 0 and result.stdout == banner(stack), result.stderr
    assert knocks(result) == 1, "alice got in on her first knock"


def test_a_neighbour_in_the_same_48_cannot_keep_a_client_from_a_forward(stack, tmp_path):
    # alice connected through the forward (over IPv6): her /64 is noted as one that
    # connected with a knock, so her /48 budget at the knock port is her own. 32 /64s
    # of her /48, each under its own limit, drain the strangers' /48 budget.
    lab = stack.lab
    lab.server.nft("flush", "set", "inet", "gnocchi", "knockers6")
    first = stack.proxy(v6=True)
    assert first.returncode == 0, first.stderr
    site, flooders = neighbours(lab, 32)
    flood = Paced(
        lab.client,
        [
            IPv6(src=ip, dst=lab.server.ip6) / UDP(sport=5000, dport=stack.k.port) / b"x"
            for ip in flooders
        ],
        32 * 15,
        4,
        tmp_path / "flood",
    )
    time.sleep(1.5)  # the /48's burst is gone
    result = stack.proxy(v6=True)
    sent = flood.sent()
    assert sent >= 32 * 15 * 3
    assert result.returncode == 0 and result.stdout == banner(stack), result.stderr
    assert knocks(result) == 1, result.stderr

"""`gnocchi remove-client NAME` withdraws the openings that client's knocks
left pending, on the real kernel: the removed client cannot use a knock it
made before, not even through a SYN it parked before the removal; other
clients' openings stay. Each opening carries its client's name (the
helper's nft comment), also through a reload that replaces the table.

The command runs in the server namespace, on the table there; no systemd
runs the verifier here, so it says so and edits only the config."""

from __future__ import annotations

import time

import pytest
from scapy.layers.inet import IP, TCP

from gnocchi.admin import nft_table
from support import (
    PYTHON,
    REPO,
    EchoServices,
    Helper,
    Keys,
    Net,
    elements,
    inside,
    load_table,
    request,
    write_config,
)
from test_gate_attacks import OPTIONS, connects_from, send_raw

OK = 0


@pytest.fixture
def server(tmp_path):
    with Net("rc") as net:
        load_table(net.server, tmp_path)
        bob_ip = net.client.ip.rsplit(".", 1)[0] + ".3"
        net.client.run(["ip", "addr", "add", f"{bob_ip}/24", "dev", "gveth0"])
        helper = Helper(net.server)
        try:
            with EchoServices(net.server, tcp_ports=(22,)):
                yield net, helper, bob_ip, write_config(tmp_path, Keys(tmp_path), "/run/none")
        finally:
            helper.close()


def remove_client(net, config, name):
    return net.server.run(
        [PYTHON, "-m", "gnocchi.admin", "remove-client", "--config", str(config), name],
        check=False,
        cwd=REPO,
    )


def test_remove_client_withdraws_its_pending_openings_and_no_one_elses(server):
    net, helper, bob_ip, config = server
    assert helper.send(
        request(net.client.ip, 22, client="alice"), request(bob_ip, 22, client="bob")
    ) == [OK, OK]
    result = remove_client(net, config, "alice")
    assert result.returncode == 0, result.stderr
    assert "withdrew the 1 opening pending for alice" in result.stderr
    assert [e["val"]["concat"][0] for e in elements(net.server, "knocked4")] == [bob_ip]
    assert connects_from(net.client, net.client.ip, net.server.ip, 22, [41000]) == set()
    assert connects_from(net.client, bob_ip, net.server.ip, 22, [41001]) == {41001}


def test_a_syn_a_removed_client_parked_before_does_not_connect(server):
    # A SYN the server's stack drops silently (a TCP-MD5 option) leaves a flow
    # the gate let in. Within the window, a SYN on that flow connects (the knock
    # waits for a handshake); once the client is removed, it does not.
    net, helper, _, config = server
    src, dst = net.client.ip, net.server.ip

    def park(sport):
        assert helper.send(request(src, 22, client="alice")) == [OK]
        send_raw(
            net.client,
            [
                IP(src=src, dst=dst)
                / TCP(sport=sport, dport=22, flags="S", seq=1000, options=OPTIONS["md5"])
            ],
        )

    park(41100)
    assert connects_from(net.client, src, dst, 22, [41100]) == {41100}  # the control
    park(41101)
    assert remove_client(net, config, "alice").returncode == 0
    assert connects_from(net.client, src, dst, 22, [41101]) == set()


def test_without_a_table_or_an_opening_remove_client_says_so(server):
    net, _, _, config = server
    result = remove_client(net, config, "bob")
    assert result.returncode == 0 and "no opening pending for bob" in result.stderr
    net.server.nft("delete", "table", "inet", "gnocchi")
    result = remove_client(net, config, "alice")
    assert result.returncode == 0 and "no table loaded: nothing pending" in result.stderr


def test_an_opening_keeps_its_clients_name_through_a_reload_that_replaces_the_table(
    server, tmp_path
):
    net, helper, _, config = server
    assert helper.send(request(net.client.ip, 22, client="alice")) == [OK]
    changed = tmp_path / "changed.nft"
    changed.write_text((tmp_path / "gnocchi.nft").read_text().replace("timeout 10s", "timeout 11s"))
    with inside(net.server):
        loaded = nft_table.load(str(changed))
    assert (loaded.how, loaded.kept) == ("replaced", 1)
    [elem] = elements(net.server, "knocked4")
    assert elem["comment"] == "alice"
    time.sleep(0.1)
    assert "withdrew the 1 opening" in remove_client(net, config, "alice").stderr

"""No client can hurt another. A client (a stolen key) floods the
real verifier, which talks to the real helper and the real table, armed as
`gnocchi table load` arms it (the knock port's per-source limit on); another
client's knock still opens on its first try, and what of the flood the table
lets through costs a bounded number of journal entries and counter writes."""

from __future__ import annotations

import time

import pytest
from support import PYTHON, knock, send_paced, write_config

from gnocchi.server import verifier

pytestmark = pytest.mark.netns

SEND_FROM = """
import socket, sys
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((sys.argv[1], 0)); s.sendto(bytes.fromhex(sys.stdin.read()), (sys.argv[2], int(sys.argv[3])))
"""


def test_a_flooding_client_does_not_keep_another_out(daemons, net, k, tmp_path, real_helper):
    cfg = write_config(
        tmp_path,
        k,
        str(real_helper),
        clients=f"""
[clients.alice]
public_key = "{k.public("alice")}"
allow = ["22"]

[clients.bob]
public_key = "{k.public("bob")}"
allow = ["22"]
""",
    )
    d = daemons(
        net,
        cfg,
        f"{net.server.ip}:{k.port}",
        "--summary-interval",
        "1",
        stderr=tmp_path / "daemon.err",
    )
    # As armed for real: without the table's limit, 2,000 signed knocks a second
    # can fill the socket's queue on a busy machine before bob's arrives.
    net.server.nft("add", "element", "inet", "gnocchi", "knock_port", f"{{ {k.port} }}")
    base = time.time_ns()
    # Alice: 61 knocks for port 22, then 1500 for a port she may not open.
    flood = [knock(k, "alice", base + i, b"open 22", net.server.ip) for i in range(61)]
    flood += [knock(k, "alice", base + 100 + i, b"open 23", net.server.ip) for i in range(1500)]
    bob_ip = net.client.ip.rsplit(".", 1)[0] + ".3"
    net.client.run(["ip", "addr", "add", f"{bob_ip}/24", "dev", "gveth0"])
    started = time.monotonic()
    # A flood of 2,000 knocks a second.
    sender = send_paced(net.client, net.server.ip, k.port, flood, wait=False)
    time.sleep(0.3)
    # Bob, from another address, while alice floods over her limit: opens at once.
    net.client.run(
        [PYTHON, "-c", SEND_FROM, bob_ip, net.server.ip, str(k.port)],
        input=knock(k, "bob", base, b"open 22", net.server.ip).hex(),
    )
    assert sender.wait(timeout=30) == 0
    d.wait_for(
        lambda _: any(e.get("GNOCCHI_CLIENT") == "bob" for e in d.of("accepted")),
        what="bob's knock",
    )
    [bob] = [e for e in d.of("accepted") if e["GNOCCHI_CLIENT"] == "bob"]
    assert bob["GNOCCHI_HELPER_STATUS"] == "OK" and bob["GNOCCHI_SOURCE_IP"] == bob_ip
    listed = net.server.nft("list", "set", "inet", "gnocchi", "knocked4").stdout
    assert f"{bob_ip} . tcp . 22" in listed
    # Each of alice's knocks the verifier read is let in or counted, nothing else:
    # one entry (and one counter write) per knock let in, at most the burst and
    # one a second since.
    seconds = time.monotonic() - started
    alice = [e for e in d.events() if e.get("GNOCCHI_CLIENT") == "alice"]
    assert verifier.CLIENT_BURST <= len(alice) <= verifier.CLIENT_BURST + seconds + 1
    assert all(e["GNOCCHI_EVENT"] == "accepted" for e in alice)
    # The table lets 100 at once through (then 20 a second): all but the 20 the
    # verifier lets in are counted as rate-limited.
    d.wait_for(
        lambda _: (
            sum(int(s.get("GNOCCHI_DROPPED_RATE_LIMITED", 0)) for s in d.of("dropped-summary"))
            >= 50
        ),
        what="alice's excess counted",
    )
    assert all(
        "alice" in s["MESSAGE"]
        for s in d.of("dropped-summary")
        if "GNOCCHI_DROPPED_RATE_LIMITED" in s
    )


def test_one_address_gets_exactly_its_burst_whatever_the_keys_it_knocks_with(
    daemons, net, k, tmp_path, helper
):
    # Three keys behind one address (clients behind one NAT, or stolen keys),
    # each under its own client limit (19 of 20): the address's limit decides,
    # and lets exactly its burst through (and one more each 2 s it lasts).
    clients = "".join(
        f'[clients.{name}]\npublic_key = "{k.public(name)}"\nallow = ["22"]\n'
        for name in ("alice", "bob", "mallory")
    )
    d = daemons(
        net,
        write_config(tmp_path, k, str(helper.path), clients=clients),
        f"{net.server.ip}:{k.port}",
        "--summary-interval",
        "1",
        stderr=tmp_path / "daemon.err",
    )
    base = time.time_ns()
    packets = [
        knock(k, name, base + i, b"open 22", net.server.ip)
        for i in range(19)
        for name in ("alice", "bob", "mallory")
    ]
    started = time.monotonic()
    send_paced(net.client, net.server.ip, k.port, packets)

    def dropped(_=None) -> int:
        return sum(int(s.get("GNOCCHI_DROPPED_RATE_LIMITED", 0)) for s in d.of("dropped-summary"))

    d.wait_for(
        lambda _: len(d.of("accepted")) + dropped() >= len(packets),
        what="every knock decided or counted",
        timeout=20,
    )
    seconds = time.monotonic() - started
    accepted = len(d.of("accepted"))
    assert verifier.ADDRESS_BURST <= accepted <= verifier.ADDRESS_BURST + seconds / 2 + 1
    assert accepted + dropped() == len(packets)

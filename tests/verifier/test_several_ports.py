"""Several ports in one knock, against the real verifier, the real
root helper and the real table in network namespaces, with echo services
behind the ports.

`open 22 60001/udp` opens both in one knock: one TCP connection and one UDP
flow get through, once each. With one of its ports not allowed, or allowed
but not protected, nothing opens, and one entry names the whole request.
"""

from __future__ import annotations

import pytest

from support import (
    EchoServices,
    Helper,
    echoes,
    elements,
    knock,
    load_table,
    send_datagrams,
    tcp_connect,
    udp_socket,
    write_config,
)

# Protected: tcp 22, udp 60001 and 60003. Alice may open 60002/udp, which is
# not protected, and may not open 60003/udp, which is. Bob's empty knock is
# refused: the tests use it to know the verifier is done with alice's.
CLIENTS = """
[clients.alice]
public_key = "{alice}"
allow = ["22/tcp", "60001/udp", "60002/udp"]

[clients.bob]
public_key = "{bob}"
"""


@pytest.fixture
def stack(daemons, net, k, tmp_path):
    load_table(net.server, tmp_path, udp_ports=(60001, 60003))
    helper = Helper(net.server, peer_user="root")
    try:
        cfg = write_config(
            tmp_path,
            k,
            str(helper.path),
            clients=CLIENTS.format(alice=k.public("alice"), bob=k.public("bob")),
        )
        d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
        with EchoServices(net.server, tcp_ports=(22,), udp_ports=(60001, 60002, 60003)):
            yield d, helper
    finally:
        helper.close()


def knock_then_wait(net, k, d, data: bytes) -> list[dict]:
    """Alice's knock, then bob's: once both have their entry, every entry for
    alice's knock is there (the verifier settles a batch of knocks at a time,
    so bob's refusal may be written before alice's helper answer)."""
    send_datagrams(
        net,
        k.port,
        [knock(k, "alice", 1, data, net.server.ip), knock(k, "bob", 1, b"", net.server.ip)],
    )
    d.wait_for(
        lambda _: {e.get("GNOCCHI_CLIENT") for e in d.events()} >= {"alice", "bob"},
        what="alice's and bob's entries",
    )
    return [e for e in d.events() if e.get("GNOCCHI_CLIENT") == "alice"]


def knocked(net) -> list[tuple]:
    return sorted(tuple(e["val"]["concat"]) for e in elements(net.server, "knocked4"))


def closed(net) -> bool:
    """No new TCP connection to 22 and no new UDP flow to 60001 gets through."""
    with udp_socket(net.client, net.server.ip, 60001) as flow:
        return tcp_connect(net.client, net.server.ip, 22) is None and not echoes(flow)


def test_one_knock_opens_both_ports_once(stack, net, k):
    d, helper = stack
    assert closed(net)
    [entry] = knock_then_wait(net, k, d, b"open 22 60001/udp")
    assert entry["GNOCCHI_EVENT"] == "accepted" and entry["GNOCCHI_HELPER_STATUS"] == "OK"
    assert entry["GNOCCHI_REQUEST"] == "open 22/tcp 60001/udp"
    assert knocked(net) == [(net.client.ip, "tcp", 22), (net.client.ip, "udp", 60001)]
    conn = tcp_connect(net.client, net.server.ip, 22)
    flow = udp_socket(net.client, net.server.ip, 60001)
    try:
        assert conn is not None and echoes(conn)
        assert echoes(flow)
        assert closed(net)  # once each: no second connection, no other flow
        assert echoes(conn, b"still open") and echoes(flow, b"still open")
    finally:
        flow.close()
        if conn is not None:
            conn.close()


@pytest.mark.parametrize(
    "data, event, canonical, field, value",
    [
        (
            b"open 22 60003/udp",
            "refused",
            "open 22/tcp 60003/udp",
            "GNOCCHI_REASON",
            "60003/udp is not in this client's allow list (22/tcp, 60001/udp, 60002/udp)",
        ),
        (
            b"open 22 60001/udp 60002/udp",
            "helper-failed",
            "open 22/tcp 60001/udp 60002/udp",
            "GNOCCHI_HELPER_STATUS",
            "NOT_PROTECTED",
        ),
    ],
    ids=["not-allowed", "not-protected"],
)
def test_one_port_that_cannot_be_opened_opens_none(
    stack, net, k, data, event, canonical, field, value
):
    d, helper = stack
    [entry] = knock_then_wait(net, k, d, data)
    assert (entry["GNOCCHI_EVENT"], entry["GNOCCHI_REQUEST"], entry[field]) == (
        event,
        canonical,
        value,
    )
    assert knocked(net) == []
    if event == "refused":
        assert helper.log_lines() == []  # refused by the verifier: the helper never asked
    assert closed(net)
    with udp_socket(net.client, net.server.ip, 60003) as flow:
        assert not echoes(flow)

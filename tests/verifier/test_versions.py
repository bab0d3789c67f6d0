"""The real verifier with knock protocol v2 beside v1 (docs/PROTOCOL.md): both versions
on one socket, v1 turned off, a v2 knock over IPv6 with nothing configured, and a
server with one knock port per key. Socket-activated in a server namespace,
knocked from a client namespace, with a recording helper."""

from __future__ import annotations

import pytest

from support import Keys, knock, knock2, request, send_datagrams, write_config
from support.verifier import REPO  # noqa: F401 (the checkout the daemon runs)

V2 = 'private_key_file = "{k.private_file}"\n'


def start(daemons, net, k, tmp_path, helper, listen, extra=""):
    cfg = write_config(tmp_path, k, helper.path, extra=V2.format(k=k) + extra)
    return daemons(net, cfg, listen, "--summary-interval", "1", stderr=tmp_path / "daemon.err")


@pytest.fixture
def same_port(tmp_path) -> Keys:
    return Keys(tmp_path, same_port=True)


def dropped(d, reason: str) -> int:
    return sum(
        int(e.get(f"GNOCCHI_DROPPED_{reason.upper().replace('-', '_')}", 0))
        for e in d.of("dropped-summary")
    )


def test_v1_and_v2_knocks_are_accepted_on_one_socket(daemons, net, same_port, tmp_path, helper):
    k = same_port
    assert k.port == k.port2
    d = start(daemons, net, k, tmp_path, helper, f"{net.server.ip}:{k.port}")
    send_datagrams(
        net,
        k.port,
        [
            knock(k, "alice", 1, b"open 22", net.server.ip),
            knock2(k, "alice", 2, b"open 60001/udp", net.server.ip),
            knock2(k, "bob", 3, b"", net.server.ip),
            knock(k, "alice", 2, b"open 22", net.server.ip),
        ],
    )  # a replay
    accepted = d.wait_events("accepted", 3)
    assert "(knock protocol v1 and v2)" in d.of("started")[0]["MESSAGE"]
    assert [
        (e["GNOCCHI_CLIENT"], e["GNOCCHI_COUNTER"], e["GNOCCHI_PROTOCOL"]) for e in accepted
    ] == [("alice", "1", "1"), ("alice", "2", "2"), ("bob", "3", "2")]
    src = net.client.ip
    assert helper.messages == [
        request(src, 22, 6),
        request(src, 60001, 17),
        request(src, 443, 6, client="bob"),
    ]
    # One counter per client key, whichever version spent it.
    assert d.wait_events("replay", 1)[0]["GNOCCHI_CLAIMED_CLIENT"] == "alice"


def test_with_v1_off_only_v2_gets_in_and_no_v1_key_is_needed(daemons, net, k, tmp_path, helper):
    k.server_file.unlink()
    listen = [f"{net.server.ip}:{k.port2}"]
    d = start(daemons, net, k, tmp_path, helper, listen, extra="v1 = false\n")
    send_datagrams(
        net,
        k.port2,
        [
            knock(k, "alice", 1, b"open 22", net.server.ip),
            knock2(k, "alice", 2, b"open 22", net.server.ip),
        ],
    )
    accepted = d.wait_events("accepted", 1)
    assert "(knock protocol v2)" in d.of("started")[0]["MESSAGE"]
    assert accepted[0]["GNOCCHI_COUNTER"] == "2" and helper.messages == [
        request(net.client.ip, 22, 6)
    ]
    d.wait_for(lambda _: dropped(d, "magic") == 1, what="the v1 knock counted as magic")


def test_a_v2_knock_over_ipv6_opens_ipv6_with_nothing_configured(daemons, net, k, tmp_path, helper):
    """No server_addresses on the server, no sign_ip on the client: v2 signs the
    IPv6 address the knock was sent to, which the kernel reports (IPV6_PKTINFO)."""
    d = start(daemons, net, k, tmp_path, helper, [str(k.port), str(k.port2)])
    send_datagrams(
        net, k.port2, [knock2(k, "alice", 1, b"open 22", net.server.ip6)], to=net.server.ip6
    )
    send_datagrams(net, k.port2, [knock2(k, "bob", 2, b"", net.server.ip)])
    accepted = d.wait_events("accepted", 2)  # in either order: the first IPv6 datagram waits
    assert sorted(e["GNOCCHI_SOURCE_IP"] for e in accepted) == sorted(
        [net.client.ip6, net.client.ip]
    )
    assert sorted(helper.messages) == sorted(
        [request(net.client.ip6, 22), request(net.client.ip, 443, client="bob")]
    )


def test_server_addresses_of_either_family_bind_v2_knocks(daemons, net, k, tmp_path, helper):
    d = start(
        daemons,
        net,
        k,
        tmp_path,
        helper,
        [f"[::]:{k.port}", f"[::]:{k.port2}"],
        extra='server_addresses = ["2001:db8::7", "203.0.113.7"]\n',
    )
    send_datagrams(
        net,
        k.port2,
        [
            knock2(k, "alice", 1, b"open 22", net.server.ip6),  # no
            knock2(k, "alice", 2, b"open 22", "2001:db8::7"),
            knock2(k, "alice", 3, b"open 22", "203.0.113.7"),
        ],
        to=net.server.ip6,
    )
    assert [e["GNOCCHI_COUNTER"] for e in d.wait_events("accepted", 2)] == ["2", "3"]
    assert len(d.wait_events("signature", 1)) == 1


def test_each_key_on_its_own_port_and_either_version_on_either(daemons, net, k, tmp_path, helper):
    assert k.port != k.port2
    d = start(
        daemons,
        net,
        k,
        tmp_path,
        helper,
        [f"{net.server.ip}:{k.port}", f"{net.server.ip}:{k.port2}"],
    )
    send_datagrams(
        net,
        k.port,
        [
            knock(k, "alice", 1, b"open 22", net.server.ip),
            knock2(k, "alice", 2, b"open 22", net.server.ip),
        ],
    )
    send_datagrams(
        net,
        k.port2,
        [
            knock(k, "alice", 3, b"open 22", net.server.ip),
            knock2(k, "alice", 4, b"open 22", net.server.ip),
        ],
    )
    accepted = d.wait_events("accepted", 4)
    assert sorted(e["GNOCCHI_COUNTER"] for e in accepted) == ["1", "2", "3", "4"]


def test_a_missing_knock_port_socket_stops_the_verifier_with_the_unit_lines(
    daemons, net, k, tmp_path, helper
):
    cfg = write_config(tmp_path, k, helper.path, extra=V2.format(k=k))
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
    send_datagrams(net, k.port, [b"x"])  # activates it
    assert d.proc.wait(timeout=15) == 1
    assert (
        f"systemd passed 1 socket for 2 knock ports; gnocchi.socket needs exactly "
        f"ListenDatagram={k.port} ListenDatagram={k.port2}"
    ) in d.text()


def test_garbage_that_knows_the_public_key_costs_a_seal_check_and_is_counted(
    daemons, net, k, tmp_path, helper
):
    from gnocchi.shared import protocol

    d = start(
        daemons,
        net,
        k,
        tmp_path,
        helper,
        [f"{net.server.ip}:{k.port}", f"{net.server.ip}:{k.port2}"],
    )
    sealed = bytes(200)
    knows = (
        protocol.MAGIC2 + protocol.blake2b(sealed, 16, protocol.MAC1_PERSON, key=k.public2) + sealed
    )
    send_datagrams(net, k.port2, [protocol.MAGIC2 + bytes(200), knows, protocol.MAGIC2])
    d.wait_for(
        lambda _: (dropped(d, "mac1"), dropped(d, "seal"), dropped(d, "size")) == (1, 1, 1),
        what="one drop of each",
    )
    assert helper.messages == []

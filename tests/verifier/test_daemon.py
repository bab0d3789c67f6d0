"""The real verifier, socket-activated in a server namespace, knocked from a client namespace."""

from __future__ import annotations

import socket

from gnocchi.server import counters
from support import knock, request, send_datagrams, write_config


def start(daemons, net, k, tmp_path, helper, listen=None, extra="", clients=None, env=()):
    cfg = write_config(tmp_path, k, helper.path, extra=extra, clients=clients)
    listen = listen or f"{net.server.ip}:{k.port}"
    return daemons(
        net, cfg, listen, "--summary-interval", "1", stderr=tmp_path / "daemon.err", env=env
    )


def stored(tmp_path) -> dict[str, int]:
    """The verifier's counter store, as it loads: {client key hex: counter}."""
    store = counters.Store(str(tmp_path / "state")).load()
    return {key.hex(): counter for key, counter in store.counters.items()}


def test_valid_knocks_reach_the_helper_and_nothing_comes_back(daemons, net, k, tmp_path, helper):
    d = start(daemons, net, k, tmp_path, helper)
    packets = [
        knock(k, "alice", 1, b"open 22", net.server.ip),
        knock(k, "alice", 2, b"open 60001/udp", net.server.ip),
        knock(k, "bob", 7, b"", net.server.ip),
    ]  # empty: bob's default
    assert send_datagrams(net, k.port, packets, wait=0.5) == 0
    accepted = d.wait_events("accepted", 3)
    src = net.client.ip
    assert helper.messages == [
        request(src, 22, 6),
        request(src, 60001, 17),
        request(src, 443, 6, client="bob"),
    ]
    assert [
        (e["GNOCCHI_CLIENT"], e["GNOCCHI_REQUEST"], e["GNOCCHI_COUNTER"]) for e in accepted
    ] == [
        ("alice", "open 22/tcp", "1"),
        ("alice", "open 60001/udp", "2"),
        ("bob", "open 443/tcp", "7"),
    ]
    first = accepted[0]
    assert first["GNOCCHI_SOURCE_IP"] == net.client.ip
    assert first["GNOCCHI_CLIENT_KEY"] == k.public("alice")
    assert first["GNOCCHI_HELPER_STATUS"] == "OK"
    assert first["MESSAGE_ID"] != d.of("started")[0]["MESSAGE_ID"]
    assert stored(tmp_path) == {k.public("alice"): 2, k.public("bob"): 7}


def test_refusals_are_logged_and_never_reach_the_helper(daemons, net, k, tmp_path, helper):
    d = start(daemons, net, k, tmp_path, helper)
    other_key = bytes(range(32))
    good = knock(k, "alice", 5, b"open 22", net.server.ip)
    cases = [
        good,  # accepted (sets counter 5)
        good,  # the very same bytes again: counted as repeated, no check
        knock(k, "alice", 4, b"open 22", net.server.ip),  # replay: lower counter
        knock(k, "alice", 9, b"open 22", "198.18.200.200"),  # other server address
        knock(k, "alice", 10, b"open 22", net.server.ip, server_key=other_key),  # other key
        knock(k, "mallory", 1, b"open 22", net.server.ip),  # unknown client
        knock(k, "alice", 11, b"open 23", net.server.ip),  # port not allowed
        knock(k, "alice", 12, b"open 22/udp", net.server.ip),  # proto not allowed
        knock(k, "alice", 13, b"run reboot", net.server.ip),  # action not allowed
        knock(k, "alice", 14, b"\xff\x00open 22\x1b[31m", net.server.ip),  # garbage request
        b"\x00" * 200,  # garbage packet
        b"\x01" * 100,  # too short
    ]
    assert send_datagrams(net, k.port, cases, wait=0.5) == 0
    d.wait_events("refused", 4)
    d.wait_events("replay", 1)
    d.wait_events("signature", 1)
    assert helper.messages == [request(net.client.ip, 22)]
    refused = d.of("refused")
    assert [e["GNOCCHI_COUNTER"] for e in refused] == ["11", "12", "13", "14"]
    assert "23/tcp is not in this client's allow list" in refused[0]["GNOCCHI_REASON"]
    assert "not in this client's actions" in refused[2]["GNOCCHI_REASON"]
    # attacker-chosen bytes are escaped in MESSAGE and fields: no raw control characters
    raw = (tmp_path / "daemon.err").read_bytes()
    assert b"\x1b" not in raw and b"\\x1b" in raw
    assert refused[3]["GNOCCHI_REQUEST"].startswith("\\xff\\x00open 22")
    # counters of refused requests are consumed: the store holds the last one
    assert stored(tmp_path)[k.public("alice")] == 14
    # the other-server-key packet, the unknown client and the garbage are only counted
    summary = d.wait_events("dropped-summary", 1)[0]
    assert summary["GNOCCHI_DROPPED_MAC"] == "2"  # other key + zero bytes
    assert summary["GNOCCHI_DROPPED_UNKNOWN_CLIENT"] == "1"
    # by key id and source, so an admin sees whose key is missing or pasted wrong
    mallory = k.public("mallory")[:16]
    assert f"1 unknown-client (key {mallory} from {net.client.ip} 1)" in summary["MESSAGE"]
    assert summary["GNOCCHI_DROPPED_SIZE"] == "1"
    assert summary["GNOCCHI_DROPPED_REPEATED"] == "1"
    signature = d.of("signature")[0]
    assert signature["GNOCCHI_CLAIMED_CLIENT"] == "alice"  # only claimed: no valid signature
    assert signature["GNOCCHI_CLAIMED_CLIENT_KEY"] == k.public("alice")
    assert signature["GNOCCHI_SOURCE_IP"] == net.client.ip
    assert "GNOCCHI_COUNTER" not in signature and "GNOCCHI_CLIENT" not in signature
    for replay in d.of("replay"):
        assert replay["GNOCCHI_CLAIMED_CLIENT"] == "alice" and "GNOCCHI_CLIENT_KEY" not in replay


def test_a_forged_high_counter_does_not_block_a_valid_lower_one(daemons, net, k, tmp_path, helper):
    d = start(daemons, net, k, tmp_path, helper)
    forged = knock(k, "alice", 1000, b"open 22", "198.18.250.250")  # bad signature here
    valid = knock(k, "alice", 3, b"open 22", net.server.ip)
    send_datagrams(net, k.port, [forged, valid])
    d.wait_events("accepted", 1)
    assert len(helper.messages) == 1
    assert stored(tmp_path)[k.public("alice")] == 3


def test_server_addresses_for_a_server_behind_nat(daemons, net, k, tmp_path, helper):
    d = start(daemons, net, k, tmp_path, helper, extra='server_addresses = ["203.0.113.7"]')
    send_datagrams(
        net,
        k.port,
        [
            knock(k, "alice", 1, b"open 22", net.server.ip),  # own address: no
            knock(k, "alice", 2, b"open 22", "203.0.113.7"),
        ],
    )  # public address
    accepted = d.wait_events("accepted", 1)
    assert accepted[0]["GNOCCHI_COUNTER"] == "2"
    assert len(d.of("signature")) == 1


def test_helper_failures_are_logged_and_serving_goes_on(daemons, net, k, tmp_path, helper):
    helper.status = 5  # NOT_PROTECTED
    d = start(daemons, net, k, tmp_path, helper)
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
    failed = d.wait_events("helper-failed", 1)
    assert failed[0]["GNOCCHI_HELPER_STATUS"] == "NOT_PROTECTED"
    helper.close()  # now nobody listens on the helper socket
    send_datagrams(net, k.port, [knock(k, "alice", 2, b"open 22", net.server.ip)])
    failed = d.wait_events("helper-failed", 2)
    assert failed[1]["GNOCCHI_HELPER_STATUS"] == "UNREACHABLE"
    send_datagrams(net, k.port, [knock(k, "bob", 1, b"", net.server.ip)])
    d.wait_events("helper-failed", 3)
    assert d.proc.poll() is None  # still serving


def test_dual_stack_socket_unmaps_ipv4_addresses(daemons, net, k, tmp_path, helper):
    # `-l PORT` makes what systemd makes for ListenDatagram=PORT: one AF_INET6 socket on
    # [::] that also takes IPv4 (v4-mapped source and destination addresses).
    d = start(daemons, net, k, tmp_path, helper, listen=str(k.port))
    alice = knock(k, "alice", 1, b"open 22", net.server.ip)
    assert send_datagrams(net, k.port, [alice], wait=0.3) == 0
    accepted = d.wait_events("accepted", 1)
    assert accepted[0]["GNOCCHI_SOURCE_IP"] == net.client.ip  # not ::ffff:198.18...
    assert helper.messages == [request(net.client.ip, 22)]
    assert "port" in d.of("started")[0]["MESSAGE"]


def test_native_ipv6_knock_with_server_addresses(daemons, net, k, tmp_path, helper):
    # v1 signs an IPv4 address, so a knock over IPv6 verifies against server_addresses.
    d = start(
        daemons,
        net,
        k,
        tmp_path,
        helper,
        listen=f"[::]:{k.port}",
        extra=f'server_addresses = ["{net.server.ip}"]',
    )
    alice = knock(k, "alice", 1, b"open 22", net.server.ip)
    send_datagrams(net, k.port, [alice], to=net.server.ip6)
    accepted = d.wait_events("accepted", 1)
    assert accepted[0]["GNOCCHI_SOURCE_IP"] == net.client.ip6
    assert helper.messages == [request(net.client.ip6, 22)]


def test_ipv6_knock_without_server_addresses_says_what_to_set(daemons, net, k, tmp_path, helper):
    d = start(daemons, net, k, tmp_path, helper, listen=f"[::]:{k.port}")
    alice = knock(k, "alice", 1, b"open 22", net.server.ip)
    send_datagrams(net, k.port, [alice], to=net.server.ip6)
    entry = d.wait_events("signature", 1)[0]
    assert "server_addresses" in entry["MESSAGE"] and entry["GNOCCHI_CLAIMED_CLIENT"] == "alice"
    assert helper.messages == []


def test_an_inherited_journal_stream_does_not_divert_events(daemons, net, k, tmp_path, helper):
    # JOURNAL_STREAM from a parent unit names another file: stderr is still what
    # the operator reads (a test run or the demo inside a systemd service).
    d = start(daemons, net, k, tmp_path, helper, env=("JOURNAL_STREAM=8:12345",))
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
    assert d.wait_events("accepted", 1)[0]["GNOCCHI_CLIENT"] == "alice"


def test_readiness_and_stopping_are_told_to_systemd(daemons, net, k, tmp_path, helper):
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as notify:
        notify.bind(str(tmp_path / "notify"))
        notify.settimeout(10)
        d = start(daemons, net, k, tmp_path, helper, env=(f"NOTIFY_SOCKET={tmp_path}/notify",))
        send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
        assert notify.recv(64) == b"READY=1"
        d.wait_events("accepted", 1)  # the knock that started it was not lost
        assert d.stop() == 0
        assert notify.recv(64) == b"STOPPING=1"


def test_a_knock_after_sigterm_is_left_for_the_next_verifier(daemons, net, k, tmp_path, helper):
    # A reload (`gnocchi remove-client`, a config edit) is SIGTERM: what arrives
    # after it must not be decided under the old config, not even for a second.
    d = start(daemons, net, k, tmp_path, helper)
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
    d.wait_events("accepted", 1)
    d.proc.terminate()
    send_datagrams(net, k.port, [knock(k, "alice", 2, b"open 22", net.server.ip)])
    assert d.proc.wait(timeout=10) == 0
    assert len(d.of("accepted")) == 1 and len(helper.messages) == 1


def test_a_damaged_newest_store_slot_is_told_at_start_and_the_older_one_used(
    daemons, net, k, tmp_path, helper
):
    d = start(daemons, net, k, tmp_path, helper)
    for count, counter in enumerate((5, 6), start=1):  # apart: two batches, two commits
        send_datagrams(net, k.port, [knock(k, "alice", counter, b"open 22", net.server.ip)])
        d.wait_events("accepted", count)
    assert d.stop() == 0
    path = tmp_path / "state" / "counters"
    store = counters.Store(str(path.parent)).load()
    raw = bytearray(path.read_bytes())
    raw[store.newest * store.capacity + 40] ^= 1  # the newest slot (counter 6) rots on disk
    path.write_bytes(bytes(raw))
    d = start(daemons, net, k, tmp_path, helper)  # socket-activated: the knock starts it
    send_datagrams(net, k.port, [knock(k, "alice", 6, b"open 22", net.server.ip)])
    [told] = d.wait_events("store-fell-back", 1)
    assert "gnocchi audit --counters" in told["MESSAGE"]
    d.wait_events("accepted", 1)  # counter 6 once more: the one commit the damage cost


def test_a_broken_config_runs_its_last_good_copy_and_says_so(daemons, net, k, tmp_path, helper):
    """A typo in the config never changes what the verifier enforces: it starts with the
    last good copy root kept (gnocchi/admin/last_good.py), and says so once, loudly."""
    from gnocchi.admin import last_good

    cfg = write_config(tmp_path, k, helper.path)
    assert last_good.record(str(cfg))[0]
    cfg.write_text(cfg.read_text().replace('allow = ["443"]', 'alow = ["443"]'))  # bob's typo
    d = start_with(daemons, net, k, cfg)
    assert (
        send_datagrams(
            net,
            k.port,
            [
                knock(k, "alice", 1, b"open 22", net.server.ip),
                knock(k, "bob", 2, b"", net.server.ip),
            ],
            wait=0.5,
        )
        == 0
    )
    accepted = d.wait_events("accepted", 2)
    assert [e["GNOCCHI_REQUEST"] for e in accepted] == ["open 22/tcp", "open 443/tcp"]
    [fell_back] = d.of("config-fell-back")
    assert fell_back["GNOCCHI_CONFIG"] == str(cfg)
    assert fell_back["MESSAGE"].startswith(f"CONFIG BROKEN: {cfg}: clients.bob.alow: unknown key")
    assert fell_back["PRIORITY"] == "3"
    assert d.of("started")[0]["MESSAGE"].endswith(f"clients of {tmp_path}/gnocchi.last-good.toml")


def start_with(daemons, net, k, cfg):
    return daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=cfg.parent / "daemon.err")

"""0.3's flood guarantees with knock protocol v2 beside v1, on the real kernel: the
table's per-source limit holds every knock port of the server's keys (`gnocchi
table load` fills set knock_port with all of them), and a v2 knock opens on its
first try while one address floods the verifier with what costs it most: datagrams
that pass MAC1 (anyone with the server public key can make them) and each cost an
X25519 before the seal fails. The flood helpers are tests/integration/test_table_flood.py's.
"""

from __future__ import annotations

import os
import socket

import pytest

from gnocchi.admin import table
from gnocchi.shared import protocol
from integration.test_table_flood import (
    BURST,
    FLOOD_SECONDS,
    RATE,
    Counting,
    flood,
    flood_sent,
    other_address,
    send_from,
)
from support import (
    TABLE_FILE,
    Daemon,
    EchoServices,
    Helper,
    Keys,
    Net,
    inside,
    knock2,
    write_config,
)


@pytest.fixture
def net():
    with Net("f2") as n:
        yield n


def past_mac1(public: bytes) -> bytes:
    """Garbage sealed to nobody, with MAC1 right for public: each costs the verifier
    the seal's X25519 (crypto_box_seal_open) before it is dropped."""
    sealed = os.urandom(protocol.MIN_PACKET2 - protocol.HEAD_LEN + 16)
    return (
        protocol.MAGIC2
        + protocol.blake2b(sealed, protocol.MAC1_LEN, protocol.MAC1_PERSON, key=public)
        + sealed
    )


def test_arming_limits_floods_on_every_knock_port_of_the_keys(net, tmp_path):
    k = Keys(tmp_path)
    assert k.port != k.port2
    config = write_config(
        tmp_path, k, str(tmp_path / "helper.sock"), extra=f'private_key_file = "{k.private_file}"\n'
    )
    table_path = tmp_path / "gnocchi.nft"
    table_path.write_text(TABLE_FILE.read_text())
    with inside(net.server):
        from gnocchi.admin import nft_table

        loaded = nft_table.load(
            str(table_path), knock_port=table.configured_knock_port(str(config))[0]
        )
    assert sorted(loaded.table.knock_ports()) == sorted([k.port, k.port2])
    knocker = other_address(net, 3)
    counting = Counting(net, k.port2)
    try:
        sender = flood(net, [past_mac1(k.public2) for _ in range(1000)], tmp_path / "pool", k.port2)
        send_from(net, knocker, k.port2, [b"one knock"])
        sent = flood_sent(sender)
        got = counting.settle()
    finally:
        counting.close()
    assert sent >= 20 * BURST, f"not a flood: {sent} datagrams"
    assert got[knocker] == 1
    assert got[net.client.ip] <= BURST + RATE * (FLOOD_SECONDS + 2), (got, sent)


def test_a_v2_knock_opens_on_its_first_try_during_a_flood_past_mac1(net, tmp_path):
    k = Keys(tmp_path)
    table_path = tmp_path / "gnocchi.nft"
    table_path.write_text(TABLE_FILE.read_text())
    with inside(net.server):
        from gnocchi.admin import nft_table

        nft_table.load(str(table_path), knock_port=[k.port2])
    helper = Helper(net.server, peer_user="root")
    config = write_config(
        tmp_path, k, str(helper.path), extra=f'v1 = false\nprivate_key_file = "{k.private_file}"\n'
    )
    knocker = other_address(net, 3)
    try:
        with EchoServices(net.server, tcp_ports=(22,)):
            d = Daemon(
                net,
                config,
                f"{net.server.ip}:{k.port2}",
                "--summary-interval",
                "1",
                stderr=tmp_path / "daemon.err",
            )
            try:
                sender = flood(
                    net, [past_mac1(k.public2) for _ in range(6000)], tmp_path / "pool", k.port2
                )
                send_from(net, knocker, k.port2, [knock2(k, "alice", 1, b"open 22", net.server.ip)])
                accepted = d.wait_events("accepted", 1, timeout=FLOOD_SECONDS)[0]
                sent = flood_sent(sender)
                with inside(net.client):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                with s:
                    s.bind((knocker, 0))
                    s.settimeout(2)
                    s.connect((net.server.ip, 22))
                d.wait_for(
                    lambda _: any("GNOCCHI_DROPPED_SEAL" in e for e in d.of("dropped-summary")),
                    what="a summary",
                )
            finally:
                d.stop()
    finally:
        helper.close()
    assert accepted["GNOCCHI_SOURCE_IP"] == knocker
    assert sent >= 20 * BURST
    seals = sum(int(e.get("GNOCCHI_DROPPED_SEAL", 0)) for e in d.of("dropped-summary"))
    assert 0 < seals <= BURST + RATE * (FLOOD_SECONDS + 2), "the excess never got there"

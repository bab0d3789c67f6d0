"""gnocchi.shared.protocol's v2 against tests/vectors/knock-v2.json.

The vectors are made from docs/PROTOCOL.md by tests/vectors/make_knock_v2.py
with PyNaCl's own bindings; here gnocchi's receiver judges each one (the
exact reason, or the client, counter and data), gnocchi's sender rebuilds
each accepted one byte for byte, every rule of the spec has a vector, and a
byte flipped anywhere in a knock is rejected at the step that owns that byte.
"""

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from nacl.public import PrivateKey, SealedBox

from gnocchi.shared import protocol, seal

HERE = Path(__file__).resolve().parent.parent
VECTORS = json.loads((HERE / "vectors" / "knock-v2.json").read_text())
PRIVATE = bytes.fromhex(VECTORS["server_private_key"])
PUBLIC = bytes.fromhex(VECTORS["server_public_key"])
KEYS2 = [(PUBLIC, PRIVATE)]
V1_KEY = bytes.fromhex(json.loads((HERE / "vectors" / "knock-v1.json").read_text())["server_key"])
ADDRESSES = [
    protocol.address16(bytes(int(x) for x in VECTORS["server_addresses"][0].split(".")))[12:],
    bytes.fromhex("20010db8000000000000000000000007"),
]
CLIENTS = {name: bytes.fromhex(c["public_key"]) for name, c in VECTORS["clients"].items()}
SEEDS = {name: bytes.fromhex(c["seed"]) for name, c in VECTORS["clients"].items()}


class ServerState:
    """The verifier's view, reduced to the receiver's needs: counters per client."""

    def __init__(self, v1_key=None):
        self.counters = {key: 0 for key in CLIENTS.values()}
        self.v1_key = v1_key

    def receive(self, packet: bytes):
        result = protocol.open_packet(packet, self.v1_key, self.counters.get, ADDRESSES, KEYS2)
        if isinstance(result, protocol.Accepted):
            self.counters[result.client_key] = result.counter
        return result


def test_vector_file_is_what_its_script_makes():
    made = subprocess.run(
        [sys.executable, str(HERE / "vectors" / "make_knock_v2.py")],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert json.loads(made) == VECTORS


def test_vectors_cover_every_reason_and_every_rule_of_the_spec():
    judged = VECTORS["vectors"] + VECTORS["sequence"]
    assert {v.get("reason") for v in judged} - {None} == set(protocol.REASONS2)
    spec = (HERE.parent / "docs" / "PROTOCOL.md").read_text()
    rules = set(re.findall(r"^\*\*(R\d+)\*\*", spec, flags=re.MULTILINE))
    assert rules == {f"R{i}" for i in range(1, 11)}
    tested = {v["rule"] for v in VECTORS["vectors"]} | {"R6", "R10"}  # sequence, port_vectors
    assert tested == rules


def test_the_keys_are_a_pair_and_the_port_comes_from_the_public_key():
    assert protocol.public_key(PRIVATE) == PUBLIC == bytes(PrivateKey(PRIVATE).public_key)
    assert protocol.knock_port(PUBLIC) == VECTORS["knock_port"]
    for case in VECTORS["port_vectors"]:
        assert protocol.knock_port(bytes.fromhex(case["server_public_key"])) == case["knock_port"]


@pytest.mark.parametrize("case", VECTORS["address_vectors"], ids=lambda c: c["address"])
def test_address_vector(case):
    import ipaddress

    assert protocol.address16(ipaddress.ip_address(case["address"]).packed).hex() == case["signed"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[v["name"] for v in VECTORS["vectors"]])
def test_vector(vector):
    result = ServerState().receive(bytes.fromhex(vector["packet"]))
    if vector["expect"] == "accept":
        assert result == protocol.Accepted(
            CLIENTS[vector["client"]], vector["counter"], bytes.fromhex(vector["data"])
        )
    else:
        assert isinstance(result, protocol.Rejected)
        assert result.reason == vector["reason"]


@pytest.mark.parametrize("vector", VECTORS["vectors"], ids=[v["name"] for v in VECTORS["vectors"]])
def test_vector_on_a_server_that_also_takes_v1(vector):
    """With v1 on as well, a packet that starts with MAGIC2 is judged the same;
    any other is v1's (the v1 vector's knock is accepted there)."""
    packet = bytes.fromhex(vector["packet"])
    result = ServerState(V1_KEY).receive(packet)
    if packet.startswith(protocol.MAGIC2):
        assert result == ServerState().receive(packet)
    elif vector["name"] == "v1-packet":
        assert result == protocol.Accepted(CLIENTS["a"], 1, b"")
    else:
        assert result.reason in (protocol.SIZE, protocol.MAC)


def test_sequence():
    state = ServerState()
    for step, vector in enumerate(VECTORS["sequence"]):
        before = dict(state.counters)
        result = state.receive(bytes.fromhex(vector["packet"]))
        got = result.reason if isinstance(result, protocol.Rejected) else "accept"
        assert got == vector.get("reason", "accept"), f"step {step}: {vector.get('note', '')}"
        if isinstance(result, protocol.Rejected):
            assert state.counters == before, f"step {step} moved a counter"


def opened_body(packet: bytes) -> bytes:
    """DATA_PLUS_PADDING of a v2 knock, opened with PyNaCl's sealed box."""
    plaintext = SealedBox(PrivateKey(PRIVATE)).decrypt(packet[protocol.HEAD_LEN :])
    return plaintext[protocol.BODY_AT :]


@pytest.mark.parametrize(
    "vector", [v for v in VECTORS["vectors"] if v["expect"] == "accept"], ids=lambda v: v["name"]
)
def test_the_sender_rebuilds_each_accepted_vector(vector):
    packet = bytes.fromhex(vector["packet"])
    data, body = bytes.fromhex(vector["data"]), opened_body(packet)
    import ipaddress

    rebuilt = seal.build_packet2(
        PUBLIC,
        SEEDS[vector["client"]],
        vector["counter"],
        data,
        ipaddress.ip_address(vector["address"]).packed,
        body_len=len(body),
        ephemeral=bytes.fromhex(vector["ephemeral_private"]),
        padding=body[len(data) :],
    )
    assert rebuilt == packet


def test_a_knock_opens_with_libsodiums_sealed_box_and_pads_like_v1():
    lengths = set()
    for counter in range(1, 21):
        packet = seal.build_packet2(PUBLIC, SEEDS["a"], counter, b"open 22", ADDRESSES[1])
        lengths.add(len(packet))
        assert packet.startswith(protocol.MAGIC2)
        assert (len(packet) - protocol.MIN_PACKET2) % 16 == 0
        assert opened_body(packet)[:7] == b"open 22"
        assert ServerState().receive(packet) == protocol.Accepted(CLIENTS["a"], counter, b"open 22")
    assert len(lengths) > 1, "padding length never varied in 20 packets"


def test_an_ipv4_address_is_signed_mapped_whichever_way_it_is_given():
    four = ADDRESSES[0]
    for given in (four, protocol.address16(four)):
        packet = seal.build_packet2(PUBLIC, SEEDS["a"], 1, b"", given)
        for server_ips in ([four], [protocol.address16(four)]):
            result = protocol.open_packet(packet, None, {CLIENTS["a"]: 0}.get, server_ips, KEYS2)
            assert result == protocol.Accepted(CLIENTS["a"], 1, b"")


def test_a_v1_only_server_drops_every_v2_knock_at_mac1():
    packet = seal.build_packet2(PUBLIC, SEEDS["a"], 1, b"", ADDRESSES[0])
    assert protocol.open_packet(
        packet, V1_KEY, {CLIENTS["a"]: 0}.get, ADDRESSES
    ) == protocol.Rejected(protocol.MAC1)


def test_either_key_of_a_rotation_opens_its_own_knocks():
    nxt = PrivateKey.generate()
    keys2 = [(PUBLIC, PRIVATE), (bytes(nxt.public_key), bytes(nxt))]
    for public, _ in keys2:
        packet = seal.build_packet2(public, SEEDS["a"], 1, b"", ADDRESSES[0])
        assert protocol.open_packet(
            packet, None, {CLIENTS["a"]: 0}.get, ADDRESSES, keys2
        ) == protocol.Accepted(CLIENTS["a"], 1, b"")
        assert (
            protocol.open_packet(
                packet, None, {CLIENTS["a"]: 0}.get, ADDRESSES, [k for k in keys2 if k[0] != public]
            ).reason
            == protocol.MAC1
        )


def test_a_byte_flipped_anywhere_is_rejected_by_the_step_that_owns_it():
    """Each offset of a knock, each of its bits: MAGIC2's bytes fail R1; MAC1's
    and the sealed box's fail R3; and with MAC1 made right again (anyone with
    the server public key can), every flip in the box fails R4."""
    packet = seal.build_packet2(PUBLIC, SEEDS["a"], 1, b"open 22", ADDRESSES[0])
    for offset in range(len(packet)):
        for bit in range(8):
            tampered = bytearray(packet)
            tampered[offset] ^= 1 << bit
            result = ServerState().receive(bytes(tampered))
            expected = protocol.MAGIC_MISMATCH if offset < len(protocol.MAGIC2) else protocol.MAC1
            assert result == protocol.Rejected(expected), (offset, bit)
            if offset >= protocol.HEAD_LEN:
                sealed = bytes(tampered[protocol.HEAD_LEN :])
                remac = (
                    protocol.MAGIC2
                    + protocol.blake2b(sealed, protocol.MAC1_LEN, protocol.MAC1_PERSON, key=PUBLIC)
                    + sealed
                )
                assert ServerState().receive(remac) == protocol.Rejected(protocol.SEAL), (
                    offset,
                    bit,
                )


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(counter=-1), "112 bits"),
        (dict(counter=protocol.MAX_COUNTER + 1), "112 bits"),
        (dict(data=b"x" * 865), "at most 864"),
        (dict(server_address=b"\x01\x02\x03"), "4 bytes"),
        (dict(server_public=PUBLIC[:31]), "32 bytes"),
        (dict(body_len=3, data=b"open 22"), "body length"),
        (dict(server_public=bytes(32)), "not a usable X25519 key"),
    ],
)
def test_build_refuses_what_cannot_be_sent(kwargs, words):
    args = dict(
        server_public=PUBLIC,
        signing_seed=SEEDS["a"],
        counter=1,
        data=b"",
        server_address=ADDRESSES[0],
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        seal.build_packet2(**args)

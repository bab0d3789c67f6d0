"""gnocchi.shared.protocol against tests/vectors/knock-v1.json (a copy of shared/vectors).

One case per vector, asserting the exact reason, counter, data and client, as
age's test kit consumes CCTV; then the sequence against one server state.
"""

import json
from pathlib import Path

import pytest

from gnocchi.shared import protocol, seal

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "knock-v1.json").read_text())
SERVER_KEY = bytes.fromhex(VECTORS["server_key"])
SERVER_IP = bytes(int(x) for x in VECTORS["server_ip"].split("."))
CLIENTS = {name: bytes.fromhex(c["public_key"]) for name, c in VECTORS["clients"].items()}


class ServerState:
    """The verifier's view, reduced to what the receiver steps need: counters per client."""

    def __init__(self):
        self.counters = {key: 0 for key in CLIENTS.values()}

    def last_counter(self, client_key):
        return self.counters.get(client_key)

    def receive(self, packet: bytes):
        result = protocol.open_packet(packet, SERVER_KEY, self.last_counter, [SERVER_IP])
        if isinstance(result, protocol.Accepted):
            self.counters[result.client_key] = result.counter  # step 8: commit
        return result


def test_vector_file_is_the_shared_one():
    shared = Path(__file__).resolve().parents[3] / "shared" / "vectors" / "knock-v1.json"
    if not shared.exists():
        pytest.skip("no shared checkout beside this one")
    assert json.loads(shared.read_text()) == VECTORS


def test_vectors_cover_every_reason():
    reasons = {v.get("reason") for v in VECTORS["vectors"] + VECTORS["sequence"]} - {None}
    assert reasons == set(protocol.REASONS)


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


def test_sequence():
    state = ServerState()
    for step, vector in enumerate(VECTORS["sequence"]):
        result = state.receive(bytes.fromhex(vector["packet"]))
        expected = vector.get("reason", "accept")
        got = result.reason if isinstance(result, protocol.Rejected) else "accept"
        assert got == expected, f"sequence step {step}: {vector.get('note', '')}"


def test_sequence_forged_counter_does_not_move_state():
    """The signature-by-other-client step must leave client a's counter where it was."""
    state = ServerState()
    for vector in VECTORS["sequence"]:
        before = dict(state.counters)
        result = state.receive(bytes.fromhex(vector["packet"]))
        if isinstance(result, protocol.Rejected):
            assert state.counters == before
    assert max(state.counters.values()) < 2**100


@pytest.mark.parametrize("case", VECTORS["port_vectors"], ids=lambda c: str(c["knock_port"]))
def test_port_vector(case):
    assert protocol.knock_port(bytes.fromhex(case["server_key"])) == case["knock_port"]


def test_main_key_port():
    assert protocol.knock_port(SERVER_KEY) == VECTORS["knock_port"]


SEED_A = bytes.fromhex(VECTORS["clients"]["a"]["seed"])


def test_build_then_open_round_trip_with_random_padding():
    lengths = set()
    for counter in range(1, 21):
        packet = seal.build_packet(SERVER_KEY, SEED_A, counter, b"open 22", SERVER_IP)
        lengths.add(len(packet))
        assert (len(packet) - protocol.MIN_PACKET) % 16 == 0
        opened = protocol.open_packet(
            packet, SERVER_KEY, lambda k, counter=counter: counter - 1, [SERVER_IP]
        )
        assert opened == protocol.Accepted(CLIENTS["a"], counter, b"open 22")
    assert len(lengths) > 1, "padding length never varied in 20 packets"


def test_build_matches_vector_when_made_deterministic():
    """build_packet with the vector's nonce and padding reproduces it byte for byte."""
    vector = next(v for v in VECTORS["vectors"] if v["name"] == "data-with-padding")
    packet = bytes.fromhex(vector["packet"])
    from nacl.secret import SecretBox

    plain = SecretBox(SERVER_KEY).decrypt(packet)
    data = bytes.fromhex(vector["data"])
    body = plain[protocol.HEADER_LEN :]
    rebuilt = seal.build_packet(
        SERVER_KEY,
        SEED_A,
        vector["counter"],
        data,
        SERVER_IP,
        body_len=len(body),
        nonce=packet[:24],
        padding=body[len(data) :],
    )
    assert rebuilt == packet


@pytest.mark.parametrize(
    "kwargs, words",
    [
        (dict(counter=-1), "112 bits"),
        (dict(counter=protocol.MAX_COUNTER + 1), "112 bits"),
        (dict(data=b"x" * 865), "at most 864"),
        (dict(server_ipv4=b"\x01\x02\x03"), "32 bytes"),
        (dict(body_len=3, data=b"open 22"), "body length"),
    ],
)
def test_build_refuses_what_cannot_be_sent(kwargs, words):
    args = dict(
        server_key=SERVER_KEY, signing_seed=SEED_A, counter=1, data=b"", server_ipv4=SERVER_IP
    )
    args.update(kwargs)
    with pytest.raises(ValueError, match=words):
        seal.build_packet(**args)


def test_body_length_rounds_to_blocks_and_caps():
    assert seal.body_length(0) == 0
    assert seal.body_length(1) == 16
    assert seal.body_length(16) == 16
    assert seal.body_length(17, 2) == 64
    assert seal.body_length(860, 5) == protocol.MAX_BODY
    for n in (0, 7, 100, 864):
        length = seal.random_body_length(n)
        assert n <= length <= protocol.MAX_BODY and length % 16 == 0


def test_a_server_key_of_another_length_is_refused_not_read_past():
    # libsodium reads 32 bytes from whatever it is handed as the key
    with pytest.raises(ValueError, match="32 bytes"):
        protocol.open_packet(bytes(200), SERVER_KEY[:31], ServerState().last_counter, [SERVER_IP])

"""Properties of gnocchi.shared.protocol's v2 (hypothesis): every mutation of a valid
knock is rejected, nothing fed to the receiver raises, and the serve loop's
in-place check drops exactly what the whole receiver drops before the seal.

Keys come from tests/vectors/knock-v2.json so a failure can be replayed by hand.
"""

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st

from gnocchi.shared import protocol, seal

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "knock-v2.json").read_text())
PRIVATE = bytes.fromhex(VECTORS["server_private_key"])
PUBLIC = bytes.fromhex(VECTORS["server_public_key"])
KEYS2 = [(PUBLIC, PRIVATE)]
V1_KEY = bytes.fromhex(
    json.loads((Path(__file__).parent.parent / "vectors" / "knock-v1.json").read_text())[
        "server_key"
    ]
)
SEED_A = bytes.fromhex(VECTORS["clients"]["a"]["seed"])
SEED_B = bytes.fromhex(VECTORS["clients"]["b"]["seed"])
PUB_A = bytes.fromhex(VECTORS["clients"]["a"]["public_key"])
PUB_B = bytes.fromhex(VECTORS["clients"]["b"]["public_key"])
KNOWN = {PUB_A: 0, PUB_B: 0}
V4, V6 = bytes([198, 51, 100, 7]), bytes.fromhex("20010db8000000000000000000000007")

moderate = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
counters = st.integers(min_value=1, max_value=protocol.MAX_COUNTER)
requests = st.binary(max_size=64)
addresses = st.sampled_from([V4, V6])


def receive(packet, keys2=KEYS2, server_ips=(V4, V6), v1_key=None):
    return protocol.open_packet(packet, v1_key, KNOWN.get, list(server_ips), keys2)


def knock(counter, data, address=V4, seed=SEED_A, public=PUBLIC, extra_blocks=None):
    body_len = None if extra_blocks is None else seal.body_length(len(data), extra_blocks)
    return seal.build_packet2(public, seed, counter, data, address, body_len=body_len)


def remac(packet: bytes, public=PUBLIC) -> bytes:
    """packet with MAC1 made right for its (changed) sealed box: anyone with SPK can."""
    sealed = packet[protocol.HEAD_LEN :]
    return (
        protocol.MAGIC2
        + protocol.blake2b(sealed, protocol.MAC1_LEN, protocol.MAC1_PERSON, key=public)
        + sealed
    )


@moderate
@given(counters, requests, addresses)
def test_a_valid_knock_is_accepted(counter, data, address):
    assert receive(knock(counter, data, address)) == protocol.Accepted(PUB_A, counter, data)


@moderate
@given(counters, requests, st.data())
def test_any_bit_flip_is_rejected_even_with_mac1_made_right(counter, data, draw):
    packet = bytearray(knock(counter, data, extra_blocks=draw.draw(st.integers(0, 53))))
    bit = draw.draw(st.integers(0, len(packet) * 8 - 1))
    packet[bit // 8] ^= 1 << (bit % 8)
    assert isinstance(receive(bytes(packet)), protocol.Rejected)
    if bit // 8 >= protocol.HEAD_LEN:
        assert receive(remac(bytes(packet))) == protocol.Rejected(protocol.SEAL)


@moderate
@given(counters, requests, st.data())
def test_truncation_and_extension_are_rejected(counter, data, draw):
    packet = knock(counter, data, extra_blocks=draw.draw(st.integers(0, 53)))
    cut = draw.draw(st.integers(0, len(packet) - 1))
    assert isinstance(receive(packet[:cut]), protocol.Rejected)
    extra = draw.draw(st.binary(min_size=1, max_size=64))
    assert isinstance(receive(packet + extra), protocol.Rejected)
    assert isinstance(receive(remac(packet + extra)), protocol.Rejected)


@moderate
@given(counters, requests, st.binary(min_size=16, max_size=16).filter(lambda a: a != V6))
def test_signed_for_another_server_address_is_rejected(counter, data, other):
    assert receive(knock(counter, data, other)).reason == protocol.SIGNATURE
    assert receive(knock(counter, data, V6), server_ips=[other, V4]).reason == protocol.SIGNATURE


@moderate
@given(counters, requests, st.binary(min_size=32, max_size=32))
def test_a_knock_for_another_server_key_never_opens(counter, data, other_private):
    other = protocol.public_key(other_private)
    try:
        packet = knock(counter, data, public=other)
    except ValueError:  # a low-order public key: no knock can be sealed to it
        return
    assert receive(packet).reason == protocol.MAC1
    # Someone who knows our SPK (every client does) can make MAC1 right: the seal holds.
    assert receive(remac(packet)).reason == protocol.SEAL


@moderate
@given(
    counters,
    requests,
    st.binary(min_size=32, max_size=32).filter(lambda s: s not in (SEED_A, SEED_B)),
)
def test_an_unknown_client_key_is_rejected(counter, data, other_seed):
    assert receive(knock(counter, data, seed=other_seed)).reason == protocol.UNKNOWN_CLIENT


@moderate
@given(counters, requests)
def test_an_old_counter_is_a_replay(counter, data):
    packet = knock(counter, data)
    result = protocol.open_packet(packet, None, lambda k: counter, [V4], KEYS2)
    assert result == protocol.Rejected(protocol.REPLAY, PUB_A, counter)


@settings(max_examples=400, deadline=None)
@given(
    st.one_of(
        st.binary(max_size=1100),
        st.binary(max_size=1100).map(lambda b: protocol.MAGIC2 + b),
        st.binary(min_size=protocol.MIN_PACKET2 - 24, max_size=protocol.MAX_PACKET2).map(
            lambda b: remac(protocol.MAGIC2 + bytes(16) + b)
        ),
    ),
    st.booleans(),
)
def test_arbitrary_bytes_never_raise(packet, with_v1):
    assert isinstance(receive(packet, v1_key=V1_KEY if with_v1 else None), protocol.Rejected)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(min_size=protocol.HEADER_LEN - 8, max_size=protocol.MAX_PACKET2 - 72),
    st.binary(min_size=32, max_size=32),
)
def test_arbitrary_plaintext_sealed_to_the_server_never_raises(plaintext, ephemeral):
    """Gets past the seal (anyone can seal to SPK), so the later steps see arbitrary
    bytes: odd SIGNPUBs that are no Ed25519 point, any DATA_LEN, any counter."""
    from nacl.public import PublicKey, SealedBox

    sealed = SealedBox(PublicKey(PUBLIC)).encrypt(plaintext)
    result = protocol.open_packet(
        remac(protocol.MAGIC2 + bytes(16) + sealed), None, lambda k: 0, [V4], KEYS2
    )
    assert isinstance(result, protocol.Rejected)
    assert result.reason in (protocol.SIGNATURE, protocol.REPLAY)


def unseal_in_place(datagram: bytes, v1_key=None):
    """protocol.unseal as the verifier's serve loop calls it: on the datagram laid
    out as recvmmsg leaves it (knock_socket.Datagrams), cut at MAX_PACKET2 + 1."""
    datagram = datagram[: protocol.MAX_PACKET2 + 1]
    ffi = protocol.ffi
    head = datagram[: protocol.NONCE_LEN].ljust(protocol.NONCE_LEN)
    box = ffi.new(
        "unsigned char[]",
        bytes(protocol.BOXZERO_LEN)
        + datagram[protocol.NONCE_LEN :].ljust(protocol.MAX_PACKET2 + 1),
    )
    opened = ffi.new("unsigned char[]", protocol.BOXZERO_LEN + protocol.MAX_PACKET2)
    result = protocol.unseal(len(datagram), head, box, opened, v1_key, KEYS2)
    return result if isinstance(result, str) else None


@moderate
@given(
    st.one_of(
        st.binary(max_size=1200),
        st.binary(max_size=1200).map(lambda b: protocol.MAGIC2 + b),
        st.builds(knock, counters, requests, addresses),
        st.tuples(
            st.builds(knock, counters, requests), st.integers(0, 1047), st.integers(1, 255)
        ).map(lambda t: t[0][: t[1]] + bytes([t[0][t[1] % len(t[0])] ^ t[2]]) + t[0][t[1] + 1 :]),
        st.tuples(
            st.builds(knock, counters, requests, extra_blocks=st.just(54)),
            st.binary(min_size=1, max_size=200),
        ).map(lambda t: t[0] + t[1]),
    ),
    st.booleans(),
)
def test_the_serve_loop_pre_check_drops_exactly_what_the_receiver_drops_before_the_seal(
    packet, with_v1
):
    v1_key = V1_KEY if with_v1 else None
    result = receive(packet, v1_key=v1_key)
    early = (
        result.reason
        if isinstance(result, protocol.Rejected)
        and result.reason
        in (protocol.SIZE, protocol.MAC, protocol.MAGIC_MISMATCH, protocol.MAC1, protocol.SEAL)
        and (result.reason != protocol.MAGIC_MISMATCH or not with_v1)
        else None
    )
    assert unseal_in_place(packet, v1_key) == early

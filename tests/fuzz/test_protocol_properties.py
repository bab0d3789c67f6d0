"""Properties of gnocchi.shared.protocol (hypothesis): every mutation of a valid knock is
rejected, and nothing fed to open_packet raises.

Keys come from the shared vectors so a failure can be replayed by hand.
"""

import json
from pathlib import Path

from hypothesis import HealthCheck, given, settings, strategies as st
from nacl.secret import SecretBox

from gnocchi.shared import protocol, seal

VECTORS = json.loads((Path(__file__).parent.parent / "vectors" / "knock-v1.json").read_text())
SERVER_KEY = bytes.fromhex(VECTORS["server_key"])
SERVER_IP = bytes([198, 51, 100, 7])
SEED_A = bytes.fromhex(VECTORS["clients"]["a"]["seed"])
SEED_B = bytes.fromhex(VECTORS["clients"]["b"]["seed"])
PUB_A = bytes.fromhex(VECTORS["clients"]["a"]["public_key"])
PUB_B = bytes.fromhex(VECTORS["clients"]["b"]["public_key"])
KNOWN = {PUB_A: 0, PUB_B: 0}

# Moderate counts keep the whole file to a few seconds; a local settings
# object, so other test files keep their own.
moderate = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

counters = st.integers(min_value=1, max_value=protocol.MAX_COUNTER)
requests = st.binary(max_size=64)


def receive(packet, server_key=SERVER_KEY, server_ips=(SERVER_IP,)):
    return protocol.open_packet(packet, server_key, KNOWN.get, list(server_ips))


def knock(
    counter, data, seed=SEED_A, server_key=SERVER_KEY, server_ip=SERVER_IP, extra_blocks=None
):
    """A valid knock; random padding length unless extra_blocks fixes it (then the
    packet length is a function of the drawn data, as hypothesis needs for st.data())."""
    body_len = None if extra_blocks is None else seal.body_length(len(data), extra_blocks)
    return seal.build_packet(server_key, seed, counter, data, server_ip, body_len=body_len)


@moderate
@given(counters, requests)
def test_a_valid_knock_is_accepted(counter, data):
    assert receive(knock(counter, data)) == protocol.Accepted(PUB_A, counter, data)


@moderate
@given(counters, requests, st.data())
def test_any_bit_flip_is_rejected(counter, data, draw):
    packet = bytearray(knock(counter, data, extra_blocks=draw.draw(st.integers(0, 53))))
    bit = draw.draw(st.integers(0, len(packet) * 8 - 1))
    packet[bit // 8] ^= 1 << (bit % 8)
    assert isinstance(receive(bytes(packet)), protocol.Rejected)


@moderate
@given(counters, requests, st.data())
def test_truncation_is_rejected(counter, data, draw):
    packet = knock(counter, data, extra_blocks=draw.draw(st.integers(0, 53)))
    cut = draw.draw(st.integers(0, len(packet) - 1))
    assert isinstance(receive(packet[:cut]), protocol.Rejected)


@moderate
@given(counters, requests, st.binary(min_size=1, max_size=64))
def test_extension_is_rejected(counter, data, extra):
    assert isinstance(receive(knock(counter, data) + extra), protocol.Rejected)


@moderate
@given(counters, requests, st.binary(min_size=4, max_size=4).filter(lambda ip: ip != SERVER_IP))
def test_signed_for_another_server_address_is_rejected(counter, data, other_ip):
    assert receive(knock(counter, data, server_ip=other_ip)).reason == protocol.SIGNATURE
    # and the other way round: the server accepts only its own addresses
    assert receive(knock(counter, data), server_ips=[other_ip]).reason == protocol.SIGNATURE


@moderate
@given(counters, requests, st.binary(min_size=32, max_size=32).filter(lambda k: k != SERVER_KEY))
def test_another_server_key_is_rejected(counter, data, other_key):
    assert receive(knock(counter, data, server_key=other_key)).reason == protocol.MAC


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
def test_a_known_client_key_signed_by_another_client_is_rejected(counter, data):
    """Client b signs, then claims to be a: the secretbox is fine, the signature is not."""
    packet = knock(counter, data, seed=SEED_B)
    box = SecretBox(SERVER_KEY)
    plain = bytearray(box.decrypt(packet))
    plain[8:40] = PUB_A
    forged = bytes(box.encrypt(bytes(plain), packet[:24]))
    assert receive(forged) == protocol.Rejected(protocol.SIGNATURE, PUB_A)


@moderate
@given(counters, requests)
def test_an_old_counter_is_a_replay(counter, data):
    packet = knock(counter, data)
    result = protocol.open_packet(packet, SERVER_KEY, lambda k: counter, [SERVER_IP])
    assert result == protocol.Rejected(protocol.REPLAY, PUB_A, counter)


@settings(max_examples=400, deadline=None)
@given(st.binary(max_size=1100))
def test_arbitrary_bytes_never_raise(packet):
    assert isinstance(receive(packet), protocol.Rejected)


@settings(max_examples=150, deadline=None)
@given(
    st.binary(min_size=24, max_size=24),
    st.binary(min_size=protocol.HEADER_LEN - 8, max_size=protocol.MAX_PACKET - 40 - 8),
    st.booleans(),
)
def test_arbitrary_plaintext_under_the_right_key_never_raises(nonce, rest, with_magic):
    """Gets past the MAC, so the later steps see arbitrary bytes: odd SIGNPUBs that are no
    Ed25519 point, any DATA_LEN, any counter. Every client key counts as known here."""
    plain = (protocol.MAGIC if with_magic else rest[:8]) + rest
    packet = bytes(SecretBox(SERVER_KEY).encrypt(plain, nonce))
    result = protocol.open_packet(packet, SERVER_KEY, lambda k: 0, [SERVER_IP])
    # never Accepted: nobody signed it (and counter 0 is a replay of "none yet")
    assert isinstance(result, protocol.Rejected)
    assert result.reason in (protocol.MAGIC_MISMATCH, protocol.SIGNATURE, protocol.REPLAY)


def unseal_in_place(datagram: bytes):
    """protocol.unseal as the verifier's serve loop calls it: on the datagram
    laid out as recvmmsg leaves it (knock_socket.Datagrams), cut at
    MAX_PACKET + 1 bytes as its receive buffers cut it."""
    datagram = datagram[: protocol.MAX_PACKET2 + 1]
    ffi = protocol.ffi
    head = datagram[: protocol.NONCE_LEN].ljust(protocol.NONCE_LEN)
    box = ffi.new(
        "unsigned char[]",
        bytes(protocol.BOXZERO_LEN)
        + datagram[protocol.NONCE_LEN :].ljust(protocol.MAX_PACKET2 + 1),
    )
    opened = ffi.new("unsigned char[]", protocol.BOXZERO_LEN + protocol.MAX_PACKET2)
    result = protocol.unseal(len(datagram), head, box, opened, SERVER_KEY)
    return result if isinstance(result, str) else None


@moderate
@given(
    st.one_of(
        st.binary(max_size=1200),
        st.builds(knock, counters, requests),
        st.tuples(
            st.builds(knock, counters, requests), st.integers(0, 1023), st.integers(1, 255)
        ).map(lambda t: t[0][: t[1]] + bytes([t[0][t[1] % len(t[0])] ^ t[2]]) + t[0][t[1] + 1 :]),
        st.tuples(
            st.builds(knock, counters, requests, extra_blocks=st.just(54)),
            st.binary(min_size=1, max_size=200),
        ).map(lambda t: t[0] + t[1]),
    )
)
def test_the_serve_loop_pre_check_drops_exactly_what_open_packet_drops_at_steps_1_and_2(packet):
    # The verifier drops a datagram on unseal's word before open_packet sees
    # it: the two must agree, or a knock would be lost (or garbage let on).
    result = receive(packet)
    early = (
        result.reason
        if isinstance(result, protocol.Rejected) and result.reason in (protocol.SIZE, protocol.MAC)
        else None
    )
    assert unseal_in_place(packet) == early

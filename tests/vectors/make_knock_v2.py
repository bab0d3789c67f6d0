"""Write tests/vectors/knock-v2.json: the v2 wire format's test vectors.

Written from docs/PROTOCOL.md ("Version 2") with PyNaCl's own bindings, not
with gnocchi's code, so that the spec, these vectors and gnocchi/shared/
protocol.py are three sides that check one another (C2SP's CCTV does the
same for age): tests/unit/test_protocol_v2.py passes every vector through
gnocchi's receiver and rebuilds every accepted one with gnocchi's sender.
Everything here is deterministic (keys, ephemeral keys and padding come from
BLAKE2b of fixed labels), so running it again writes the same file:

    python3 tests/vectors/make_knock_v2.py > tests/vectors/knock-v2.json

Each vector names the rule of PROTOCOL.md it tests ("rule": R1..R10).
"""

from __future__ import annotations

import ipaddress
import json
import sys

from nacl import bindings as b
from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.signing import SigningKey

RAW = {"encoder": RawEncoder}
MAGIC2 = bytes.fromhex("177fd314bf5dbb67")
MAGIC1 = bytes.fromhex("42f9708e2f1369d9")
MIN, MAX, MAX_BODY = 184, 1048, 864
ADDRESSES = ["198.51.100.7", "2001:db8::7"]
# The v1 vectors' client seeds, so one client key serves both files.
SEEDS = {
    "a": "7ac4765a5ed245d6814996c939902672c013886bd1c16babbc42d4e470026d7f",
    "b": "d12e6f83ef062855f627e1ae3e397c0c3de3d824f64af7a7ead253d532655f24",
}


def stream(label: str, n: int) -> bytes:
    """n deterministic bytes for label (BLAKE2b-512 in counter mode)."""
    out = b""
    while len(out) < n:
        out += blake2b(f"{label}/{len(out)}".encode(), digest_size=64, **RAW)
    return out[:n]


def port_of(public: bytes) -> int:
    h = blake2b(public, digest_size=32, **RAW)
    return h[30] * 256 + h[31]


def server_keypair(label: str) -> tuple[bytes, bytes]:
    """A private key whose public key's knock port is above 1024 (keygen's rule)."""
    for i in range(100):
        private = stream(f"{label}/{i}", 32)
        public = b.crypto_scalarmult_base(private)
        if port_of(public) > 1024:
            return private, public
    raise AssertionError("no key")


PRIVATE, PUBLIC = server_keypair("server")
OTHER_PRIVATE, OTHER_PUBLIC = server_keypair("other server")


def address16(text: str) -> bytes:
    addr = ipaddress.ip_address(text)
    return addr.packed if addr.version == 6 else ipaddress.IPv6Address(f"::ffff:{addr}").packed


def mac1(public: bytes, sealed: bytes) -> bytes:
    return blake2b(sealed, digest_size=16, key=public, person=b"gnocchi-mac1", **RAW)


def seal(plaintext: bytes, public: bytes, ephemeral: bytes, epk: bytes | None = None) -> bytes:
    """crypto_box_seal with a chosen ephemeral key (epk: a forged one to send)."""
    real_epk = b.crypto_scalarmult_base(ephemeral)
    nonce = blake2b(real_epk + public, digest_size=24, **RAW)
    return (epk or real_epk) + b.crypto_box(plaintext, nonce, public, ephemeral)


def signing_key(client: str) -> SigningKey:
    """a and b are the configured clients; any other name is a stranger's key."""
    return SigningKey(bytes.fromhex(SEEDS[client]) if client in SEEDS else stream(client, 32))


def knock(
    name: str,
    client: str,
    counter: int,
    data: bytes = b"",
    *,
    body_len: int | None = None,
    address: str = ADDRESSES[0],
    signed_public: bytes = PUBLIC,
    seal_to: bytes = PUBLIC,
    mac1_key: bytes = PUBLIC,
    signer: str | None = None,
    data_len: int | None = None,
    signed_address: bytes | None = None,
    signed_prefix: bytes = MAGIC2,
    epk: bytes | None = None,
    flip: int | None = None,
    flip_mac1_after: bool = False,
) -> tuple[bytes, dict]:
    """A v2 knock (PROTOCOL.md "Packet"), with one thing done wrong when asked."""
    if body_len is None:
        body_len = -(-len(data) // 16) * 16
    claimed = bytes(signing_key(client).verify_key)  # SIGNPUB
    key = signing_key(signer or client)
    padding = stream(f"{name}/padding", body_len - len(data))
    tail = (
        counter.to_bytes(14, "big")
        + (len(data) if data_len is None else data_len).to_bytes(2, "big")
        + data
        + padding
    )
    signed = (
        signed_prefix
        + claimed
        + tail
        + signed_public
        + (address16(address) if signed_address is None else signed_address)
    )
    sig = key.sign(signed).signature
    ephemeral = stream(f"{name}/ephemeral", 32)
    sealed = seal(claimed + sig + tail, seal_to, ephemeral, epk)
    if flip is not None and not flip_mac1_after:
        packet = bytearray(MAGIC2 + mac1(mac1_key, sealed) + sealed)
        packet[flip] ^= 0x01
        return bytes(packet), {"ephemeral_private": ephemeral.hex()}
    if flip is not None:  # tamper with the box, then make MAC1 right again
        sealed = bytearray(sealed)
        sealed[flip] ^= 0x01
        sealed = bytes(sealed)
    return MAGIC2 + mac1(mac1_key, sealed) + sealed, {"ephemeral_private": ephemeral.hex()}


def accept(name, rule, client, counter, data=b"", **kw) -> dict:
    packet, extra = knock(name, client, counter, data, **kw)
    return {
        "name": name,
        "rule": rule,
        "packet": packet.hex(),
        "expect": "accept",
        "client": client,
        "counter": counter,
        "data": data.hex(),
        "address": kw.get("address", ADDRESSES[0]),
        **extra,
    }


def reject(name, rule, reason, packet: bytes) -> dict:
    return {
        "name": name,
        "rule": rule,
        "packet": packet.hex(),
        "expect": "reject",
        "reason": reason,
    }


def v1_packet() -> bytes:
    """A valid v1 knock (knock-v1.json's keys): not v2, so a v2-only server drops it."""
    server_key = bytes.fromhex("90514d9d06d9cd55ac50a83edf6506fc70159705bb71e13a17a17e9b8074b2f9")
    key = SigningKey(bytes.fromhex(SEEDS["a"]))
    nonce = stream("v1/nonce", 24)
    tail = (1).to_bytes(14, "big") + (0).to_bytes(2, "big")
    sig = key.sign(
        nonce + MAGIC1 + bytes(key.verify_key) + tail + server_key + bytes([198, 51, 100, 7])
    ).signature
    plaintext = MAGIC1 + bytes(key.verify_key) + sig + tail
    return nonce + b.crypto_secretbox(plaintext, nonce, server_key)


def vectors() -> list[dict]:
    k = lambda *a, **kw: knock(*a, **kw)[0]  # noqa: E731
    valid = k("base", "a", 1, b"open 22")
    wrong_magic = bytearray(valid)
    wrong_magic[7] ^= 0x80
    long_body = b"x" * 200
    low_order = bytes(32)  # the X25519 point of order 1: no shared secret
    return [
        accept("minimal-empty-data", "R9", "a", 1, body_len=0),
        accept("ipv4-address-mapped", "R7", "a", 7, b"open 22"),
        accept("ipv6-address", "R7", "a", 8, b"open 22", address=ADDRESSES[1]),
        accept("padding-random-length", "R9", "b", 9, b"open 22", body_len=160),
        accept("odd-body-length", "R9", "a", 3, b"open 22", body_len=37),
        accept("data-fills-body-no-padding", "R9", "a", 4, b"0123456789abcdef" * 2),
        accept("max-size", "R2", "b", 2**64, long_body, body_len=MAX_BODY),
        accept("max-counter", "R6", "b", 2**112 - 1),
        accept("run-with-payload", "R9", "a", 5, b"run motd\nback at 5"),
        reject("v1-packet", "R1", "magic", v1_packet()),
        reject("magic-one-bit-off", "R1", "magic", bytes(wrong_magic)),
        reject("empty", "R1", "magic", b""),
        reject("too-short-183", "R2", "size", valid[: MIN - 1]),
        reject(
            "too-long-1049", "R2", "size", k("long", "a", 1, long_body, body_len=MAX_BODY) + b"\0"
        ),
        reject("mac1-bit-flip", "R3", "mac1", k("mflip", "a", 1, b"open 22", flip=8)),
        reject("sealed-bit-flip", "R3", "mac1", k("sflip", "a", 1, b"open 22", flip=100)),
        reject(
            "sealed-to-other-server",
            "R3",
            "mac1",
            k(
                "other",
                "a",
                1,
                b"open 22",
                signed_public=OTHER_PUBLIC,
                seal_to=OTHER_PUBLIC,
                mac1_key=OTHER_PUBLIC,
            ),
        ),
        reject(
            "mac1-right-box-sealed-to-other-key",
            "R4",
            "seal",
            k("otherbox", "a", 1, b"open 22", seal_to=OTHER_PUBLIC),
        ),
        reject(
            "ciphertext-flip-mac1-made-right",
            "R4",
            "seal",
            k("cflip", "a", 1, b"open 22", flip=60, flip_mac1_after=True),
        ),
        reject(
            "low-order-ephemeral-key",
            "R4",
            "seal",
            k("loworder", "a", 1, b"open 22", epk=low_order),
        ),
        reject("unknown-client-key", "R5", "unknown-client", k("stranger", "stranger", 1)),
        reject(
            "signed-for-other-address",
            "R7",
            "signature",
            k("otheraddr", "a", 1, b"open 22", address="198.51.100.8"),
        ),
        reject(
            "ipv4-signed-unmapped",
            "R7",
            "signature",
            k("unmapped", "a", 1, b"open 22", signed_address=bytes([198, 51, 100, 7]) + bytes(12)),
        ),
        reject(
            "signed-for-other-server-key",
            "R7",
            "signature",
            k("otherspk", "a", 1, b"open 22", signed_public=OTHER_PUBLIC),
        ),
        reject(
            "signature-by-other-client", "R7", "signature", k("byb", "a", 1, b"open 22", signer="b")
        ),
        reject(
            "signed-with-v1-magic",
            "R7",
            "signature",
            k("asv1", "a", 1, b"open 22", signed_prefix=MAGIC1),
        ),
        reject(
            "data-len-exceeds-body",
            "R8",
            "data-length",
            k("datalen", "a", 1, b"open 22", body_len=16, data_len=17),
        ),
    ]


def sequence() -> list[dict]:
    def step(packet: bytes, expect: str, note: str = "") -> dict:
        entry = {"packet": packet.hex(), "expect": "accept" if expect == "accept" else "reject"}
        if expect != "accept":
            entry["reason"] = expect
        return {**entry, **({"note": note} if note else {})}

    first = knock("seq1", "a", 10, b"open 22")[0]
    return [
        step(first, "accept"),
        step(first, "replay", "the same packet again"),
        step(knock("seq2", "a", 5, b"open 22")[0], "replay", "a lower counter"),
        step(knock("seq3", "a", 10, b"open 22")[0], "replay", "an equal counter, another packet"),
        step(
            knock("seq4", "a", 2**100, signer="b")[0],
            "signature",
            "client a's key with counter 2**100 but signed by client b: must not move a's counter",
        ),
        step(knock("seq5", "a", 11)[0], "accept", "a's counter did not move"),
        step(knock("seq6", "b", 1, address=ADDRESSES[1])[0], "accept"),
        step(knock("seq7", "b", 1, address=ADDRESSES[1])[0], "replay", "b's counter is 1 now"),
        step(knock("seq8", "b", 2)[0], "accept", "either address, one counter per client"),
    ]


def main() -> int:
    clients = {}
    for name, seed in SEEDS.items():
        clients[name] = {
            "seed": seed,
            "public_key": bytes(SigningKey(bytes.fromhex(seed)).verify_key).hex(),
        }
    doc = {
        "about": "Knock packet test vectors for the v2 wire format (docs/PROTOCOL.md, "
        "'Version 2'), made by tests/vectors/make_knock_v2.py. Each vector in "
        "'vectors' is judged against a fresh server state that holds the server "
        "private key, knows clients a and b (last counter 0) and takes both "
        "server_addresses as its own; 'sequence' is judged in order against one "
        "state. 'rule' names the rule of PROTOCOL.md a vector tests. Accepted "
        "vectors give the ephemeral private key, and their padding is deterministic "
        "(real clients draw both at random), so a sender can rebuild them byte for "
        "byte.",
        "server_private_key": PRIVATE.hex(),
        "server_public_key": PUBLIC.hex(),
        "knock_port": port_of(PUBLIC),
        "server_addresses": ADDRESSES,
        "clients": clients,
        "reasons": {
            "magic": "R1",
            "size": "R2",
            "mac1": "R3",
            "seal": "R4",
            "unknown-client": "R5",
            "replay": "R6",
            "signature": "R7",
            "data-length": "R8",
        },
        "vectors": vectors(),
        "sequence": sequence(),
        "port_vectors": [
            {"server_public_key": pub.hex(), "knock_port": port_of(pub)}
            for pub in (PUBLIC, OTHER_PUBLIC, bytes(32), b"\xff" * 32)
        ],
        "address_vectors": [
            {"address": a, "signed": address16(a).hex()}
            for a in ("198.51.100.7", "0.0.0.1", "2001:db8::7", "::1")
        ],
    }
    json.dump(doc, sys.stdout, indent=1)
    sys.stdout.write("\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())

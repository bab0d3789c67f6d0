"""The sender's half of the wire formats (docs/PROTOCOL.md): gnocchi-knock seals
a knock with these. The receiver's half, and every size and constant both
halves use, is protocol.py; the verifier never imports this module
(tests/test_roles.py holds that), so what a reviewer of the network-facing
code must read stays protocol.py alone. Raises ValueError on arguments no
knock can carry; no I/O but os.urandom.
"""

from __future__ import annotations

import os

from nacl._sodium import ffi, lib

from gnocchi.shared.protocol import (
    BODY_AT,
    BOXZERO_LEN,
    COUNTER_LEN,
    DATA_LEN_AT,
    KEY_LEN,
    MAC1_LEN,
    MAC1_PERSON,
    MAGIC,
    MAGIC2,
    MAX_BODY,
    MAX_COUNTER,
    NONCE_LEN,
    PAD_BLOCK,
    SIG_LEN,
    address16,
    blake2b,
    public_key,
    signing_keys,
)


def body_length(data_len: int, extra_blocks: int = 0) -> int:
    """L for DATA_LEN bytes: rounded up to 16, plus extra 16-byte blocks, capped at MAX_BODY."""
    rounded = -(-data_len // PAD_BLOCK) * PAD_BLOCK
    return min(rounded + extra_blocks * PAD_BLOCK, MAX_BODY)


def random_body_length(data_len: int) -> int:
    """L with a uniformly random number of extra blocks, so length hides the request."""
    spare_blocks = (MAX_BODY - body_length(data_len)) // PAD_BLOCK
    return body_length(data_len, _uniform_below(spare_blocks + 1))


def _uniform_below(n: int) -> int:
    """A uniform integer in 0..n-1 (n at most 256) from os.urandom: the secrets
    module would cost the client's start its hmac and hashlib imports."""
    # Bytes at or above the largest multiple of n are drawn again, so each
    # remainder is equally likely.
    limit = 256 - 256 % n
    while (byte := os.urandom(1)[0]) >= limit:
        pass
    return byte % n


def _signed(
    prefix: bytes,
    server_key: bytes,
    signing_seed: bytes,
    counter: int,
    data: bytes,
    server_ip: bytes,
    body_len: int | None,
    padding: bytes | None,
) -> bytes:
    """SIGNPUB || SIG || COUNTER || DATA_LEN || DATA_PLUS_PADDING, SIG over prefix,
    SIGNPUB, what follows SIG, server_key and server_ip (the two versions' one rule)."""
    if len(server_key) != KEY_LEN or len(signing_seed) != KEY_LEN:
        raise ValueError("server key and signing seed are 32 bytes")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError("counter must fit in 112 bits")
    if len(data) > MAX_BODY:
        raise ValueError(f"request is {len(data)} bytes; at most {MAX_BODY} fit in a knock")
    body_len = random_body_length(len(data)) if body_len is None else body_len
    if not len(data) <= body_len <= MAX_BODY:
        raise ValueError("body length must be between the data length and 864")
    padding = os.urandom(body_len - len(data)) if padding is None else padding
    if len(padding) < body_len - len(data):
        raise ValueError("padding is shorter than the body length leaves room for")
    signpub, secret = signing_keys(signing_seed)
    counter_and_body = (
        counter.to_bytes(COUNTER_LEN, "big")
        + len(data).to_bytes(BODY_AT - DATA_LEN_AT, "big")
        + data
        + padding[: body_len - len(data)]
    )
    signed = prefix + signpub + counter_and_body + server_key + server_ip
    # crypto_sign writes the signature, then the message: only the signature is kept.
    sig_and_signed = ffi.new("unsigned char[]", SIG_LEN + len(signed))
    lib.crypto_sign(sig_and_signed, ffi.NULL, signed, len(signed), secret)  # cannot fail
    return signpub + ffi.buffer(sig_and_signed, SIG_LEN)[:] + counter_and_body


def build_packet(
    server_key: bytes,
    signing_seed: bytes,
    counter: int,
    data: bytes,
    server_ipv4: bytes,
    body_len: int | None = None,
    nonce: bytes | None = None,
    padding: bytes | None = None,
) -> bytes:
    """Seal one v1 knock. Defaults: random nonce, random L, random padding bytes."""
    nonce = os.urandom(NONCE_LEN) if nonce is None else nonce
    if len(server_ipv4) != 4 or len(nonce) != NONCE_LEN:  # libsodium reads NONCE_LEN bytes
        raise ValueError(
            f"server key and signing seed are 32 bytes, the server address 4, the nonce {NONCE_LEN}"
        )
    plaintext = MAGIC + _signed(
        nonce + MAGIC, server_key, signing_seed, counter, data, server_ipv4, body_len, padding
    )
    # unseal()'s layout in reverse: the plaintext after 2 * BOXZERO_LEN zero
    # bytes in, the box (MAC, ciphertext) after BOXZERO_LEN zero bytes out.
    sealed = ffi.new("unsigned char[]", 2 * BOXZERO_LEN + len(plaintext))
    lib.crypto_secretbox(
        sealed, bytes(2 * BOXZERO_LEN) + plaintext, len(sealed), nonce, server_key
    )  # fails only for a message shorter than its zero bytes
    return nonce + ffi.buffer(sealed)[BOXZERO_LEN:]


def build_packet2(
    server_public: bytes,
    signing_seed: bytes,
    counter: int,
    data: bytes,
    server_address: bytes,
    body_len: int | None = None,
    ephemeral: bytes | None = None,
    padding: bytes | None = None,
) -> bytes:
    """Seal one v2 knock to server_public, for server_address (4 or 16 bytes).
    Defaults: random ephemeral key, random L, random padding bytes."""
    if len(server_address) not in (4, 16):
        raise ValueError("the server address is 4 bytes (IPv4) or 16 (IPv6)")
    plaintext = _signed(
        MAGIC2,
        server_public,
        signing_seed,
        counter,
        data,
        address16(server_address),
        body_len,
        padding,
    )
    # crypto_box_seal, with its ephemeral key in the open: EPK || crypto_box
    # (MAC, ciphertext) under the nonce BLAKE2b-192(EPK || server_public).
    ephemeral = os.urandom(KEY_LEN) if ephemeral is None else ephemeral
    epk = public_key(ephemeral)
    nonce = blake2b(epk + server_public, NONCE_LEN)
    box = ffi.new("unsigned char[]", 2 * BOXZERO_LEN + len(plaintext))
    if (
        lib.crypto_box(
            box, bytes(2 * BOXZERO_LEN) + plaintext, len(box), nonce, server_public, ephemeral
        )
        != 0
    ):  # a low-order server public key: no shared secret
        raise ValueError("the server public key is not a usable X25519 key")
    sealed = epk + ffi.buffer(box)[BOXZERO_LEN:]
    return MAGIC2 + blake2b(sealed, MAC1_LEN, MAC1_PERSON, key=server_public) + sealed

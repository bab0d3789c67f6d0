"""gnocchi knock protocols v1 and v2, exactly as docs/PROTOCOL.md gives them.
Trusts nothing in a packet; no I/O. unseal() and open_plaintext() never raise
on any packet: they return Accepted, or a reason in PROTOCOL.md's receiver
order (cheapest first). v1 seals with the server key every client shares; v2
to the server's X25519 public key, so only the server's private key opens it.
"""
from __future__ import annotations

from collections import namedtuple
from collections.abc import Callable, Iterable

# libsodium as PyNaCl bundles it, called directly: PyNaCl's own modules
# (nacl.signing, nacl.secret, nacl.hash) import every binding it has, and
# nacl.encoding imports typing, which would cost the client's start ~5 ms.
# Only functions PyNaCl 1.5 (Debian's) and PyPI's current one both declare.
from nacl._sodium import ffi, lib

MYPY = False  # the type checker reads what follows; Python skips it (and typing's import)
if MYPY:
    from nacl._sodium import CData

KEY_LEN = 32
SECRET_KEY_LEN = 64  # libsodium's Ed25519 secret key: the seed, then the public key
NONCE_LEN = 24
MAC_LEN = 16
MAGIC = bytes.fromhex("42f9708e2f1369d9")
SIG_LEN = 64
COUNTER_LEN = 14
# Where each field starts in SIGNPUB(32) || SIG || COUNTER || DATA_LEN(2) ||
# DATA_PLUS_PADDING: all of a v2 plaintext, a v1 one after MAGIC. The
# signature covers COUNTER_AT onwards (and more: PROTOCOL.md).
SIG_AT, COUNTER_AT, DATA_LEN_AT, BODY_AT = 32, 32 + SIG_LEN, 96 + COUNTER_LEN, 112
HEADER_LEN = len(MAGIC) + BODY_AT         # 120: where DATA starts in a v1 plaintext
MIN_PACKET = NONCE_LEN + MAC_LEN + HEADER_LEN  # 160
MAX_PACKET = 1024
MAX_BODY = MAX_PACKET - MIN_PACKET  # 864: DATA_PLUS_PADDING
MAX_COUNTER = (1 << (8 * COUNTER_LEN)) - 1
# v2: MAGIC2 || MAC1 || the sealed box (EPK, MAC, ciphertext). MAGIC2 and
# MAC1 take the receive buffer's NONCE_LEN bytes, so both versions' boxes lie
# where libsodium reads them. The same DATA_PLUS_PADDING as v1's, 24 bytes on.
MAGIC2 = bytes.fromhex("177fd314bf5dbb67")
MAC1_LEN = 16
HEAD_LEN = len(MAGIC2) + MAC1_LEN         # 24 == NONCE_LEN
SEAL_LEN = KEY_LEN + MAC_LEN              # 48: crypto_box_SEALBYTES
MIN_PACKET2 = HEAD_LEN + SEAL_LEN + BODY_AT  # 184
MAX_PACKET2 = MIN_PACKET2 + MAX_BODY      # 1048
MAC1_PERSON = b"gnocchi-mac1"
# NaCl's crypto_secretbox_open reads the box (MAC, ciphertext) after this many
# zero bytes, and writes the plaintext after twice as many.
BOXZERO_LEN = 16
PAD_BLOCK = 16
LOWEST_KNOCK_PORT = 1025
PERSON_LEN = 16  # BLAKE2b's personalisation field, zero-padded

# The hot path's MAC1 arguments, made once (the verifier decides one datagram at a time).
_MAC1, _SALT, _PERSON = ffi.new("unsigned char[]", MAC1_LEN), bytes(PERSON_LEN), \
    MAC1_PERSON.ljust(PERSON_LEN, b"\0")

# What importing nacl.bindings would have done: libsodium picks its
# implementations and seeds its RNG once, before any other call.
if lib.sodium_init() < 0:
    raise RuntimeError("libsodium could not be initialised")

# Rejection reasons, named as in the vectors (knock-v1.json, knock-v2.json).
SIZE, MAC, MAGIC_MISMATCH, UNKNOWN_CLIENT, REPLAY, SIGNATURE, DATA_LENGTH = (
    "size", "mac", "magic", "unknown-client", "replay", "signature", "data-length")
REASONS = (SIZE, MAC, MAGIC_MISMATCH, UNKNOWN_CLIENT, REPLAY, SIGNATURE, DATA_LENGTH)
MAC1, SEAL = "mac1", "seal"
REASONS2 = (MAGIC_MISMATCH, SIZE, MAC1, SEAL, UNKNOWN_CLIENT, REPLAY, SIGNATURE, DATA_LENGTH)


# (Named tuples, not dataclasses: importing dataclasses costs the client's
# start several milliseconds.) client_key: the Ed25519 public key, 32 bytes.
Accepted = namedtuple("Accepted", "client_key counter data")
# claimed_key: SIGNPUB from step 4 on. For UNKNOWN_CLIENT it is no configured
# client's key; for REPLAY and SIGNATURE it is only what the packet claims;
# DATA_LENGTH comes after the signature, so there it is proven. counter: for
# REPLAY, the counter the packet claims (the admin is told how far below it is).
Rejected = namedtuple("Rejected", "reason claimed_key counter", defaults=(None, None))
# A datagram past the seal: version 1 or 2, v1's nonce (b"" in v2), the
# plaintext, and the server key it was sealed with (v2: the public key).
Unsealed = namedtuple("Unsealed", "version nonce plaintext server_key")


def blake2b(data: bytes, digest_size: int, person: bytes = b"", key: bytes = b"") -> bytes:
    """BLAKE2b of data, as nacl.hash.blake2b(data, digest_size, key=key, person=person)."""
    if len(person) > PERSON_LEN:
        raise ValueError(f"a BLAKE2b person is at most {PERSON_LEN} bytes")
    digest = ffi.new("unsigned char[]", digest_size)
    if lib.crypto_generichash_blake2b_salt_personal(
            digest, digest_size, data, len(data), key or ffi.NULL, len(key), bytes(PERSON_LEN),
            person.ljust(PERSON_LEN, b"\0")) != 0:
        raise ValueError(f"BLAKE2b has no {digest_size}-byte digest")
    return ffi.buffer(digest)[:]


def signing_keys(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, secret key) of the Ed25519 key whose seed is seed."""
    if len(seed) != KEY_LEN:
        raise ValueError(f"a signing seed is {KEY_LEN} bytes")
    public = ffi.new("unsigned char[]", KEY_LEN)
    secret = ffi.new("unsigned char[]", SECRET_KEY_LEN)
    lib.crypto_sign_seed_keypair(public, secret, seed)  # cannot fail for 32 bytes
    return ffi.buffer(public)[:], ffi.buffer(secret)[:]


def public_key(private: bytes) -> bytes:
    """The X25519 public key of a v2 server private key (any 32 bytes; clamped)."""
    public = ffi.new("unsigned char[]", KEY_LEN)
    if len(private) != KEY_LEN or lib.crypto_scalarmult_base(public, private) != 0:
        raise ValueError(f"a private key is {KEY_LEN} bytes")
    return ffi.buffer(public)[:]


def knock_port(server_key: bytes) -> int:
    """UDP port derived from the v1 server key, or the v2 server public key:
    the last two bytes of its BLAKE2b-256."""
    h = blake2b(server_key, 32)
    return h[30] * 256 + h[31]


def address16(packed: bytes) -> bytes:
    """A server address as v2 signs it: IPv6 as it is, IPv4 mapped (::ffff:a.b.c.d)."""
    return packed if len(packed) == 16 else bytes(10) + b"\xff\xff" + packed


def unseal(length: int, head: bytes, box: CData, opened: CData, server_key: bytes | None,
           keys2: Iterable[tuple[bytes, bytes]] = ()) -> str | Unsealed:
    """The receiver's steps up to the seal on a datagram of `length` bytes: a
    reason, or what the seal held. head: its first NONCE_LEN bytes; box: a cffi
    pointer to BOXZERO_LEN zero bytes and the rest, where the datagram lies (no
    Python object is made of it until a MAC holds); opened: a buffer as long.
    server_key: v1's (None: v1 off); keys2: v2's (public, private) pairs."""
    if head[:len(MAGIC2)] == MAGIC2:
        if not MIN_PACKET2 <= length <= MAX_PACKET2:
            return SIZE
        sealed, sealed_len = box + BOXZERO_LEN, length - HEAD_LEN
        for public, private in keys2:
            lib.crypto_generichash_blake2b_salt_personal(
                _MAC1, MAC1_LEN, sealed, sealed_len, public, KEY_LEN, _SALT, _PERSON)
            if lib.sodium_memcmp(_MAC1, head[len(MAGIC2):], MAC1_LEN) == 0:
                # crypto_box_seal_open; a bad MAC, or a low-order EPK, is its -1.
                if lib.crypto_box_seal_open(opened, sealed, sealed_len, public, private) != 0:
                    return SEAL
                return Unsealed(2, b"", ffi.buffer(opened, sealed_len - SEAL_LEN)[:], public)
        return MAC1
    if server_key is None:
        return MAGIC_MISMATCH
    if len(server_key) != KEY_LEN:  # libsodium reads KEY_LEN bytes, whatever it is given
        raise ValueError("the server key is 32 bytes")
    if not MIN_PACKET <= length <= MAX_PACKET:
        return SIZE
    if lib.crypto_secretbox_open(opened, box, BOXZERO_LEN + length - NONCE_LEN, head,
                                 server_key) != 0:
        return MAC
    start = 2 * BOXZERO_LEN
    return Unsealed(1, head, ffi.buffer(opened, start + length - NONCE_LEN - MAC_LEN)[start:],
                    server_key)


def _verify(prefix: bytes, signpub: bytes, sig: bytes, counter_and_body: bytes,
            server_key: bytes, server_ips: Iterable[bytes]) -> bool:
    """True if sig is signpub's over the packet for one of server_ips."""
    # crypto_sign_open (what PyNaCl's VerifyKey.verify calls) takes signature
    # then message in one buffer; NULL: no copy out; a bad signature is its -1.
    if len(signpub) != KEY_LEN:  # libsodium reads KEY_LEN bytes, whatever it is given
        return False
    for server_ip in server_ips:
        signed = sig + prefix + signpub + counter_and_body + server_key + server_ip
        if lib.crypto_sign_open(ffi.NULL, ffi.NULL, signed, len(signed), signpub) == 0:
            return True
    return False


def open_packet(packet: bytes, server_key: bytes | None,
                last_counter: Callable[[bytes], int | None], server_ips: Iterable[bytes],
                keys2: Iterable[tuple[bytes, bytes]] = ()) -> Accepted | Rejected:
    """PROTOCOL.md's whole receiver on one packet; the caller stores the counter."""
    box = ffi.from_buffer(bytes(BOXZERO_LEN) + packet[NONCE_LEN:])
    opened = ffi.new("unsigned char[]", len(box))
    unsealed = unseal(len(packet), packet[:NONCE_LEN], box, opened, server_key, keys2)
    if isinstance(unsealed, str):
        return Rejected(unsealed)
    return open_plaintext(unsealed, last_counter, server_ips)


def open_plaintext(unsealed: Unsealed, last_counter: Callable[[bytes], int | None],
                   server_ips: Iterable[bytes]) -> Accepted | Rejected:
    """The steps after the seal. last_counter(key): the highest counter accepted
    (0 if none), None for no client's key; server_ips: the server's addresses
    as packed bytes (v1 signs only the IPv4 ones)."""
    plaintext = unsealed.plaintext
    if unsealed.version == 1:
        if plaintext[:len(MAGIC)] != MAGIC:
            return Rejected(MAGIC_MISMATCH)
        prefix, plaintext = unsealed.nonce + MAGIC, plaintext[len(MAGIC):]
        server_ips = [ip for ip in server_ips if len(ip) == 4]
    else:
        prefix, server_ips = MAGIC2, [address16(ip) for ip in server_ips]
    signpub = plaintext[:SIG_AT]
    last = last_counter(signpub)
    counter = int.from_bytes(plaintext[COUNTER_AT:DATA_LEN_AT], "big")
    # The signature is checked whatever the client and counter steps decide,
    # and the reasons are still given in receiver order: a packet that claims a
    # key costs the same whether that key is configured and whatever its stored
    # counter, so no one who gets this far learns either from the verifier's time.
    signed = _verify(prefix, signpub, plaintext[SIG_AT:COUNTER_AT], plaintext[COUNTER_AT:],
                     unsealed.server_key, server_ips)
    if last is None:
        return Rejected(UNKNOWN_CLIENT, signpub)
    if counter <= last:
        return Rejected(REPLAY, signpub, counter)
    if not signed:
        return Rejected(SIGNATURE, signpub)
    data_len = int.from_bytes(plaintext[DATA_LEN_AT:BODY_AT], "big")
    body = plaintext[BODY_AT:]
    if data_len > len(body):
        return Rejected(DATA_LENGTH, signpub)
    return Accepted(signpub, counter, body[:data_len])

"""gnocchi knock protocol v1, exactly as PROTOCOL.md gives it. Trusts nothing in
a packet; no I/O. open_packet() never raises on any input: it returns Accepted,
or Rejected(reason) in PROTOCOL.md's receiver order (cheapest first)."""
from __future__ import annotations

import os
from collections import namedtuple
from collections.abc import Callable, Iterable

# libsodium as PyNaCl bundles it, called directly: PyNaCl's own modules
# (nacl.signing, nacl.secret, nacl.hash) import every binding it has, and
# nacl.encoding imports typing, which would cost the client's start ~5 ms.
# Only functions PyNaCl 1.5 (Debian's) and PyPI's current one both declare.
from nacl._sodium import ffi, lib

KEY_LEN = 32
SECRET_KEY_LEN = 64  # libsodium's Ed25519 secret key: the seed, then the public key
NONCE_LEN = 24
MAC_LEN = 16
MAGIC = bytes.fromhex("42f9708e2f1369d9")
SIGNPUB_LEN = 32
SIG_LEN = 64
COUNTER_LEN = 14
DATA_LEN_LEN = 2
# Where each field starts in the plaintext: MAGIC, SIGNPUB, SIG, COUNTER,
# DATA_LEN, then DATA and padding. The signature covers COUNTER_AT onwards.
SIGNPUB_AT = len(MAGIC)                   # 8
SIG_AT = SIGNPUB_AT + SIGNPUB_LEN         # 40
COUNTER_AT = SIG_AT + SIG_LEN             # 104
DATA_LEN_AT = COUNTER_AT + COUNTER_LEN    # 118
HEADER_LEN = DATA_LEN_AT + DATA_LEN_LEN   # 120: DATA starts here
MIN_PACKET = NONCE_LEN + MAC_LEN + HEADER_LEN  # 160
MAX_PACKET = 1024
MAX_BODY = MAX_PACKET - MIN_PACKET  # 864: DATA_PLUS_PADDING
MAX_COUNTER = (1 << (8 * COUNTER_LEN)) - 1
# NaCl's crypto_secretbox_open reads the box (MAC, ciphertext) after this many
# zero bytes, and writes the plaintext after twice as many.
BOXZERO_LEN = 16
PAD_BLOCK = 16
LOWEST_KNOCK_PORT = 1025
PERSON_LEN = 16  # BLAKE2b's personalisation field, zero-padded

# What importing nacl.bindings would have done: libsodium picks its
# implementations and seeds its RNG once, before any other call.
if lib.sodium_init() < 0:
    raise RuntimeError("libsodium could not be initialised")

# Rejection reasons, named as in vectors/knock-v1.json, in receiver order.
SIZE, MAC, MAGIC_MISMATCH, UNKNOWN_CLIENT, REPLAY, SIGNATURE, DATA_LENGTH = (
    "size", "mac", "magic", "unknown-client", "replay", "signature", "data-length")
REASONS = (SIZE, MAC, MAGIC_MISMATCH, UNKNOWN_CLIENT, REPLAY, SIGNATURE, DATA_LENGTH)


# (Named tuples, not dataclasses: importing dataclasses costs the client's
# start several milliseconds.) client_key: the Ed25519 public key, 32 bytes.
Accepted = namedtuple("Accepted", "client_key counter data")
# claimed_key: SIGNPUB from step 4 on. For UNKNOWN_CLIENT it is no configured
# client's key; for REPLAY and SIGNATURE it is only what the packet claims;
# DATA_LENGTH comes after the signature, so there it is proven. counter: for
# REPLAY, the counter the packet claims (the admin is told how far below it is).
Rejected = namedtuple("Rejected", "reason claimed_key counter", defaults=(None, None))


def blake2b(data: bytes, digest_size: int, person: bytes = b"") -> bytes:
    """BLAKE2b of data, as nacl.hash.blake2b(data, digest_size, person=person)."""
    if len(person) > PERSON_LEN:
        raise ValueError(f"a BLAKE2b person is at most {PERSON_LEN} bytes")
    digest = ffi.new("unsigned char[]", digest_size)
    if lib.crypto_generichash_blake2b_salt_personal(
            digest, digest_size, data, len(data), ffi.NULL, 0, bytes(PERSON_LEN),
            person.ljust(PERSON_LEN, b"\0")) != 0:
        raise ValueError(f"BLAKE2b has no {digest_size}-byte digest")
    return ffi.buffer(digest)[:]


def signing_keys(seed: bytes) -> tuple[bytes, bytes]:
    """(public key, secret key) of the Ed25519 key whose seed is seed."""
    if len(seed) != KEY_LEN:
        raise ValueError(f"a signing seed is {KEY_LEN} bytes")
    public = ffi.new("unsigned char[]", SIGNPUB_LEN)
    secret = ffi.new("unsigned char[]", SECRET_KEY_LEN)
    lib.crypto_sign_seed_keypair(public, secret, seed)  # cannot fail for 32 bytes
    return ffi.buffer(public)[:], ffi.buffer(secret)[:]


def knock_port(server_key: bytes) -> int:
    """UDP port derived from the server key: last two bytes of BLAKE2b-256."""
    h = blake2b(server_key, 32)
    return h[30] * 256 + h[31]


def _signed_part(nonce: bytes, signpub: bytes, counter_and_body: bytes,
                 server_key: bytes, server_ip: bytes) -> bytes:
    return nonce + MAGIC + signpub + counter_and_body + server_key + server_ip


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


def build_packet(server_key: bytes, signing_seed: bytes, counter: int, data: bytes,
                 server_ipv4: bytes, body_len: int | None = None,
                 nonce: bytes | None = None, padding: bytes | None = None) -> bytes:
    """Seal one knock. Defaults: random nonce, random L, random padding bytes."""
    if len(server_key) != KEY_LEN or len(signing_seed) != KEY_LEN or len(server_ipv4) != 4:
        raise ValueError("server key and signing seed are 32 bytes, the server address 4")
    if not 0 <= counter <= MAX_COUNTER:
        raise ValueError("counter must fit in 112 bits")
    if len(data) > MAX_BODY:
        raise ValueError(f"request is {len(data)} bytes; at most {MAX_BODY} fit in a knock")
    if body_len is None:
        body_len = random_body_length(len(data))
    if not len(data) <= body_len <= MAX_BODY:
        raise ValueError("body length must be between the data length and 864")
    if padding is None:
        padding = os.urandom(body_len - len(data))
    if len(padding) < body_len - len(data):
        raise ValueError("padding is shorter than the body length leaves room for")
    if nonce is None:
        nonce = os.urandom(NONCE_LEN)
    if len(nonce) != NONCE_LEN:  # libsodium reads NONCE_LEN bytes, whatever it is given
        raise ValueError(f"the nonce is {NONCE_LEN} bytes")
    signpub, secret = signing_keys(signing_seed)
    counter_and_body = (counter.to_bytes(COUNTER_LEN, "big")
                        + len(data).to_bytes(DATA_LEN_LEN, "big") + data
                        + padding[:body_len - len(data)])
    signed = _signed_part(nonce, signpub, counter_and_body, server_key, server_ipv4)
    # crypto_sign writes the signature, then the message: only the signature is kept.
    sig_and_signed = ffi.new("unsigned char[]", SIG_LEN + len(signed))
    lib.crypto_sign(sig_and_signed, ffi.NULL, signed, len(signed), secret)  # cannot fail
    plaintext = MAGIC + signpub + ffi.buffer(sig_and_signed, SIG_LEN)[:] + counter_and_body
    # unseal()'s layout in reverse: the plaintext after 2 * BOXZERO_LEN zero
    # bytes in, the box (MAC, ciphertext) after BOXZERO_LEN zero bytes out.
    sealed = ffi.new("unsigned char[]", 2 * BOXZERO_LEN + len(plaintext))
    lib.crypto_secretbox(sealed, bytes(2 * BOXZERO_LEN) + plaintext, len(sealed), nonce,
                         server_key)  # fails only for a message shorter than its zero bytes
    return nonce + ffi.buffer(sealed)[BOXZERO_LEN:]


def _verify(nonce: bytes, signpub: bytes, sig: bytes, counter_and_body: bytes,
            server_key: bytes, server_ips: Iterable[bytes]) -> bool:
    """True if sig is signpub's over the packet for one of server_ips."""
    # crypto_sign_open (what PyNaCl's VerifyKey.verify calls) takes signature
    # then message in one buffer; NULL: no copy out; a bad signature is its -1.
    if len(signpub) != SIGNPUB_LEN:  # libsodium reads SIGNPUB_LEN bytes, whatever it is given
        return False
    for server_ip in server_ips:
        signed = sig + _signed_part(nonce, signpub, counter_and_body, server_key, server_ip)
        if lib.crypto_sign_open(ffi.NULL, ffi.NULL, signed, len(signed), signpub) == 0:
            return True
    return False


def unseal(length: int, nonce: object, box: object, opened: object,
           server_key: bytes) -> str | None:
    """PROTOCOL.md steps 1 and 2: SIZE or MAC if a datagram of `length` bytes
    fails them, else None, with its plaintext in opened[2 * BOXZERO_LEN:]."""
    # nonce: the datagram's first NONCE_LEN bytes; box: BOXZERO_LEN zero bytes,
    # then the rest (MAC, ciphertext), as crypto_secretbox_open wants it;
    # opened: a cffi buffer as long as box. Bytes or cffi pointers into a
    # receive buffer alike: the hot path checks a datagram where it lies, makes
    # no Python object of it, and a bad MAC is libsodium's -1, not an exception.
    if len(server_key) != KEY_LEN:  # libsodium reads KEY_LEN bytes, whatever it is given
        raise ValueError("the server key is 32 bytes")
    if not MIN_PACKET <= length <= MAX_PACKET:
        return SIZE
    if lib.crypto_secretbox_open(opened, box, BOXZERO_LEN + length - NONCE_LEN, nonce,
                                 server_key) != 0:
        return MAC
    return None


def open_packet(packet: bytes, server_key: bytes, last_counter: Callable[[bytes], int | None],
                server_ips: Iterable[bytes]) -> Accepted | Rejected:
    """PROTOCOL.md's receiver steps 1-7; the caller stores the counter (step 8)."""
    box = bytes(BOXZERO_LEN) + packet[NONCE_LEN:]
    opened = ffi.new("unsigned char[]", len(box))
    if reason := unseal(len(packet), packet[:NONCE_LEN], box, opened, server_key):
        return Rejected(reason)
    plaintext = ffi.buffer(opened)[2 * BOXZERO_LEN:]
    return open_plaintext(packet[:NONCE_LEN], plaintext, server_key, last_counter, server_ips)


def open_plaintext(nonce: bytes, plaintext: bytes, server_key: bytes,
                   last_counter: Callable[[bytes], int | None],
                   server_ips: Iterable[bytes]) -> Accepted | Rejected:
    """Steps 3-7 on what unseal() opened. last_counter(key): the highest counter accepted
    (0 if none), None for no client's key; server_ips: the IPv4 addresses signed for."""
    if plaintext[:SIGNPUB_AT] != MAGIC:
        return Rejected(MAGIC_MISMATCH)
    signpub = plaintext[SIGNPUB_AT:SIG_AT]
    last = last_counter(signpub)
    sig = plaintext[SIG_AT:COUNTER_AT]
    counter_and_body = plaintext[COUNTER_AT:]
    counter = int.from_bytes(plaintext[COUNTER_AT:DATA_LEN_AT], "big")
    # The signature is checked whatever steps 4 and 5 decide, and the reasons
    # are still given in receiver order: a packet that claims a key costs the
    # same whether that key is configured and whatever its stored counter, so
    # no one holding the server key can learn either from the verifier's time.
    signed = _verify(nonce, signpub, sig, counter_and_body, server_key, server_ips)
    if last is None:
        return Rejected(UNKNOWN_CLIENT, signpub)
    if counter <= last:
        return Rejected(REPLAY, signpub, counter)
    if not signed:
        return Rejected(SIGNATURE, signpub)
    data_len = int.from_bytes(plaintext[DATA_LEN_AT:HEADER_LEN], "big")
    body = plaintext[HEADER_LEN:]
    if data_len > len(body):
        return Rejected(DATA_LENGTH, signpub)
    return Accepted(signpub, counter, body[:data_len])

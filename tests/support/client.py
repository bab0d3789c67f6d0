"""What the client's tests share: key files written the way PROTOCOL.md says,
and a UDP socket on 127.0.0.1 bound to a fresh server key's knock port, to
catch what gnocchi-knock sends. Independent of gnocchi/: the port comes from
PROTOCOL.md's own words, not from gnocchi.shared.protocol."""

from __future__ import annotations

import os
import socket
from pathlib import Path

from nacl import bindings as sodium

LOOPBACK = "127.0.0.1"


def knock_port(server_key: bytes) -> int:
    # crypto_generichash with no key, salt or personalisation: plain BLAKE2b-256
    h = sodium.crypto_generichash_blake2b_salt_personal(server_key, digest_size=32)
    return h[30] * 256 + h[31]


def write_key(path: Path, key: bytes) -> Path:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, key.hex().encode() + b"\n")
    os.close(fd)
    return path


def knock_catcher() -> tuple[socket.socket, bytes]:
    """(a UDP socket bound to a server key's knock port on 127.0.0.1, that key)."""
    udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    for _ in range(20):  # draw server keys until the knock port is free here
        server_key = os.urandom(32)
        if knock_port(server_key) <= 1024:
            continue
        try:
            udp.bind((LOOPBACK, knock_port(server_key)))
            return udp, server_key
        except OSError:
            continue
    udp.close()
    raise AssertionError("no free knock port in 20 draws")

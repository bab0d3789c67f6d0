"""The server's knock keys, as its config names them (docs/PROTOCOL.md, "Keys").

Trusts the config; reads every key file through gnocchi.shared.keys (format,
mode, no link, a knock port above 1024). v1's shared key is loaded unless the
config says `v1 = false`; v2's private key when `private_key_file` is set.
The verifier reads them from systemd's credentials directory instead
(`--keys-from DIR`: DIR/server.key, DIR/private.key), where gnocchi.service
has copies only it can read. Every knock port is a port of one of these keys.
"""
from __future__ import annotations

import os
from collections import namedtuple

from gnocchi.server.config import Config
from gnocchi.shared import keys
from gnocchi.shared.protocol import knock_port

# v1: the v1 server key, or None when v1 is off; v2: (public, private) pairs.
Keyring = namedtuple("Keyring", "v1 v2")
# The credential name of each key file the config may name (gnocchi.service's
# LoadCredential=, which `gnocchi setup` writes).
CREDENTIALS = {"server_key_file": "server.key", "private_key_file": "private.key"}


def paths(cfg: Config, directory: str | None = None) -> dict[str, str]:
    """{config key: path} of the key files this config uses (in directory, by
    credential name, when given)."""
    found = {"server_key_file": cfg.server_key_file} if cfg.v1 else {}
    if cfg.private_key_file:
        found["private_key_file"] = cfg.private_key_file
    return {k: os.path.join(directory, CREDENTIALS[k]) if directory else path
            for k, path in found.items()}


def load(cfg: Config, directory: str | None = None) -> Keyring:
    """The keys, from their files (or from directory by credential name); KeyFileError."""
    found = paths(cfg, directory)
    v1 = keys.load_server_key(found["server_key_file"]) if cfg.v1 else None
    v2 = ((keys.load_private_key(found["private_key_file"]),) if cfg.private_key_file else ())
    return Keyring(v1, v2)


def ports(keyring: Keyring) -> list[int]:
    """The knock ports of these keys, v1's first, each once."""
    found = [knock_port(keyring.v1)] if keyring.v1 else []
    return list(dict.fromkeys(found + [knock_port(public) for public, _ in keyring.v2]))


def described(keyring: Keyring) -> list[tuple[int, str]]:
    """(knock port, "server key fingerprint F" or "v2 public key fingerprint F") of each
    key, as `gnocchi status` and `gnocchi check` show them."""
    shown = ([(knock_port(keyring.v1), f"server key fingerprint {keys.fingerprint(keyring.v1)}")]
             if keyring.v1 else [])
    return shown + [(knock_port(public), f"v2 public key fingerprint {keys.fingerprint(public)}")
                    for public, _ in keyring.v2]

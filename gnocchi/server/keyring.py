"""The server's knock keys, as its config names them (docs/PROTOCOL.md, "Keys").

Trusts the config; reads every key file through gnocchi.shared.keys (format,
mode, no link, a knock port above 1024). v1's shared key is loaded unless the
config says `v1 = false`; v2's private key when `private_key_file` is set,
and during a rotation (`gnocchi rotate-key`) the next key beside it: both
open knocks until `rotation_ends`, and from then on a knock sealed to the
old one is refused (refusal()). The verifier reads them from systemd's
credentials directory instead (`--keys-from DIR`: DIR/server.key,
DIR/private.key, DIR/next.key), where gnocchi.service has copies only it can
read. Every knock port is a port of one of these keys.
"""

from __future__ import annotations

import datetime
import os
from collections import namedtuple

from gnocchi.server.config import Config
from gnocchi.shared import keys
from gnocchi.shared.protocol import knock_port

# v1: the v1 server key, or None when v1 is off; v2: (public, private) pairs, the
# current key first; retiring: during a rotation, (the current key's public key,
# when the overlap ends), else None.
Keyring = namedtuple("Keyring", "v1 v2 retiring", defaults=(None,))
# The credential name of each key file the config may name (gnocchi.service's
# LoadCredential=, which `gnocchi setup` writes).
CREDENTIALS = {
    "server_key_file": "server.key",
    "private_key_file": "private.key",
    "next_private_key_file": "next.key",
}


def paths(cfg: Config, directory: str | None = None) -> dict[str, str]:
    """{config key: path} of the key files this config uses (in directory, by
    credential name, when given)."""
    found = {"server_key_file": cfg.server_key_file} if cfg.v1 else {}
    for key in ("private_key_file", "next_private_key_file"):
        if getattr(cfg, key):
            found[key] = getattr(cfg, key)
    return {
        k: os.path.join(directory, CREDENTIALS[k]) if directory else path
        for k, path in found.items()
    }


def load(cfg: Config, directory: str | None = None) -> Keyring:
    """The keys, from their files (or from directory by credential name); KeyFileError."""
    found = paths(cfg, directory)
    v1 = keys.load_server_key(found["server_key_file"]) if cfg.v1 else None
    v2 = tuple(
        keys.load_private_key(found[k])
        for k in ("private_key_file", "next_private_key_file")
        if k in found
    )
    return Keyring(v1, v2, (v2[0][0], cfg.rotation_ends) if len(v2) > 1 else None)


def refusal(keyring: Keyring, server_key: bytes, now: datetime.datetime) -> str | None:
    """Why a proven knock sealed to server_key is refused at now, or None: once a
    rotation's overlap ended, the old key opens nothing (its knocks are still
    opened and checked, so the log can name the client that has not moved)."""
    if keyring.retiring and server_key == keyring.retiring[0] and now >= keyring.retiring[1]:
        return (
            f"it is sealed to the old server key {keys.fingerprint(server_key)}, retired "
            f"when the rotation's overlap ended at {keyring.retiring[1].isoformat()}: "
            "give the client the new line (`gnocchi rotate-key --lines`)"
        )
    return None


def secrets(keyring: Keyring) -> tuple[bytes, ...]:
    """Every secret of these keys: v1's server key and v2's private keys."""
    return ((keyring.v1,) if keyring.v1 else ()) + tuple(private for _, private in keyring.v2)


def ports(keyring: Keyring) -> list[int]:
    """The knock ports of these keys, v1's first, each once."""
    found = [knock_port(keyring.v1)] if keyring.v1 else []
    return list(dict.fromkeys(found + [knock_port(public) for public, _ in keyring.v2]))


def fingerprints(keyring: Keyring) -> list[str]:
    """The fingerprint of each key (v2: of its public key), v1's first, as journal
    entries name them (GNOCCHI_SERVER_KEY, comma-separated)."""
    return ([keys.fingerprint(keyring.v1)] if keyring.v1 else []) + [
        keys.fingerprint(public) for public, _ in keyring.v2
    ]


def described(keyring: Keyring) -> list[tuple[int, str]]:
    """(knock port, "server key fingerprint F" or "v2 public key fingerprint F") of each
    key, as `gnocchi status` and `gnocchi check` show them."""
    shown = (
        [(knock_port(keyring.v1), f"server key fingerprint {keys.fingerprint(keyring.v1)}")]
        if keyring.v1
        else []
    )
    roles = (
        ["the current key, until " + keyring.retiring[1].isoformat(), "the next key"]
        if keyring.retiring
        else [""]
    )
    return shown + [
        (
            knock_port(public),
            f"v2 public key fingerprint {keys.fingerprint(public)}"
            + (f" ({role})" if role else ""),
        )
        for (public, _), role in zip(keyring.v2, roles, strict=False)
    ]

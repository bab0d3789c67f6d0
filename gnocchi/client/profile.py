"""gnocchi-knock's profiles: `~/.config/gnocchi/knock.toml` -> Profile.

Trusts the user's own config file only as far as its types: the file is read
and every key checked as the server's config is (gnocchi.shared.checked_toml):
unknown keys are refused, a request is checked with the verifier's own
grammar (gnocchi.shared.knock_request), and every error is one ProfileError line,
"FILE: profiles.NAME.key: problem". Paths are expanded (`~`) and taken
relative to the config file's directory. Example (see docs/client.md):

    default = "work"                  # optional: the profile used without HOST

    [profiles.work]
    host = "server.example.org"
    server_public_key = "d5d9..."     # knock protocol v2 (else server_key_file: v1)
    client_key_file = "client.key"
    sign_ip = "203.0.113.7"          # optional: the server's public address (NAT)
    request = "open 22 60001/udp"     # optional: default request (one port or several)
"""

from __future__ import annotations

import os
from collections import namedtuple

from gnocchi.shared import checked_toml, knock_request


class ProfileError(Exception):
    """A config file or profile that cannot be used; the message names file and key."""


# A named tuple, not a dataclass: importing dataclasses costs the client's
# start several milliseconds. name, host, sign_ip, request: str; the key
# files: pathlib.Path; each but name None when the profile does not set it.
Profile = namedtuple(
    "Profile",
    "name host server_key_file client_key_file sign_ip request "
    "server_public_key next_server_public_key",
    defaults=(None,) * 7,
)


_STRING_KEYS = (
    "host",
    "server_key_file",
    "client_key_file",
    "sign_ip",
    "request",
    "server_public_key",
    "next_server_public_key",
)


def default_config_path() -> str:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return os.path.join(base, "gnocchi", "knock.toml")


def parse_sign_ip(text: str, what: str, v2: bool = False) -> str:
    """An IPv4 address (or with v2, an IPv6 one too), canonical; ProfileError naming
    `what` if not one."""
    import ipaddress  # only for --sign-ip / sign_ip: a plain knock does not pay for it

    try:
        return str(ipaddress.ip_address(text) if v2 else ipaddress.IPv4Address(text))
    except ValueError:
        raise ProfileError(
            f"{what}: {text!r} is not an {'IP' if v2 else 'IPv4'} address"
            + (
                ""
                if v2
                else " (knock protocol v1 signs an IPv4 address; v2, "
                "with a server_public_key, signs either)"
            )
        ) from None


def parse_public_key(text: str, what: str) -> bytes:
    """A server public key, 64 hex characters; ProfileError naming `what` if not one."""
    from gnocchi.shared.keys import parse_public_hex

    try:
        return parse_public_hex(text, what)
    except ValueError as e:
        raise ProfileError(
            str(e).replace("`gnocchi pubkey`", "the server's onboarding line")
        ) from None


def _profile(where: checked_toml.Where, name: str, table) -> Profile:
    key = f"profiles.{name}"
    where.table(table, key, set(_STRING_KEYS))
    values = {k: where.string(v, f"{key}.{k}") for k, v in table.items()}
    from pathlib import Path  # only with a profile file: a knock with flags alone skips it

    for k in ("server_key_file", "client_key_file"):
        if k in values:
            # relative to the config file, so a profile works from any directory
            values[k] = Path(where.path).parent / Path(values[k]).expanduser()
    for k in ("server_public_key", "next_server_public_key"):
        if k in values:
            values[k] = parse_public_key(values[k], f"{where.path}: {key}.{k}")
    if "next_server_public_key" in values and "server_public_key" not in values:
        raise where.error(
            f"{key}.next_server_public_key",
            "goes with server_public_key (a rotation's next key beside the current one)",
        )
    if "sign_ip" in values:
        values["sign_ip"] = parse_sign_ip(
            values["sign_ip"], f"{where.path}: {key}.sign_ip", "server_public_key" in values
        )
    if "request" in values:
        # The verifier's own grammar: a request the server would refuse as
        # malformed never costs a counter.
        request = knock_request.parse(values["request"].encode())
        if isinstance(request, knock_request.Bad):
            raise where.error(f"{key}.request", f"{values['request'][:60]!r}: {request.why}")
    return Profile(name=name, **values)


def load(path) -> tuple[dict[str, Profile], str | None]:
    """Profiles by name, and the name of the default profile (or None)."""
    where = checked_toml.Where(path, ProfileError)
    doc = where.table(where.read(), "", {"default", "profiles"})
    profiles = {
        name: _profile(where, name, table)
        for name, table in where.entries(doc.get("profiles", {}), "profiles")
    }
    default = doc.get("default")
    if default is not None and default not in profiles:
        raise where.error("default", f"{default!r} names no [profiles.NAME] table")
    return profiles, default


def select(
    profiles: dict[str, Profile], default: str | None, path, wanted: str | None, host: str | None
) -> Profile | None:
    """The profile for this knock: --profile NAME, else one named HOST or with host = HOST,
    else the default profile when no HOST is given; None means flags only."""
    if wanted is not None:
        if wanted not in profiles:
            known = ", ".join(sorted(profiles)) or "none"
            raise ProfileError(f"unknown profile {wanted!r} in {path} (profiles: {known})")
        return profiles[wanted]
    if host is None:
        return profiles[default] if default else None
    if host in profiles:
        return profiles[host]
    by_host = [p for p in profiles.values() if p.host == host]
    return by_host[0] if by_host else None

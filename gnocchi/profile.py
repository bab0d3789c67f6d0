"""gnocchi-knock's profiles: `~/.config/gnocchi/knock.toml` -> Profile.

Trusts the user's own config file only as far as its types: every key is
checked, unknown keys are refused, and every error is a ProfileError naming
the file and the key. Paths are expanded (`~`) and taken relative to the
config file's directory. Example (see docs/client.md):

    default = "work"                  # optional: the profile used without HOST

    [profiles.work]
    host = "server.example.org"
    server_key_file = "work-server.key"
    client_key_file = "client.key"
    sign_ip = "203.0.113.7"          # optional: the server's public IPv4 (NAT)
    request = "open 22"               # optional: default request
"""
from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path
from typing import Optional


class ProfileError(Exception):
    """A config file or profile that cannot be used; the message names file and key."""


@dataclass(frozen=True)
class Profile:
    name: str
    host: Optional[str] = None
    server_key_file: Optional[Path] = None
    client_key_file: Optional[Path] = None
    sign_ip: Optional[str] = None
    request: Optional[str] = None


_STRING_KEYS = ("host", "server_key_file", "client_key_file", "sign_ip", "request")


def default_config_path() -> Path:
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "gnocchi" / "knock.toml"


def parse_sign_ip(text: str, what: str) -> str:
    """A dotted IPv4 address, canonical; ProfileError naming `what` if not one."""
    import ipaddress  # only for --sign-ip / sign_ip: a plain knock does not pay for it
    try:
        return str(ipaddress.IPv4Address(text))
    except ValueError:
        raise ProfileError(f"{what}: {text!r} is not an IPv4 address "
                           "(knock protocol v1 signs an IPv4 address)") from None


def _profile(path: Path, name: str, table) -> Profile:
    where = f"{path}: [profiles.{name}]"
    if not isinstance(table, dict):
        raise ProfileError(f"{where} must be a table")
    unknown = sorted(set(table) - set(_STRING_KEYS))
    if unknown:
        raise ProfileError(f"{where}: unknown key {unknown[0]!r} "
                           f"(known: {', '.join(_STRING_KEYS)})")
    values = {}
    for key, value in table.items():
        if not isinstance(value, str) or not value:
            raise ProfileError(f"{where}: {key} must be a non-empty string")
        values[key] = value
    for key in ("server_key_file", "client_key_file"):
        if key in values:
            # relative to the config file, so a profile works from any directory
            values[key] = path.parent / Path(values[key]).expanduser()
    if "sign_ip" in values:
        values["sign_ip"] = parse_sign_ip(values["sign_ip"], f"{where} sign_ip")
    return Profile(name=name, **values)


def load(path: Path) -> tuple[dict[str, Profile], Optional[str]]:
    """Profiles by name, and the name of the default profile (or None)."""
    import tomllib  # only when there is a profile file: a knock with flags alone skips it
    try:
        with open(path, "rb") as f:
            doc = tomllib.load(f)
    except OSError as e:
        raise ProfileError(f"{path}: cannot read: {e.strerror}") from None
    except tomllib.TOMLDecodeError as e:
        raise ProfileError(f"{path}: not valid TOML: {e}") from None
    unknown = sorted(set(doc) - {"default", "profiles"})
    if unknown:
        raise ProfileError(f"{path}: unknown key {unknown[0]!r} "
                           "(known: default, [profiles.NAME])")
    tables = doc.get("profiles", {})
    if not isinstance(tables, dict):
        raise ProfileError(f"{path}: profiles must be tables, [profiles.NAME]")
    profiles = {name: _profile(path, name, table) for name, table in tables.items()}
    default = doc.get("default")
    if default is not None and default not in profiles:
        raise ProfileError(f"{path}: default = {default!r} names no [profiles.NAME] table")
    return profiles, default


def select(profiles: dict[str, Profile], default: Optional[str], path: Path,
           wanted: Optional[str], host: Optional[str]) -> Optional[Profile]:
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

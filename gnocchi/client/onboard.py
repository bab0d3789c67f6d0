"""`gnocchi-knock --add 'gnocchi://...'`: onboarding in one line (docs/client.md).

Trusts the line only as far as gnocchi.shared.onboarding checks it (the
fingerprint and the knock port must be the key's, the request the verifier's
grammar, the host a plain name or address), and the user's files not at all:
the profile is written into knock.toml as text, every other byte kept, and
the new file must load with gnocchi.client.profile's own loader, holding the
old profiles (but this host's) and this one exactly, before it durably
replaces the old file. Running the same line again (or a rotation's new one)
replaces that profile and nothing else. The ssh block, `ProxyCommand` with
this very program's absolute path (a venv or pipx install works as it is),
is appended to ~/.ssh/config unless a `Host` line for the host is already
there. Nothing secret is read from the line or written anywhere.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import stat
import sys

from gnocchi.client import profile
from gnocchi.shared import durable, keys, onboarding


class AddError(Exception):
    """Nothing was changed; str() says why."""


def toml_string(text: str) -> str:
    return json.dumps(text)  # JSON's escapes are TOML basic-string escapes


def header(name: str) -> re.Pattern:
    """The line that opens [profiles.NAME], however it is quoted or spaced."""
    quoted = rf"(?:{re.escape(name)}|\"{re.escape(name)}\"|'{re.escape(name)}')"
    return re.compile(rf"^[ \t]*\[[ \t]*profiles[ \t]*\.[ \t]*{quoted}[ \t]*\][ \t]*(?:#.*)?$")


def without_profile(text: str, name: str) -> str:
    """text without the [profiles.NAME] table (its header up to the next header)."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if header(name).match(line)]
    if len(starts) > 1:
        raise AddError(f"[profiles.{name}] appears {len(starts)} times; edit the file by hand")
    if not starts:
        return text
    end = next(
        (i for i in range(starts[0] + 1, len(lines)) if re.match(r"^[ \t]*\[", lines[i])),
        len(lines),
    )
    return "".join(lines[: starts[0]] + lines[end:])


def profile_text(o: onboarding.Onboarding, client_key_file: str) -> str:
    lines = [
        f"[profiles.{toml_string(o.host)}]",
        f"host = {toml_string(o.host)}",
        f'server_public_key = "{o.public.hex()}"  # fingerprint '
        f"{keys.fingerprint(o.public)}, knock port {o.port}",
        f"client_key_file = {toml_string(client_key_file)}",
    ]
    if o.next_public:
        lines.append(
            f'next_server_public_key = "{o.next_public.hex()}"  # fingerprint '
            f"{keys.fingerprint(o.next_public)}: a rotation's next key, knocked with"
        )
    if o.request:
        lines.append(f"request = {toml_string(o.request)}")
    return "\n".join(lines) + "\n"


def write_profile(path: str, o: onboarding.Onboarding, client_key_file: str) -> None:
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
        old = profile.load(path)[0]
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except FileNotFoundError:
        text, old, mode = "", {}, 0o600
        keys.make_private_dirs(os.path.dirname(os.path.abspath(path)))
    kept = without_profile(text, o.host).rstrip("\n")
    new_text = (kept + "\n\n" if kept else "") + profile_text(o, client_key_file)

    def check(tmp: str) -> None:
        new = profile.load(tmp)[0]
        mine = new.get(o.host)
        if (
            mine is None
            or mine.server_public_key != o.public
            or mine.host != o.host
            or {n: p for n, p in new.items() if n != o.host}
            != {n: p for n, p in old.items() if n != o.host}
        ):
            raise AddError(
                f"{path}: the edit would change more than profile {o.host} (the file "
                "is written in a way this tool does not follow); add it by hand"
            )

    durable.replace_file(path, new_text.encode("utf-8"), mode, check=check)


def own_command() -> str:
    """This program as ssh's ProxyCommand must run it: its absolute path (as it was
    started: a venv's or pipx's link stays the link), or `python3 -m` with the
    package's directory on PYTHONPATH when started that way."""
    argv0 = os.path.abspath(sys.argv[0])
    if os.path.basename(argv0).startswith("gnocchi-knock") and os.access(argv0, os.X_OK):
        command = shlex.quote(argv0)
    else:
        import gnocchi

        root = os.path.dirname(os.path.dirname(os.path.abspath(gnocchi.__file__)))
        command = (
            f"env PYTHONPATH={shlex.quote(root)} {shlex.quote(sys.executable)} "
            "-m gnocchi.client.knock"
        )
    return command.replace("%", "%%")  # ssh expands %-tokens in ProxyCommand


def add_ssh_block(path: str, host: str) -> str:
    """Append `Host host` with the ProxyCommand to ssh's config; what was done."""
    try:
        with open(path, encoding="utf-8") as f:
            text = f.read()
    except FileNotFoundError:
        text = ""
        keys.make_private_dirs(os.path.dirname(os.path.abspath(path)))
    proxy = f"ProxyCommand {own_command()} --proxy %h %p"
    if any(
        line.split()[1:] == [host] and line.split()[0].lower() == "host"
        for line in text.splitlines()
        if line.split()
    ):
        if proxy in text:
            return f"{path} has `Host {host}` already: `ssh {host}` knocks by itself"
        return (
            f"{path} already has a `Host {host}` block, left as it is (for ssh to knock "
            f"by itself, it needs: {proxy})"
        )
    block = f"Host {host}\n    {proxy}\n"
    new_text = (
        text
        + ("\n" if text and not text.endswith("\n") else "")
        + ("\n" if text.strip() else "")
        + block
    )
    mode = stat.S_IMODE(os.stat(path).st_mode) if text else 0o600
    durable.replace_file(path, new_text.encode("utf-8"), mode)
    return f"added `Host {host}` to {path}: `ssh {host}` knocks by itself"


def add(line: str, config_path: str, client_key_file: str | None, ssh_config: str) -> str:
    """Write the profile and the ssh block for line; what was done, in words."""
    try:
        o = onboarding.parse(line)
    except ValueError as e:
        raise AddError(f"the line: {e}") from None
    config_dir = os.path.dirname(os.path.abspath(config_path))
    key_file = os.path.abspath(client_key_file or os.path.join(config_dir, "client.key"))
    try:
        keys.load_secret(key_file)
    except keys.KeyFileError as e:
        raise AddError(
            f"{e}; make your key first: gnocchi-knock --keygen "
            "(then give its public key to the server's admin)"
        ) from None
    shown_key = (
        os.path.relpath(key_file, config_dir)
        if os.path.dirname(key_file) == config_dir
        else key_file
    )
    write_profile(config_path, o, shown_key)
    done = ssh_config and add_ssh_block(ssh_config, o.host)
    return (
        f"wrote profile {o.host} to {config_path} (server public key fingerprint "
        f"{keys.fingerprint(o.public)}, knock port {o.port})" + (f"; {done}" if done else "")
    )

"""`gnocchi protect PORT[/tcp|/udp]...` and `gnocchi unprotect PORT[/tcp|/udp]...`.

The ports gnocchi guards are [protect] in gnocchi.toml (tcp = [22], udp = []).
These commands change that table, and then apply the config as `gnocchi
reload` does (gnocchi/admin/reload.py: the table is reloaded if armed, in one
transaction that keeps pending knocks), so allowing a client a port and
guarding it are one command each. A config without [protect] (one from
gnocchi 0.3) gets one, holding the ports it protected until then (the
protected sets of 0.3's /etc/gnocchi/gnocchi.nft, or tcp 22), plus or minus
these.

Trusts the command line only after checking it (PORT[/tcp|/udp], the
request grammar's) and the config file not at all: the edit is made on the
text with add-client's editor (gnocchi/admin/clients.py: every other byte
stays, the new file must load with the verifier's loader and differ in
[protect] alone, then replaces the old one durably). Refuses, changing
nothing, to protect the knock port (knocks would need a knock) and to leave
no client a protected port it may open (nobody could knock in).
"""

from __future__ import annotations

import argparse
import os
import re
import subprocess
import sys

from gnocchi.admin import clients, nft_table
from gnocchi.admin.clients import EditError
from gnocchi.server import config as server_config
from gnocchi.server import keyring
from gnocchi.shared import keys, knock_request

_HEADER = re.compile(r"^[ \t]*\[[ \t]*protect[ \t]*\][ \t]*(?:#.*)?$")
_ANY_HEADER = re.compile(r"^[ \t]*\[")
_CONTENT = re.compile(r"^[ \t]*[^ \t#\r\n]")


def _key(proto: str) -> re.Pattern:
    return re.compile(rf"^[ \t]*{proto}[ \t]*=")


def _one_line(proto: str) -> re.Pattern:
    """`tcp = [22, 2222]  # comment`: (indent, comment) around a one-line list."""
    return re.compile(rf"^([ \t]*){proto}[ \t]*=[ \t]*\[[^\]#\n]*\]([ \t]*(?:#.*)?)(\r?\n?)$")


def protect_line(
    proto: str, ports: list[int], indent: str = "", comment: str = "", end: str = "\n"
) -> str:
    return f"{indent}{proto} = [{', '.join(map(str, ports))}]{comment}{end}"


def edited_text(text: str, wanted: dict[str, list[int]]) -> str:
    """text with [protect] holding wanted; nothing else changes. Without a [protect]
    table, one is appended."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if _HEADER.match(line)]
    if not starts:
        if text and not text.endswith("\n"):
            text += "\n"
        return (
            text + "\n# The ports gnocchi protects (`gnocchi protect`, `gnocchi unprotect`).\n"
            "[protect]\n" + "".join(protect_line(p, wanted[p]) for p in wanted)
        )
    if len(starts) > 1:
        raise EditError(f"[protect] appears {len(starts)} times")
    start = starts[0]
    end = start + 1
    while end < len(lines) and not _ANY_HEADER.match(lines[end]):
        end += 1
    last = max([i for i in range(start + 1, end) if _CONTENT.match(lines[i])], default=start)
    inserted = []
    for proto, ports in wanted.items():
        found = [i for i in range(start + 1, end) if _key(proto).match(lines[i])]
        if not found:
            inserted.append(protect_line(proto, ports))
            continue
        match = _one_line(proto).match(lines[found[0]])
        if len(found) > 1 or not match:
            raise EditError(f"protect.{proto} is not one `{proto} = [...]` line")
        lines[found[0]] = protect_line(proto, ports, *match.groups())
    if inserted and not lines[last].endswith("\n"):
        lines[last] += "\n"
    return "".join(lines[: last + 1] + inserted + lines[last + 1 :])


def parse_ports(items: list[str]) -> list[knock_request.Open]:
    ports = []
    for item in items:
        port = knock_request.parse_port(item)
        if port is None:
            raise EditError(f"{item!r} is not PORT, PORT/tcp or PORT/udp")
        ports.append(port)
    return ports


def change(
    path: str, ports: list[knock_request.Open], protect: bool
) -> tuple[server_config.Config | None, list[str]]:
    """Protect (or unprotect) ports in the config at path; (the new config, or None
    when [protect] already says so; warnings)."""
    current = clients.load_checked(os.path.realpath(path), path)
    found = nft_table.protected_ports(current, path, forwards=False)  # [protect] alone
    listens = {f.listen: f.name for f in current.forwards}
    wanted = {proto: list(found.protected.get(proto, [])) for proto in server_config.PROTOCOLS}
    for o in ports:
        if protect and o.port not in wanted[o.proto]:
            wanted[o.proto].append(o.port)
        elif not protect and o.port in wanted[o.proto]:
            wanted[o.proto].remove(o.port)
    kept = [
        f"{o.port}/{o.proto} is forwards.{listens[o]}'s listen port: it stays protected "
        "while that forward is in the config"
        for o in ports
        if not protect and o in listens
    ]
    if current.protect is not None and wanted == {p: list(v) for p, v in current.protect.items()}:
        return None, kept
    if protect:
        try:  # every key's knock port (docs/PROTOCOL.md: v1, v2, a rotation's next)
            knock_ports = keyring.ports(keyring.load(current))
        except keys.KeyFileError:
            knock_ports = []
        for port in knock_ports:
            if port in wanted["udp"]:
                raise EditError(
                    f"{port}/udp is the knock port: protected, every knock would need a knock first"
                )
    usable = [
        c.name
        for c in current.clients
        for o in c.allow
        if o.port in wanted[o.proto] or o in listens
    ]
    if current.clients and not usable:
        raise EditError(
            f"no client could open a protected port then "
            f"({nft_table.show_ports(wanted)}), so nobody could knock in; let a "
            "client open one first (its allow list), or protect one it may open"
        )

    def expect(old, new):
        return new.protect == {p: tuple(v) for p, v in wanted.items()}

    def edited(text):
        try:
            return edited_text(text, wanted)
        except EditError as e:
            raise EditError(f"{path}: {e}; edit [protect] by hand, then `gnocchi reload`") from None

    cfg = clients.edit(path, edited, expect, field="protect")
    warnings = kept
    if current.protect is None and os.path.exists(nft_table.legacy_file(path)):
        warnings.append(
            f"the ports of {nft_table.legacy_file(path)} (the table file of "
            f"gnocchi 0.3 and before) are in [protect] in {path} now; that file is "
            "no longer read: delete it"
        )
    for o in ports:
        allowed = [c.name for c in cfg.clients if o in c.allow]
        if protect and not allowed:
            warnings.append(
                f"no client may open {o.port}/{o.proto}: it is closed to everyone "
                "now; add it to a client's allow list to let one knock for it"
            )
        elif not protect and allowed and o not in listens:
            warnings.append(
                f"{o.port}/{o.proto} is open to everyone now, as your own rules "
                f"make it, and {', '.join(allowed)} may no longer knock for it "
                "(remove it from their allow lists)"
            )
    return cfg, warnings


def parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gnocchi {command}")
    p.add_argument(
        "--config",
        default=server_config.DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the config to edit (default {server_config.DEFAULT_CONFIG})",
    )
    p.add_argument("ports", nargs="+", metavar="PORT[/tcp|/udp]", help="a port (PORT is PORT/tcp)")
    if command == "protect":
        p.description = (
            "Protect ports: add them to [protect] in gnocchi.toml (the rest of "
            "the file is kept as it is) and reload the table if armed. A new "
            "connection to a protected port then needs a knock."
        )
    else:
        p.description = (
            "Stop protecting ports: remove them from [protect] in gnocchi.toml "
            "and reload the table if armed. They are then as open as your own "
            "firewall rules make them."
        )
    return p


def main(argv: list[str]) -> int:
    """argv: ["protect"|"unprotect", ARGS...], as gnocchi/admin/__main__.py passes it."""
    command = argv[0]
    args = parser(command).parse_args(argv[1:])
    try:
        ports = parse_ports(args.ports)
        cfg, warnings = change(args.config, ports, command == "protect")
        if cfg is None:
            print(
                f"gnocchi {command}: nothing to change: [protect] in {args.config} already says so",
                file=sys.stderr,
            )
            return 0
        shown = nft_table.show_ports({p: list(v) for p, v in cfg.protect.items()})
        print(
            f"gnocchi {command}: [protect] in {args.config} now protects {shown}; "
            f"{clients.applied(args.config)}",
            file=sys.stderr,
        )
        for warning in warnings:
            print(f"gnocchi {command}: warning: {warning}", file=sys.stderr)
    except (EditError, nft_table.TableError, OSError, subprocess.SubprocessError) as e:
        print(f"gnocchi {command}: {e}", file=sys.stderr)
        return 1
    return 0

"""`gnocchi add-client NAME PUBKEY [--allow PORT...]` and `gnocchi remove-client NAME`.

Trusts the admin's command line only after checking it (the name, the key,
the ports, by the config's own rules) and the config file not at all: the
edit is made on the text, so every other byte (comments, order, spacing)
stays as the admin wrote it, and the whole new file must load with
gnocchi.server.config's own loader, holding exactly the old clients plus (or
minus) this one, before it durably replaces the old file with the same
owner and mode. The new config is then applied as `gnocchi reload` applies
one (gnocchi/admin/reload.py: kept as the last good config, so that a broken
edit later never brings a removed client back; the table reloaded if armed;
a running verifier restarted, keeping the knocks queued in its socket), and
the command returns once the old verifier has exited, so a removed client is
out when it says so; remove-client then withdraws the openings its knocks
left pending in the live table (the helper names each opening's client in its
nft comment), so it cannot use one either. add-client says which of the client's ports are not
protected (open to everyone, and refused to the client), with the command
that protects them, and prints what the client needs: a knock.toml profile
whose request opens every port it was allowed, and a ~/.ssh/config block,
with the server key's fingerprint; never the server key itself.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import os
import re
import socket
import stat
import subprocess
import sys

from gnocchi.admin import nft_table
from gnocchi.server import config as server_config
from gnocchi.server import keyring
from gnocchi.shared import durable, keys, knock_request

DEFAULT_ALLOW = "22/tcp"


class EditError(Exception):
    """The config was not changed; str() says why and what to do."""


def header(name: str) -> re.Pattern:
    """The line that opens [clients.NAME], however it is spaced or quoted."""
    quoted = rf"(?:{re.escape(name)}|\"{re.escape(name)}\"|'{re.escape(name)}')"
    return re.compile(rf"^[ \t]*\[[ \t]*clients[ \t]*\.[ \t]*{quoted}[ \t]*\][ \t]*(?:#.*)?$")


_ANY_HEADER = re.compile(r"^[ \t]*\[")
_CONTENT = re.compile(r"^[ \t]*[^ \t#\r\n]")


def added_text(text: str, name: str, public_hex: str, allow: list[str]) -> str:
    """text with a [clients.NAME] table appended; nothing else changes."""
    ports = ", ".join(f'"{p}"' for p in allow)
    if text and not text.endswith("\n"):
        text += "\n"
    key = f'"{name}"' if "." in name else name  # bare, a dot would nest tables (NAME has no quotes)
    return text + f'\n[clients.{key}]\npublic_key = "{public_hex}"\nallow = [{ports}]\n'


def removed_text(text: str, name: str) -> str:
    """text without the [clients.NAME] table: its header, its keys, and the blank
    line before it; comments and blank lines after its last key stay (they
    may be about what follows). Undoes added_text exactly."""
    lines = text.splitlines(keepends=True)
    starts = [i for i, line in enumerate(lines) if header(name).match(line)]
    if len(starts) != 1:
        raise EditError(
            f"no [clients.{name}] table header in the file"
            if not starts
            else f"[clients.{name}] appears {len(starts)} times"
        )
    start = end = starts[0]
    for i in range(start + 1, len(lines)):
        if _ANY_HEADER.match(lines[i]):
            break
        if _CONTENT.match(lines[i]):
            end = i
    end += 1
    if start > 0 and not lines[start - 1].strip() and (end == len(lines) or not lines[end].strip()):
        start -= 1
    return "".join(lines[:start] + lines[end:])


def load_checked(path: str, shown: str) -> server_config.Config:
    """The config at path, loaded as the verifier loads it; errors name `shown`."""
    try:
        return server_config.load(path)
    except server_config.ConfigError as e:
        raise EditError(str(e).replace(path, shown, 1)) from None


def _same(a: server_config.Config, b: server_config.Config, field: str = "clients") -> bool:
    """Everything but field (and the path it was read from) is the same."""

    def rest(c):
        return dataclasses.replace(c, path="", **{field: None})

    return rest(a) == rest(b)


@contextlib.contextmanager
def locked(path: str):
    """A lock on the config's directory, so two edits never lose one another."""
    lock = os.open(os.path.dirname(path), os.O_RDONLY | os.O_CLOEXEC)
    try:
        durable.lock_exclusive(lock)
        yield
    finally:
        os.close(lock)


def edit(path: str, change, expect, field: str = "clients") -> server_config.Config:
    """Replace the config at path with change(old text), durably, same owner and mode,
    if the result loads, differs from the old config in field alone, and expect(old
    config, new config) holds; returns the new config. Holds a lock on the config's
    directory, so two edits never lose one another."""
    path = os.path.realpath(path)
    with locked(path):
        old = load_checked(path, path)  # a broken config is the admin's to fix first
        with open(path, "rb") as f:
            raw = f.read()
        st = os.stat(path)
        try:
            text = raw.decode("utf-8")
        except UnicodeDecodeError:
            raise EditError(f"{path}: not valid UTF-8") from None
        new_text = change(text)
        result = {}

        def check(tmp: str) -> None:
            new = load_checked(tmp, f"{path} (as it would be after the change)")
            if not (_same(old, new, field) and expect(old, new)):
                what = "that client" if field == "clients" else f"[{field}]"
                raise EditError(
                    f"{path}: the edit would change more than {what} "
                    "(the file is written in a way this tool does not follow); "
                    "edit it by hand, then `gnocchi reload`"
                )
            result["config"] = new

        durable.replace_file(
            path,
            new_text.encode("utf-8"),
            stat.S_IMODE(st.st_mode),
            owner=(st.st_uid, st.st_gid),
            check=check,
        )
        return result["config"]


def checked_client(
    path: str, name: str, public_hex: str, allow: list[str]
) -> tuple[bytes, list[str]]:
    """(public key, ports as PORT/PROTO) of a client that may be added to the config at
    path, or EditError saying why not."""
    if not server_config.NAME.fullmatch(name):
        raise EditError(
            f"client name {name!r}: use letters, digits, _ . - "
            "(at most 64, starting with a letter or digit)"
        )
    try:
        public = keys.parse_public_hex(public_hex, "PUBKEY")
    except ValueError as e:
        raise EditError(f"{e}; a new client makes its key with gnocchi-knock --keygen") from None
    current = load_checked(os.path.realpath(path), path)
    forwards = {f.name for f in current.forwards}
    ports = []
    for item in allow or [DEFAULT_ALLOW]:
        port = knock_request.parse_port(item)
        if port is None and item not in forwards:
            raise EditError(
                f"--allow {item!r} is not PORT, PORT/tcp or PORT/udp"
                + (f" nor a forward ({', '.join(sorted(forwards))})" if forwards else "")
            )
        ports.append(item if port is None else f"{port.port}/{port.proto}")
    for client in current.clients:
        where = path if client.file == current.path else client.file  # a drop-in, or the file
        if client.name == name:
            raise EditError(
                f"{where}: there is already a client {name}; "
                f"gnocchi remove-client {name} first to replace it"
            )
        if client.public_key == public:
            raise EditError(f"{where}: this key is already client {client.name}'s")
    # Never write a secret into the config (world-readable): the key's kind first.
    try:
        server_keys = keyring.secrets(keyring.load(current))
    except keys.KeyFileError:
        server_keys = ()  # unreadable here: `gnocchi check` names that
    known = {c.public_key: c.name for c in current.clients}
    if problem := keys.public_key_problem(public, server_keys, known):
        raise EditError(f"PUBKEY: {problem}; nothing was written; fix: {keys.public_key_fix(name)}")
    return public, ports


def added(name: str, public: bytes):
    """expect() of an edit that adds client name with key public."""

    def expect(old, new):
        before = {c.name: c for c in old.clients}
        after = {c.name: c for c in new.clients}
        return (
            set(after) == set(before) | {name}
            and after[name].public_key == public
            and all(after[n] == before[n] for n in before)
        )

    return expect


def add(path: str, name: str, public_hex: str, allow: list[str]) -> server_config.Config:
    public, ports = checked_client(path, name, public_hex, allow)
    return edit(path, lambda text: added_text(text, name, public.hex(), ports), added(name, public))


def add_drop_in(
    path: str, name: str, public_hex: str, allow: list[str]
) -> tuple[server_config.Config, str]:
    """Add the client as its own file, clients.d/NAME.toml beside the config (as a
    config-management tool would), owned as the config is, mode 0644; the config is not
    touched. (the new config, the drop-in's path)."""
    public, ports = checked_client(path, name, public_hex, allow)
    path = os.path.realpath(path)
    directory = server_config.drop_in_dir(path)
    target = os.path.join(directory, f"{name}.toml")
    text = added_text("", name, public.hex(), ports).lstrip("\n")
    with locked(path):
        old = load_checked(path, path)
        if os.path.lexists(target):
            raise EditError(f"{target} is there already; remove it first")
        st = os.stat(path)
        if not os.path.isdir(directory):
            os.mkdir(directory, 0o755)
            os.chown(directory, st.st_uid, st.st_gid)
            os.chmod(directory, 0o755)  # the umask may have taken bits
        durable.replace_file(target, text.encode("utf-8"), 0o644, owner=(st.st_uid, st.st_gid))
        try:
            new = load_checked(path, path)
            if not added(name, public)(old, new):
                raise EditError(
                    f"{target}: the config it makes is not the old one plus client {name}"
                )
        except EditError:
            os.unlink(target)  # leave the config as it was
            durable.fsync_dir(directory)
            raise
    return new, target


def remove(path: str, name: str, drop_in: bool = False) -> tuple[server_config.Config, str]:
    """Remove client name from the file it is configured in: its table from the config,
    or its drop-in (drop_in: only a drop-in). (the new config, the file changed)."""
    current = load_checked(os.path.realpath(path), path)
    if name not in {c.name for c in current.clients}:
        known = ", ".join(c.name for c in current.clients) or "none"
        raise EditError(f"{path}: no client {name} (clients: {known})")
    client = next(c for c in current.clients if c.name == name)
    if client.file != current.path:
        return remove_drop_in(path, name), client.file
    if drop_in:
        raise EditError(
            f"client {name} is in {path}, not in a drop-in; "
            f"gnocchi remove-client {name} (without --drop-in) removes it"
        )
    return remove_table(path, name), path


def remove_drop_in(path: str, name: str) -> server_config.Config:
    """Delete client name's drop-in; the config must then hold every other client as before."""
    path = os.path.realpath(path)
    with locked(path):
        old = load_checked(path, path)
        client = next(c for c in old.clients if c.name == name)
        os.unlink(client.file)
        durable.fsync_dir(os.path.dirname(client.file))
        new = load_checked(path, path)
    if {c.name: c for c in new.clients} != {c.name: c for c in old.clients if c.name != name}:
        raise EditError(
            f"{client.file} is removed, but the config changed more than that "
            "meanwhile: `gnocchi check` shows it"
        )
    return new


def remove_table(path: str, name: str) -> server_config.Config:

    def change(text):
        try:
            return removed_text(text, name)
        except EditError as e:
            raise EditError(f"{path}: {e}; edit it by hand") from None

    def expect(old, new):
        return {c.name: c for c in new.clients} == {
            c.name: c for c in old.clients if c.name != name
        }

    return edit(path, change, expect)


def applied(path: str) -> str:
    """Apply the edited config as `gnocchi reload` does; what happened, in words."""
    from gnocchi.admin import reload

    try:
        return "; ".join(reload.apply(path))
    except reload.ApplyError as e:
        raise EditError(f"the config is written, but: {e}") from None


def withdraw(name: str) -> str:
    """Delete the openings pending for client name in the live table (knocks of its
    that no connection used yet), in one transaction; what happened, in words."""
    for _ in range(nft_table.RETRIES):
        live = nft_table.live()
        mine = [p for p in live.pending() if p.client == name] if live else []
        if not mine:
            return f"no opening pending for {name}" if live else "no table loaded: nothing pending"
        script = "".join(
            f"delete element {nft_table.FAMILY} {nft_table.NAME} "
            f"{nft_table.KNOCKED[p.address.version]} {{ {p.nft_value()} }}\n"
            for p in mine
        )
        if nft_table.nft("-f", "-", input=script).returncode == 0:
            return f"withdrew the {len(mine)} opening{'s' * (len(mine) != 1)} pending for {name}"
        # One was used or expired between the read and the delete: read again.
    raise EditError(
        f"the config is written, but {name}'s pending openings kept changing during "
        f"{nft_table.RETRIES} attempts to withdraw them; run the command again"
    )


def unprotected(cfg: server_config.Config, path: str, name: str) -> list[str]:
    """Warnings for each port client name may open that is not protected."""
    from gnocchi.admin import check, nft_table

    try:
        protected = nft_table.protected_ports(cfg, path).protected
    except nft_table.TableError as e:
        return [f"cannot tell which ports are protected: {e}"]
    client = next(c for c in cfg.clients if c.name == name)
    return [
        f"clients.{name}.allow: " + check.unprotected(o.port, o.proto)
        for o in client.allow
        if not nft_table.covers(protected.get(o.proto, []), o.port)
    ]


def client_files(cfg: server_config.Config, name: str, host: str) -> str:
    """What the client puts in its files: a knock.toml profile, a ~/.ssh/config block, and
    how to get the server key. Every line is a TOML and ssh_config comment or belongs to
    the block it follows, so each block can be appended as it is."""
    client = next(c for c in cfg.clients if c.name == name)
    try:
        fingerprint = keys.fingerprint(keys.load_server_key(cfg.server_key_file))
    except keys.KeyFileError as e:
        fingerprint = f"unknown ({e})"
    server_key = f"{host}.server.key"
    opens = [f"{o.port}/{o.proto}" for o in client.allow]
    request = (
        (
            f'\nrequest = "{client_request(client)}"'
            + (
                f"  # also allowed: {' '.join(opens[knock_request.MAX_PORTS :])}"
                if opens[knock_request.MAX_PORTS :]
                else ""
            )
        )
        if opens
        else ""
    )
    sign_ip = (
        f'\nsign_ip = "{cfg.server_addresses[0]}"  # the address the server accepts'
        if cfg.server_addresses
        else ""
    )
    return f"""\
# ---- client {name}: append to ~/.config/gnocchi/knock.toml ----
[profiles."{host}"]
host = "{host}"
server_key_file = "{server_key}"  # server key fingerprint {fingerprint}
client_key_file = "client.key"{request}{sign_ip}
# ---- client {name}: append to ~/.ssh/config ----
Host {host}
    ProxyCommand gnocchi-knock --proxy %h %p
# ---- client {name}: the server key ----
# Copy {cfg.server_key_file} from this server to ~/.config/gnocchi/{server_key}
# (mode 0600) over a channel you trust: it is a secret every client shares.
# `gnocchi-knock -v` must then show the fingerprint {fingerprint}.
"""


def client_request(client: server_config.Client) -> str:
    """The request a client's profile knocks with: one knock opens every port the admin
    allowed (as many as a request holds); "" for none."""
    opens = [f"{o.port}/{o.proto}" for o in client.allow][: knock_request.MAX_PORTS]
    return f"open {' '.join(opens)}" if opens else ""


def onboarding_line(cfg: server_config.Config, name: str, host: str) -> str | None:
    """The one line the client runs (docs/client.md, "Onboarding in one line"), when
    this server has a v2 key; None for a v1-only server."""
    if not cfg.private_key_file:
        return None
    from gnocchi.shared import onboarding

    client = next(c for c in cfg.clients if c.name == name)
    request = client_request(client)
    try:
        public = keys.load_private_key(cfg.private_key_file)[0]
    except keys.KeyFileError as e:
        raise EditError(f"the client is added, but no line can be made: {e}") from None
    try:
        line = onboarding.make_line(host, public, request)
    except ValueError as e:
        raise EditError(
            f"the client is added, but --host {e}; run add-client again with "
            "another --host after remove-client"
        ) from None
    return f"""\
# ---- client {name}: run this one line on {name}'s machine (nothing in it is secret) ----
gnocchi-knock --add '{line}'
# It writes a knock.toml profile and a ~/.ssh/config block; `ssh {host}` then knocks by
# itself. The line carries this server's public key and its fingerprint
# {keys.fingerprint(public)}, which `gnocchi-knock -v` shows with each knock.
"""


def host_name(text: str) -> str:
    """A host name or address as it may appear in the printed files."""
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9.:-]{0,252}", text):
        raise argparse.ArgumentTypeError(f"{text!r} is not a host name or address")
    return text


def parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gnocchi {command}")
    p.add_argument(
        "--config",
        default=server_config.DEFAULT_CONFIG,
        metavar="FILE",
        help=f"the config to edit (default {server_config.DEFAULT_CONFIG})",
    )
    p.add_argument("name", metavar="NAME", help="the client's name, as the journal shows it")
    if command == "add-client":
        p.description = (
            "Add a client to gnocchi.toml (a [clients.NAME] table at the end; "
            "the rest of the file is kept as it is) or, with --drop-in, as its "
            "own file clients.d/NAME.toml; reload a running verifier, "
            "and print the client's knock.toml profile and ~/.ssh/config block."
        )
        p.add_argument(
            "--drop-in",
            action="store_true",
            help="write the client to its own file, clients.d/NAME.toml beside the "
            "config, rather than into the config",
        )
        p.add_argument(
            "public_key",
            metavar="PUBKEY",
            help=f"the client's public key (`{keys.PRINT_PUBKEY}` prints it on the client)",
        )
        p.add_argument(
            "--allow",
            action="extend",
            nargs="+",
            metavar="PORT[/tcp|/udp]",
            help=f"what the client may open (default {DEFAULT_ALLOW}); or a "
            "[forwards.NAME] by its name",
        )
        p.add_argument(
            "--host",
            type=host_name,
            default=None,
            help="this server's name or address as the client reaches it "
            "(default: this host's name, as hostname prints it)",
        )
    else:
        p.description = (
            "Remove a client: its [clients.NAME] table from gnocchi.toml (nothing "
            "else changes), or its drop-in clients.d/NAME.toml; then reload a "
            "running verifier."
        )
        p.add_argument(
            "--drop-in",
            action="store_true",
            help="only a client of a drop-in (clients.d/NAME.toml): refuse one "
            "written in the config itself",
        )
    return p


def main(argv: list[str]) -> int:
    """argv: ["add-client"|"remove-client", ARGS...], as gnocchi/admin/__main__.py passes it."""
    command = argv[0]
    args = parser(command).parse_args(argv[1:])
    try:
        if command == "add-client":
            host = args.host or socket.gethostname()
            if args.drop_in:
                cfg, where = add_drop_in(args.config, args.name, args.public_key, args.allow)
            else:
                cfg, where = add(args.config, args.name, args.public_key, args.allow), args.config
            print(
                f"gnocchi {command}: added [clients.{args.name}] to {where}; "
                f"{applied(args.config)}",
                file=sys.stderr,
            )
            for warning in unprotected(cfg, args.config, args.name):
                print(f"gnocchi {command}: warning: {warning}", file=sys.stderr)
            print(
                onboarding_line(cfg, args.name, host) or client_files(cfg, args.name, host), end=""
            )
        else:
            _, where = remove(args.config, args.name, args.drop_in)
            what = (
                f"removed {where}"
                if where != os.path.realpath(args.config)
                else f"removed [clients.{args.name}] from {args.config}"
            )
            try:
                print(
                    f"gnocchi {command}: {what}; {applied(args.config)}; {withdraw(args.name)}",
                    file=sys.stderr,
                )
            except nft_table.TableError as e:
                print(
                    f"gnocchi {command}: {what}, but its pending openings could not be "
                    f"withdrawn: {e}",
                    file=sys.stderr,
                )
                return 1
    except (EditError, OSError, subprocess.SubprocessError) as e:
        print(f"gnocchi {command}: {e}", file=sys.stderr)
        return 1
    return 0

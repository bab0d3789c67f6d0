"""`gnocchi rotate-key`: a new v2 server key without a flag day (docs/server.md, "Key rotation").

    gnocchi rotate-key [--overlap DAYS] [--same-port]   make the next key; both keys open
                                                        knocks, on both knock ports, until
                                                        the overlap ends
    gnocchi rotate-key --lines                          each client's onboarding line
    gnocchi rotate-key --finish [--force]               the next key becomes the key; the
                                                        old one is deleted

Trusts the admin's command line and config (loaded with gnocchi.server.config's
own loader, which refuses half a rotation). Guarantees: the next key is a new
file (0600, never over another); the config is edited as text, only the keys of
the rotation, and the result must load as exactly the old config with those
values before it durably replaces it (same owner and mode); then `gnocchi
setup` points gnocchi.socket at both keys' ports and hands gnocchi.service both
keys, and with systemd running the units are reloaded and restarted (the table
keeps its pending knocks and limits floods on both ports). Until the overlap
ends a knock sealed to either key opens what it may; from then on the verifier
refuses the old key's knocks by itself (and names the client), so a rotation
left unfinished fails closed, never open. --finish before the end is refused
unless --force: it would shut out every client still on the old key.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime
import os
import re
import socket
import stat
import subprocess
import sys

from gnocchi.admin import clients, setup
from gnocchi.server import config as server_config
from gnocchi.server import keyring
from gnocchi.shared import durable, keys, onboarding
from gnocchi.shared.protocol import knock_port, public_key

DEFAULT_OVERLAP_DAYS = 30
_SETTING = re.compile(r"^[ \t]*(next_private_key_file|rotation_ends|private_key_file)[ \t]*=")
_TABLE = re.compile(r"^[ \t]*\[")


class RotateError(Exception):
    """Nothing (more) was changed; str() says why and what to do."""


def edited(text: str, settings: dict[str, str | None]) -> str:
    """text with each top-level setting set to its TOML value (None: removed); new
    ones go before the first table, where top-level keys must be."""
    lines = text.splitlines(keepends=True)
    first_table = next((i for i, line in enumerate(lines) if _TABLE.match(line)), len(lines))
    out, done = [], set()
    for i, line in enumerate(lines):
        found = _SETTING.match(line) if i < first_table else None
        if found and found.group(1) in settings:
            done.add(found.group(1))
            if settings[found.group(1)] is not None:
                out.append(f"{found.group(1)} = {settings[found.group(1)]}\n")
            continue
        if i == first_table:
            out += [f"{k} = {v}\n" for k, v in settings.items() if v is not None and k not in done]
            done |= set(settings)
        out.append(line)
    if first_table == len(lines):
        if out and not out[-1].endswith("\n"):
            out[-1] += "\n"
        out += [f"{k} = {v}\n" for k, v in settings.items() if v is not None and k not in done]
    return "".join(out)


def write_config(path: str, old: server_config.Config, **values) -> server_config.Config:
    """Set values in the config file at path; the new file must load as old with them."""
    with open(path, encoding="utf-8") as f:
        text = f.read()
    st = os.stat(path)
    toml = {
        k: None if v is None else (f'"{v}"' if isinstance(v, str) else v.isoformat())
        for k, v in values.items()
    }
    want = dataclasses.replace(old, **values)

    def check(tmp: str) -> None:
        if dataclasses.replace(server_config.load(tmp), path=old.path) != want:
            raise RotateError(
                f"{path}: the edit would change more than the rotation's keys "
                "(the file is written in a way this tool does not follow); set "
                f"{', '.join(values)} by hand"
            )

    durable.replace_file(
        path,
        edited(text, toml).encode("utf-8"),
        stat.S_IMODE(st.st_mode),
        owner=(st.st_uid, st.st_gid),
        check=check,
    )
    return want


def apply(config_path: str, unit_dir: str | None) -> str:
    """`gnocchi setup`, then (systemd running, the real unit directory) the units:
    gnocchi.socket on the ports and the verifier with the keys, the table's flood limit."""
    said = "\n".join(
        line
        for line in setup.setup(config_path, unit_dir or setup.UNIT_DIR).splitlines()
        if line.startswith(("wrote ", "/"))
    )
    if unit_dir is not None or not os.path.isdir("/run/systemd/system"):
        return (
            said + "\nthen: systemctl daemon-reload && systemctl restart gnocchi.socket "
            "&& systemctl reload gnocchi-arm"
        )
    subprocess.run(["systemctl", "daemon-reload"], check=True, timeout=120)
    for unit, verb in (("gnocchi.socket", "restart"), ("gnocchi-arm.service", "reload")):
        if subprocess.run(["systemctl", "is-active", "--quiet", unit], timeout=30).returncode == 0:
            subprocess.run(["systemctl", verb, unit], check=True, timeout=120)
    return said + "\nreloaded: gnocchi.socket (and the verifier), gnocchi-arm (the table)"


def lines(cfg: server_config.Config, host: str) -> str:
    """Each client's onboarding line, with the next key during a rotation."""
    ring = keyring.load(cfg)
    current, nxt = ring.v2[0][0], (ring.v2[1][0] if len(ring.v2) > 1 else None)
    out = []
    for c in cfg.clients:
        out.append(
            f"# {c.name}\ngnocchi-knock --add "
            f"'{onboarding.make_line(host, current, clients.client_request(c), nxt)}'"
        )
    return "\n".join(out) + ("\n" if out else "")


def start(
    config_path: str, overlap: float, same_port: bool, unit_dir: str | None, now: datetime.datetime
) -> str:
    cfg = server_config.load(config_path)
    if not cfg.private_key_file:
        raise RotateError(
            f"{config_path}: no private_key_file, so no v2 key to rotate (make "
            "one: gnocchi keygen --private FILE; docs/PROTOCOL.md)"
        )
    if cfg.next_private_key_file:
        raise RotateError(
            f"{config_path}: a rotation is under way already (to "
            f"{cfg.next_private_key_file}, overlap until "
            f"{cfg.rotation_ends.isoformat()}); `gnocchi rotate-key --finish`"
        )
    current = keys.load_private_key(cfg.private_key_file)[0]
    private = keys.new_private_key(knock_port(current) if same_port else None)
    public = public_key(private)
    path = os.path.join(
        os.path.dirname(cfg.private_key_file),
        f"private-{keys.fingerprint(public).replace('-', '')}.key",
    )
    keys.write_secret(path, private)
    ends = (now + datetime.timedelta(days=overlap)).replace(microsecond=0)
    try:
        write_config(config_path, cfg, next_private_key_file=path, rotation_ends=ends)
    except BaseException:
        os.unlink(path)  # the config was left as it was: so is everything else
        raise
    return (
        f"gnocchi rotate-key: made {path} (v2 public key fingerprint "
        f"{keys.fingerprint(public)}, knock port {knock_port(public)}); both keys open "
        f"knocks until {ends.isoformat()}, the old one nothing after it\n"
        + apply(config_path, unit_dir)
        + "\n"
        "give each client its new line (below; `gnocchi rotate-key --lines` prints them "
        "again); after the overlap: gnocchi rotate-key --finish"
    )


def finish(config_path: str, force: bool, unit_dir: str | None, now: datetime.datetime) -> str:
    cfg = server_config.load(config_path)
    if not cfg.next_private_key_file:
        raise RotateError(f"{config_path}: no rotation under way (gnocchi rotate-key starts one)")
    if now < cfg.rotation_ends and not force:
        raise RotateError(
            f"the overlap lasts until {cfg.rotation_ends.isoformat()}: finishing "
            "now shuts out every client still on the old key; wait, or --force"
        )
    old = cfg.private_key_file
    write_config(
        config_path,
        cfg,
        private_key_file=cfg.next_private_key_file,
        next_private_key_file=None,
        rotation_ends=None,
    )
    said = apply(config_path, unit_dir)
    os.unlink(old)  # it could open every knock ever sealed to it: gone
    durable.fsync_dir(os.path.dirname(os.path.abspath(old)))
    return (
        f"gnocchi rotate-key: {cfg.next_private_key_file} is the server's key now; "
        f"deleted the old key {old}\n{said}"
    )


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="gnocchi rotate-key",
        description="Rotate the v2 server key without a flag day: make a next key that opens "
        "knocks beside the current one until the overlap ends (--finish then "
        "makes it the key); print each client's new onboarding line.",
    )
    p.add_argument("--config", default=server_config.DEFAULT_CONFIG, metavar="FILE")
    what = p.add_mutually_exclusive_group()
    what.add_argument(
        "--finish",
        action="store_true",
        help="after the overlap: the next key becomes the key, the old one is deleted",
    )
    what.add_argument("--lines", action="store_true", help="print each client's line")
    p.add_argument("--force", action="store_true", help="--finish before the overlap ends")
    p.add_argument(
        "--overlap",
        type=float,
        default=DEFAULT_OVERLAP_DAYS,
        metavar="DAYS",
        help=f"how long both keys open knocks (default {DEFAULT_OVERLAP_DAYS} days)",
    )
    p.add_argument(
        "--same-port",
        action="store_true",
        help="draw the next key on the current key's knock port (a few seconds): "
        "no new port for firewalls on the way",
    )
    p.add_argument(
        "--host",
        type=clients.host_name,
        default=None,
        help="this server's name or address in the lines (default: hostname)",
    )
    p.add_argument(
        "--unit-dir",
        metavar="DIR",
        help="write the units' drop-ins there and leave systemd alone (tests)",
    )
    args = p.parse_args(argv[1:])
    now = datetime.datetime.now(datetime.UTC)
    host = args.host or socket.gethostname()
    try:
        if args.lines:
            print(lines(server_config.load(args.config), host), end="")
        elif args.finish:
            print(finish(args.config, args.force, args.unit_dir, now), file=sys.stderr)
            print(lines(server_config.load(args.config), host), end="")
        else:
            if not 0 < args.overlap <= 3650:
                raise RotateError("--overlap is a number of days above 0 and at most 3650")
            print(
                start(args.config, args.overlap, args.same_port, args.unit_dir, now),
                file=sys.stderr,
            )
            print(lines(server_config.load(args.config), host), end="")
    except (
        RotateError,
        server_config.ConfigError,
        keys.KeyFileError,
        ValueError,
        OSError,
        subprocess.SubprocessError,
    ) as e:
        print(f"gnocchi rotate-key: {e}", file=sys.stderr)
        return 1
    return 0

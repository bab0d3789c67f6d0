"""`gnocchi setup`: point gnocchi.socket at the server key's knock port.

Trusts the admin's config file and the server key it names (read through
gnocchi.server.config and gnocchi.shared.keys, which check format and permissions).
Guarantees: it writes the drop-ins
/etc/systemd/system/gnocchi.socket.d/port.conf (a knock port for each of the
server's keys), gnocchi.service.d/keys.conf (those key files as
credentials), and server-key.conf for the units whose entries must name the
server's keys (KEYED_UNITS: journald adds GNOCCHI_SERVER_KEY, the keys'
fingerprints, to every entry of theirs, so a central collector can tell which
keys a decision was made with), atomically (a crash leaves
the old drop-in or the new one, never half of one), creates the verifier's
counter store if there is none (never touching an existing one), and prints
what it wrote and what to run next. It changes nothing else: no unit is started, reloaded
or enabled, and the firewall is not touched.
"""

from __future__ import annotations

import argparse
import os
import pwd
import sys

from gnocchi.server import config as server_config
from gnocchi.server import counters, keyring
from gnocchi.shared import durable, keys

UNIT_DIR = "/etc/systemd/system"
DROP_IN = "gnocchi.socket.d/port.conf"
VERIFIER_USER = "gnocchi"


def drop_in_text(port: int | list[int], key_file: str) -> str:
    # The empty ListenDatagram= clears any earlier value, so the drop-in is
    # the one place the port is set (docs/install.md).
    ports = [port] if isinstance(port, int) else port
    return (
        f"# Written by `gnocchi setup`: the knock port{'s' * (len(ports) > 1)} of "
        f"{key_file}.\n"
        "# Run `gnocchi setup` again after changing the server key.\n"
        "[Socket]\n"
        "ListenDatagram=\n" + "".join(f"ListenDatagram={p}\n" for p in ports)
    )


SERVICE_DROP_IN = "gnocchi.service.d/keys.conf"


def service_drop_in_text(cfg: server_config.Config) -> str:
    """gnocchi.service's credentials: a copy of each key file the config uses, that only
    the verifier reads (`gnocchi serve --keys-from %d` finds them by these names). The
    empty LoadCredential= drops the unit's own, so a server without a v1 key starts."""
    return (
        "# Written by `gnocchi setup`: the key files of the config, as credentials.\n"
        "# Run `gnocchi setup` again after changing them.\n"
        "[Service]\n"
        "LoadCredential=\n"
        + "".join(
            f"LoadCredential={keyring.CREDENTIALS[k]}:{path}\n"
            for k, path in keyring.paths(cfg).items()
        )
    )


def write_if_changed(path: str, text: str) -> bool:
    """Durably replace path with text (0644) unless it holds text already; True if written."""
    try:
        with open(path, encoding="utf-8") as f:
            if f.read() == text:
                return False
    except FileNotFoundError:
        pass
    os.makedirs(os.path.dirname(path), mode=0o755, exist_ok=True)
    durable.replace_file(path, text.encode("utf-8"), 0o644)
    return True


# The units whose every journal entry names the server key, through journald
# (LogExtraFields=): the verifier, the helper (which never sees the key) and the
# actions. Arming's entries name it themselves (gnocchi/admin/table.py).
KEYED_UNITS = ("gnocchi.service", "gnocchi-helper.service", "gnocchi-action@.service")
KEY_DROP_IN = "server-key.conf"
KEY_FIELD = "GNOCCHI_SERVER_KEY"


def key_drop_in_text(fingerprints: str, key_files: str) -> str:
    return (
        f"# Written by `gnocchi setup`: every journal entry of this unit names the server\n"
        f"# keys ({key_files}) by their fingerprints. Run `gnocchi setup` again after\n"
        "# changing a server key.\n"
        "[Service]\n"
        f"LogExtraFields={KEY_FIELD}={fingerprints}\n"
    )


def key_drop_ins(unit_dir: str) -> list[str]:
    return [os.path.join(unit_dir, f"{unit}.d", KEY_DROP_IN) for unit in KEYED_UNITS]


def create_store(state_dir: str) -> str:
    """The verifier's state directory and an empty counter store, owned by user
    gnocchi (where it exists): a verifier refuses to start without a store."""
    try:
        user = pwd.getpwnam(VERIFIER_USER)
        uid, gid = user.pw_uid, user.pw_gid
    except KeyError:  # a development checkout: the caller's own
        uid, gid = -1, -1
    os.makedirs(state_dir, mode=0o700, exist_ok=True)
    if not counters.create(state_dir, uid, gid):
        return ""
    os.chown(state_dir, uid, gid)
    return f"created the counter store {os.path.join(state_dir, counters.FILE_NAME)}\n"


def setup(config_path: str, unit_dir: str) -> str:
    """Write the drop-in; returns what to tell the admin."""
    cfg = server_config.load(config_path)
    ring = keyring.load(cfg)
    ports = keyring.ports(ring)
    key_files = " and ".join(keyring.paths(cfg).values())
    port = ", ".join(map(str, ports))
    fingerprints = ",".join(keyring.fingerprints(ring))
    created = create_store(cfg.state_dir)
    keyed = [
        p
        for p in key_drop_ins(unit_dir)
        if write_if_changed(p, key_drop_in_text(fingerprints, key_files))
    ]
    if keyed:
        created += (
            f"wrote {', '.join(keyed)}: their journal entries name the server keys "
            f"{fingerprints} ({KEY_FIELD}; `systemctl daemon-reload` makes "
            "it count)\n"
        )
    path = os.path.join(unit_dir, DROP_IN)
    service = os.path.join(unit_dir, SERVICE_DROP_IN)
    if write_if_changed(service, service_drop_in_text(cfg)):
        created += (
            f"wrote {service}: gnocchi.service reads {key_files} (`systemctl "
            "daemon-reload` makes it count)\n"
        )
    if not write_if_changed(path, drop_in_text(ports, key_files)):
        return (
            f"{created}{path} already sets UDP port {port} (the knock port of "
            f"{key_files})\n" + ready(config_path, unit_dir).rstrip("\n")
        )
    return (
        f"{created}wrote {path}: gnocchi.socket listens on UDP port {port}, "
        f"the knock port of {key_files}\n"
        + ready(config_path, unit_dir)
        + "(if gnocchi.socket is already running: "
        "systemctl daemon-reload && systemctl restart gnocchi.socket)"
    )


def ready(config_path: str, unit_dir: str) -> str:
    """What to run next, after `gnocchi check`'s problems if it has any (issue 11:
    no silent "arm now" when arming would be refused or lock everyone out)."""
    from gnocchi.admin import check  # here: setup works without it

    report = check.run(config_path, unit_dir=unit_dir)
    text = "".join(f"warning: {w}\n" for w in report.warnings)
    if not report.ok:
        text += (
            "not ready to arm yet; `gnocchi check` says:\n"
            + "".join(f"  - {p}\n" for p in report.problems)
            + "once `gnocchi check` passes, "
        )
    else:
        text += "next, "
    return text + (
        "to arm the firewall and listen: over ssh, `gnocchi arm --trial 300` (it "
        "disarms by itself unless you confirm), or at once: "
        "systemctl enable --now gnocchi.socket\n"
    )


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gnocchi setup",
        description="Write gnocchi.socket's drop-in so that it listens on the knock port "
        "of the server key named in the config.",
    )
    p.add_argument(
        "--config",
        default=server_config.DEFAULT_CONFIG,
        metavar="FILE",
        help=f"server config (default {server_config.DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--unit-dir",
        default=UNIT_DIR,
        metavar="DIR",
        help=f"where the drop-in goes (default {UNIT_DIR}; for tests and images)",
    )
    return p


def main(argv: list[str]) -> int:
    args = parser().parse_args(argv[1:])
    try:
        print(setup(args.config, args.unit_dir))
    except (server_config.ConfigError, keys.KeyFileError) as e:
        print(f"gnocchi setup: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(
            f"gnocchi setup: cannot write {e.filename or args.unit_dir}: {e.strerror or e}",
            file=sys.stderr,
        )
        return 1
    return 0

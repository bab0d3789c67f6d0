"""`gnocchi status`: is this server protected right now?

Trusts the kernel, not a unit's state: ARMED means table inet gnocchi is
loaded (nft -j) and its gate is whole: its rules are those gnocchi loads from
the table file (gnocchi/admin/gate.py compares them, and probes the live gate
with packets from someone who never knocked), never just a table of that
name over an emptied chain. Listening means a UDP socket is bound to the knock port
(/proc/net/udp*). systemd's view is only used to say whether gnocchi is
*meant* to be armed, so that a table that went missing (a `flush ruleset`)
is called out loudly instead of looking like a deliberate disarm (a stop of
gnocchi.socket or gnocchi-arm.service under way is a disarm). It says which
config runs: the file, or its last good copy when the file does not load
(gnocchi/admin/last_good.py). Reads only; needs root (nft, the server key).
Exit status: 0 armed and listening, 1 not protected although meant to be (or
armed with nothing listening: a lockout; or the config file is broken, so
gnocchi runs its last good copy), 3 disarmed.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

from gnocchi.admin import gate, nft_table
from gnocchi.server import DEFAULT_CONFIG

HELPER_SOCKET = "/run/gnocchi/helper.sock"
DECISIONS = 5
SO_ACCEPTCON = 0x10000  # /proc/net/unix Flags of a listening socket


def udp_bound(port: int) -> bool:
    """A UDP socket (IPv4 or IPv6) is bound to port, in this network namespace."""
    for path in ("/proc/net/udp", "/proc/net/udp6"):
        try:
            with open(path, encoding="ascii") as f:
                next(f)
                for line in f:
                    local = line.split()[1]
                    if int(local.rsplit(":", 1)[1], 16) == port:
                        return True
        except OSError:
            continue
    return False


def unix_listening(path: str) -> bool:
    try:
        with open("/proc/net/unix", encoding="utf-8", errors="replace") as f:
            next(f)
            for line in f:
                fields = line.split()
                if len(fields) >= 8 and fields[7] == path and int(fields[3], 16) & SO_ACCEPTCON:
                    return True
    except OSError:
        pass
    return False


def unit(name: str, what: str = "is-active") -> str:
    try:
        return (
            subprocess.run(
                ["systemctl", what, name], capture_output=True, text=True, timeout=30
            ).stdout.strip()
            or "unknown"
        )
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"


def last_decisions(count: int = DECISIONS) -> list[str]:
    """The newest entries that `journalctl -u gnocchi` shows with a GNOCCHI_EVENT."""
    try:
        from systemd import journal

        from gnocchi.admin import audit
    except ImportError:
        return []
    reader = journal.Reader()
    reader.add_match(_SYSTEMD_UNIT="gnocchi.service")
    reader.add_disjunction()
    reader.add_match(OBJECT_SYSTEMD_UNIT="gnocchi.service")
    reader.seek_tail()
    found = []
    for _ in range(2000):  # bounded: a flood of other entries does not hang status
        entry = reader.get_previous()
        if not entry:
            break
        if entry.get("GNOCCHI_EVENT") or entry.get("GNOCCHI_HELPER_STATUS"):
            found.append(audit.format_entry(entry))
            if len(found) == count:
                break
    return found[::-1]


def configured(config_path: str) -> tuple[object, list, list[str]]:
    """(its keys: a gnocchi.server.keyring.Keyring, or None; clients; problems) from the
    config gnocchi runs (a broken file's last good copy)."""
    from gnocchi.server import config as server_config
    from gnocchi.server import keyring
    from gnocchi.shared import keys

    try:
        cfg = server_config.load_running(config_path)
    except server_config.ConfigError as e:
        return None, [], [f"config: {e}"]
    clients = list(cfg.clients)
    try:
        return keyring.load(cfg), clients, []
    except keys.KeyFileError as e:
        return None, clients, [f"server key: {e}"]


def gate_problems(
    live: nft_table.Table, table_path: str | None
) -> tuple[list[str], list[str], str]:
    """(who the live gate lets in, how it differs from what gnocchi loads, why it could
    not be compared); table_path None: not compared."""
    try:
        reference, refused = (nft_table.expected(table_path), "") if table_path else (None, "")
    except nft_table.TableError as e:
        reference, refused = None, str(e)
    differs = gate.differences(live.objects, reference.objects) if reference else []
    return gate.unguarded(live.objects), differs, refused


def report(config_path: str, table_path: str = nft_table.DEFAULT_FILE) -> tuple[int, list[str]]:
    status, lines, _ = survey(config_path, table_path)
    return status, lines


def survey(
    config_path: str, table_path: str = nft_table.DEFAULT_FILE, compare: bool = True
) -> tuple[int, list[str], dict]:
    """(exit status, the report's lines, the same as facts for --json and the metrics).
    compare: also compare the live table with what gnocchi loads from table_path (a
    scratch load in a throwaway namespace); without it, the gate is judged by its
    probes alone (gnocchi/admin/gate.py)."""
    lines: list[str] = []
    facts: dict = {"state": "unknown", "armed": False, "changed": []}
    try:
        live = nft_table.live()
    except nft_table.TableError as e:
        return (
            1,
            [f"gnocchi: UNKNOWN: cannot read the table: {e}"],
            dict(facts, status=1, report=[str(e)]),
        )
    arm, sock = unit("gnocchi-arm.service"), unit("gnocchi.socket")
    meant = (arm == "active" or sock == "active") and not disarming()
    from gnocchi.server import keyring

    ring, clients, problems = configured(config_path)
    knock_ports = keyring.ports(ring) if ring else []
    fingerprints = keyring.described(ring) if ring else []
    listening = bool(knock_ports) and all(udp_bound(p) for p in knock_ports)
    facts.update(meant_armed=meant, units={"gnocchi-arm.service": arm, "gnocchi.socket": sock})
    if live is None and meant:
        facts["state"] = "missing"
        status = 1
        lines.append(
            "gnocchi: NOT ARMED: table inet gnocchi is MISSING although gnocchi is "
            f"meant to be armed (gnocchi-arm.service {arm}, gnocchi.socket {sock}): "
            "the protected ports are as open as your own rules make them. Something "
            "flushed the ruleset; fix: systemctl reload gnocchi-arm"
        )
    elif live is None:
        status = 3
        facts["state"] = "disarmed"
        lines.append(
            f"gnocchi: NOT ARMED (disarmed: gnocchi.socket {sock}, "
            f"{unit('gnocchi.socket', 'is-enabled')}); to arm: "
            "systemctl enable --now gnocchi.socket"
        )
    elif (judged := gate_problems(live, table_path if compare else None))[0]:
        open_to, differs, _ = judged
        status = 1
        facts["state"] = "bypassed"
        lines.append(
            "gnocchi: NOT ARMED: table inet gnocchi is loaded but its gate is EMPTIED "
            f"or bypassed ({'; '.join(differs) or 'its rules'}): it lets in someone "
            f"who never knocked: {gate.summary(open_to, 2)}. gnocchi-watch puts it "
            "back at once while it runs; fix: systemctl reload gnocchi-arm"
        )
    else:
        _, differs, refused = judged
        status = 0
        facts.update(state="armed", armed=True, changed=differs)
        ports = nft_table.show_ports(live.protected())
        lines.append(
            f"gnocchi: ARMED: table inet gnocchi is loaded, protecting {ports}"
            + ("" if arm == "active" else f" (but gnocchi-arm.service is {arm}: loaded by hand?)")
        )
        if differs or refused:
            status = 1
            lines.append(
                f"gnocchi: CHANGED: table inet gnocchi is not what gnocchi loads from "
                f"{table_path}: "
                + ("; ".join(differs) or f"cannot tell: {refused}")
                + "; fix: systemctl reload gnocchi-arm"
            )
        if not listening:
            status = 1
            lines.append(
                "gnocchi: NOBODY CAN KNOCK IN: nothing listens on the knock port, so "
                "no knock can open a protected port; see systemctl status gnocchi.socket"
            )
    broken, running = config_line(config_path)
    if broken:
        status = 1 if status == 0 else status  # loud, though safe; disarmed stays 3
        lines.append(f"gnocchi: {broken}")
    elif running:
        lines.append(running)
    lines += [f"gnocchi: {p}" for p in problems if not broken]
    for port, key in fingerprints:
        lines.append(
            f"knock port: {port}/udp, "
            + ("listening" if udp_bound(port) else "NOT listening")
            + f" (gnocchi.socket {sock})"
            + f"; {key}"
        )
    if live is not None and knock_ports:
        lines.append(flood_line(live.knock_ports(), knock_ports))
    lines.append(
        f"helper: {HELPER_SOCKET} "
        + ("listening" if unix_listening(HELPER_SOCKET) else "not listening")
        + f" (gnocchi-helper.socket {unit('gnocchi-helper.socket')})"
    )
    from gnocchi.admin.check import client_line

    lines.append(f"clients: {len(clients)}" + "".join(f"\n  {client_line(c)}" for c in clients))
    if live is not None and (forwards := live.forwards()):
        lines.append(f"forwards: {nft_table.show_forwards(forwards)} (for a knocked source only)")
    pending = live.pending() if live is not None else []
    lines.append(
        f"pending openings: {len(pending)}"
        + "".join(f"\n  {p.address} {p.proto}/{p.port}, {p.expires} s left" for p in pending)
    )
    decisions = last_decisions()
    if decisions:
        lines.append(
            "last entries (journalctl -u gnocchi):" + "".join(f"\n  {d}" for d in decisions)
        )
    if trial := trial_line():
        lines.insert(1, trial)
    if rotation := rotation_line(config_path):
        lines.insert(1 + bool(trial), rotation)
    helper = unix_listening(HELPER_SOCKET)
    facts.update(
        status=status,
        config={"file": config_path, "broken": broken, "running": running},
        knock_ports=knock_ports,
        listening=listening,
        server_keys=keyring.fingerprints(ring) if ring else [],
        flood_limit=live is not None
        and bool(knock_ports)
        and sorted(live.knock_ports() or []) == sorted(knock_ports),
        protected=live.protected() if live is not None else None,
        helper_listening=helper,
        trial_seconds_left=trial_seconds_left(),
        rotation=rotation or None,
        clients=[
            {
                "name": c.name,
                "allow": [f"{o.port}/{o.proto}" for o in c.allow],
                "actions": list(c.actions),
                "file": c.file,
            }
            for c in clients
        ],
        pending=[
            {"address": str(p.address), "proto": p.proto, "port": p.port, "seconds_left": p.expires}
            for p in pending
        ],
        elements=live.element_counts() if live is not None else {},
        problems=problems,
        report=lines,
    )
    return status, lines, facts


def config_line(config_path: str) -> tuple[str | None, str]:
    """(what is wrong with a config file that does not load, or None; which runs)."""
    from gnocchi.admin import last_good

    return last_good.describe(config_path)


def disarming() -> bool:
    """A stop of gnocchi.socket or gnocchi-arm.service is queued or running: the
    admin is disarming (`systemctl disable --now gnocchi.socket` returns before
    gnocchi-arm.service, started first, has stopped)."""
    try:
        jobs = subprocess.run(
            ["systemctl", "list-jobs", "--no-legend", "gnocchi.socket", "gnocchi-arm.service"],
            capture_output=True,
            text=True,
            timeout=30,
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(line.split()[2:3] == ["stop"] for line in jobs.splitlines())


def rotation_line(config_path: str, now=None) -> str | None:
    """A key rotation under way (`gnocchi rotate-key`): until when both keys open
    knocks, or that the overlap is over and the old key is refused."""
    import datetime
    from gnocchi.server import config as server_config

    try:
        cfg = server_config.load_running(config_path)
    except server_config.ConfigError:
        return None
    if cfg.rotation_ends is None:
        return None
    now = now or datetime.datetime.now(datetime.UTC)
    if now < cfg.rotation_ends:
        left = cfg.rotation_ends - now
        return (
            f"gnocchi: ROTATION: the next key ({cfg.next_private_key_file}) and the current "
            f"one both open knocks until {cfg.rotation_ends.isoformat()} ({left.days} days "
            f"{left.seconds // 3600} h left); then gnocchi rotate-key --finish"
        )
    return (
        f"gnocchi: ROTATION OVERLAP OVER since {cfg.rotation_ends.isoformat()}: knocks with "
        f"the old key ({cfg.private_key_file}) are refused; finish: gnocchi rotate-key "
        "--finish"
    )


def flood_line(limited: list | None, ports: int | list[int]) -> str:
    """What the table's per-source flood limit guards, against the keys' knock ports."""
    ports = [ports] if isinstance(ports, int) else ports
    wanted = ", ".join(f"{p}/udp" for p in ports)
    if limited is not None and sorted(limited) == sorted(ports):
        return f"flood limit: on {wanted}, per source address (IPv6: per /64)"
    shown = ", ".join(map(str, limited or [])) or "no port"
    what = (
        "NONE: the loaded table has no set knock_port"
        if limited is None
        else f"on UDP {shown}, NOT on the knock port{'s' * (len(ports) > 1)} {wanted}"
    )
    return (
        f"flood limit: {what}, so a flood from one address reaches the verifier whole; "
        "fix: systemctl reload gnocchi-arm"
    )


def trial_seconds_left() -> int | None:
    try:
        from gnocchi.admin import arm
    except ImportError:
        return None
    return arm.trial_seconds_left()


def trial_line() -> str | None:
    """A pending automatic disarm (`gnocchi arm --trial`), if one is scheduled."""
    left = trial_seconds_left()
    if left is None:
        return None
    return (
        f"gnocchi: TRIAL: disarms by itself in {left} s unless `gnocchi arm --confirm` "
        "runs first (from a session that came in through a knock)"
    )


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(
        prog="gnocchi status",
        description="Is this server protected right now? ARMED or NOT ARMED from the live "
        "kernel table, the knock port, the helper, clients, pending openings and "
        "the last decisions. Exit 0 armed, 1 not protected although meant to be, "
        "3 disarmed.",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--table", default=nft_table.DEFAULT_FILE, metavar="FILE")
    p.add_argument(
        "--json",
        action="store_true",
        help="print one JSON object: the same facts, for scripts and monitoring "
        "(docs/fleet.md); the exit status is the same",
    )
    args = p.parse_args(argv[1:])
    if os.geteuid() != 0:
        print(
            "gnocchi status: run as root (it reads the kernel's table and the server key)",
            file=sys.stderr,
        )
        return 4
    status, lines, facts = survey(args.config, args.table)
    print(json.dumps(facts, sort_keys=True) if args.json else "\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())

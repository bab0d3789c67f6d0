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
        return subprocess.run(["systemctl", what, name], capture_output=True, text=True,
                              timeout=30).stdout.strip() or "unknown"
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


def configured(config_path: str) -> tuple[int | None, str, list[str], list[str]]:
    """(knock port, server key fingerprint, client lines, problems) from the config
    gnocchi runs (a broken file's last good copy) and its key."""
    from gnocchi.server import config as server_config
    from gnocchi.shared import keys
    from gnocchi.shared.protocol import knock_port
    try:
        cfg = server_config.load_running(config_path)
    except server_config.ConfigError as e:
        return None, "", [], [f"config: {e}"]
    clients = [f"{c.name}: " + (", ".join(f"{o.port}/{o.proto}" for o in c.allow) or "nothing")
               + (f"; actions {', '.join(c.actions)}" if c.actions else "")
               for c in cfg.clients]
    try:
        key = keys.load_server_key(cfg.server_key_file)
    except keys.KeyFileError as e:
        return None, "", clients, [f"server key: {e}"]
    return knock_port(key), keys.fingerprint(key), clients, []


def gate_problems(live: nft_table.Table, table_path: str) -> tuple[list[str], list[str], str]:
    """(who the live gate lets in, how it differs from what gnocchi loads, why it could
    not be compared)."""
    try:
        reference, refused = nft_table.expected(table_path), ""
    except nft_table.TableError as e:
        reference, refused = None, str(e)
    differs = gate.differences(live.objects, reference.objects) if reference else []
    return gate.unguarded(live.objects), differs, refused


def report(config_path: str, table_path: str = nft_table.DEFAULT_FILE) -> tuple[int, list[str]]:
    lines: list[str] = []
    try:
        live = nft_table.live()
    except nft_table.TableError as e:
        return 1, [f"gnocchi: UNKNOWN: cannot read the table: {e}"]
    arm, sock = unit("gnocchi-arm.service"), unit("gnocchi.socket")
    meant = (arm == "active" or sock == "active") and not disarming()
    port, fingerprint, clients, problems = configured(config_path)
    listening = port is not None and udp_bound(port)
    if live is None and meant:
        status = 1
        lines.append("gnocchi: NOT ARMED: table inet gnocchi is MISSING although gnocchi is "
                     f"meant to be armed (gnocchi-arm.service {arm}, gnocchi.socket {sock}): "
                     "the protected ports are as open as your own rules make them. Something "
                     "flushed the ruleset; fix: systemctl reload gnocchi-arm")
    elif live is None:
        status = 3
        lines.append(f"gnocchi: NOT ARMED (disarmed: gnocchi.socket {sock}, "
                     f"{unit('gnocchi.socket', 'is-enabled')}); to arm: "
                     "systemctl enable --now gnocchi.socket")
    elif (judged := gate_problems(live, table_path))[0]:
        open_to, differs, _ = judged
        status = 1
        lines.append("gnocchi: NOT ARMED: table inet gnocchi is loaded but its gate is EMPTIED "
                     f"or bypassed ({'; '.join(differs) or 'its rules'}): it lets in someone "
                     f"who never knocked: {gate.summary(open_to, 2)}. gnocchi-watch puts it "
                     "back at once while it runs; fix: systemctl reload gnocchi-arm")
    else:
        _, differs, refused = judged
        status = 0
        ports = nft_table.show_ports(live.protected())
        lines.append(f"gnocchi: ARMED: table inet gnocchi is loaded, protecting {ports}"
                     + ("" if arm == "active" else
                        f" (but gnocchi-arm.service is {arm}: loaded by hand?)"))
        if differs or refused:
            status = 1
            lines.append(f"gnocchi: CHANGED: table inet gnocchi is not what gnocchi loads from "
                         f"{table_path}: " + ("; ".join(differs) or f"cannot tell: {refused}")
                         + "; fix: systemctl reload gnocchi-arm")
        if not listening:
            status = 1
            lines.append("gnocchi: NOBODY CAN KNOCK IN: nothing listens on the knock port, so "
                         "no knock can open a protected port; see systemctl status gnocchi.socket")
    broken, running = config_line(config_path)
    if broken:
        status = 1 if status == 0 else status  # loud, though safe; disarmed stays 3
        lines.append(f"gnocchi: {broken}")
    elif running:
        lines.append(running)
    lines += [f"gnocchi: {p}" for p in problems if not broken]
    if port is not None:
        lines.append(f"knock port: {port}/udp, " + ("listening" if listening else
                                                     "NOT listening") + f" (gnocchi.socket {sock})"
                     + f"; server key fingerprint {fingerprint}")
    if live is not None and port is not None:
        lines.append(flood_line(live.knock_ports(), port))
    lines.append(f"helper: {HELPER_SOCKET} " + ("listening" if unix_listening(HELPER_SOCKET)
                                                 else "not listening")
                 + f" (gnocchi-helper.socket {unit('gnocchi-helper.socket')})")
    lines.append(f"clients: {len(clients)}" + "".join(f"\n  {c}" for c in clients))
    if live is not None and (forwards := live.forwards()):
        lines.append(f"forwards: {nft_table.show_forwards(forwards)} (for a knocked source "
                     "only)")
    pending = live.pending() if live is not None else []
    lines.append(f"pending openings: {len(pending)}" + "".join(
        f"\n  {p.address} {p.proto}/{p.port}, {p.expires} s left" for p in pending))
    decisions = last_decisions()
    if decisions:
        lines.append("last entries (journalctl -u gnocchi):"
                     + "".join(f"\n  {d}" for d in decisions))
    if trial := trial_line():
        lines.insert(1, trial)
    return status, lines


def config_line(config_path: str) -> tuple[str | None, str]:
    """(what is wrong with a config file that does not load, or None; which runs)."""
    from gnocchi.admin import last_good
    return last_good.describe(config_path)


def disarming() -> bool:
    """A stop of gnocchi.socket or gnocchi-arm.service is queued or running: the
    admin is disarming (`systemctl disable --now gnocchi.socket` returns before
    gnocchi-arm.service, started first, has stopped)."""
    try:
        jobs = subprocess.run(["systemctl", "list-jobs", "--no-legend", "gnocchi.socket",
                               "gnocchi-arm.service"], capture_output=True, text=True,
                              timeout=30).stdout
    except (OSError, subprocess.TimeoutExpired):
        return False
    return any(line.split()[2:3] == ["stop"] for line in jobs.splitlines())


def flood_line(limited: list | None, port: int) -> str:
    """What the table's per-source flood limit guards, against the key's knock port."""
    if limited == [port]:
        return f"flood limit: on {port}/udp, per source address (IPv6: per /64)"
    shown = ", ".join(map(str, limited or [])) or "no port"
    what = ("NONE: the loaded table has no set knock_port" if limited is None else
            f"on UDP {shown}, NOT on the knock port {port}")
    return (f"flood limit: {what}, so a flood from one address reaches the verifier whole; "
            "fix: systemctl reload gnocchi-arm")


def trial_line() -> str | None:
    """A pending automatic disarm (`gnocchi arm --trial`), if one is scheduled."""
    try:
        from gnocchi.admin import arm
    except ImportError:
        return None
    left = arm.trial_seconds_left()
    if left is None:
        return None
    return (f"gnocchi: TRIAL: disarms by itself in {left} s unless `gnocchi arm --confirm` "
            "runs first (from a session that came in through a knock)")


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(
        prog="gnocchi status",
        description="Is this server protected right now? ARMED or NOT ARMED from the live "
                    "kernel table, the knock port, the helper, clients, pending openings and "
                    "the last decisions. Exit 0 armed, 1 not protected although meant to be, "
                    "3 disarmed.")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--table", default=nft_table.DEFAULT_FILE, metavar="FILE")
    args = p.parse_args(argv[1:])
    if os.geteuid() != 0:
        print("gnocchi status: run as root (it reads the kernel's table and the server key)",
              file=sys.stderr)
        return 4
    status, lines = report(args.config, args.table)
    print("\n".join(lines))
    return status


if __name__ == "__main__":
    sys.exit(main())

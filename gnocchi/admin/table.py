"""`gnocchi table`: what gnocchi-arm.service and gnocchi-watch.service run, and
arming's journal entries.

`gnocchi table load` (ExecStart=, ExecReload=) runs `gnocchi check` first
and refuses to arm, loudly, when the verifier could not run or nobody could
knock in; otherwise it loads /etc/gnocchi/gnocchi.nft keeping pending knocks
(gnocchi/admin/nft_table.py), with the knock port of the server key named in
the config (the port `gnocchi check` has just found gnocchi.socket listening
on) in the table's per-source flood limit, in the same transaction. `gnocchi
table unload` removes the table; `gnocchi table stop` (ExecStopPost=) does
unless this is the stop half of a restart. `gnocchi table rearm`
(nftables.service's drop-in, after its "flush ruleset") loads it again when
gnocchi is meant to be armed (gnocchi-arm.service active) and it is missing,
then fills in the knock port. `gnocchi table watch` (gnocchi-watch.service,
bound to gnocchi-arm.service) follows `nft monitor` and does the same at once
after any other flush.

Trusts the admin's files (through gnocchi.admin.check), nft and systemd.
Guarantees: a refusal changes nothing; every outcome is one journal entry that
`journalctl -u gnocchi` shows too (OBJECT_SYSTEMD_UNIT=gnocchi.service: a
root process may attach its entries to another unit), so the verifier's
journal is the whole audit trail.
"""
from __future__ import annotations

import argparse
import os
import select
import subprocess
import sys
import time

from gnocchi.admin import nft_table
from gnocchi.server import events

IDENTIFIER = "gnocchi-arm"
VERIFIER_UNIT = "gnocchi.service"
# One MESSAGE_ID per event; gnocchi/gnocchi.catalog explains each.
MESSAGE_IDS = {
    "armed": "3ffefbb5713e4e14888b87b6c05ecff8",
    "arming-refused": "f85d972a5f49413b8f5ba9717fa1b455",
    "disarmed": "fb5d91cca0504cacae22fb89f1ea4e0b",
    "table-missing": "5ff01fba9beb452d9d8c6738974f507e",
    "trial": "00e03de13dbd4ef0952d56e4149d903f",
}
PRIORITY = {"armed": 5, "arming-refused": 2, "disarmed": 4, "table-missing": 2, "trial": 4}
ARM_UNIT = "gnocchi-arm.service"
DEFAULT_CONFIG = "/etc/gnocchi/gnocchi.toml"  # gnocchi.server.config's, without importing it


JOURNAL_SOCKET = "/run/systemd/journal/socket"


def log(event: str, message: str, priority: int | None = None, cli: bool = False,
        **fields) -> None:
    """One entry: to the journal when run by a unit, else one line on stderr. A
    command the admin runs (cli=True) prints its own text, and writes the entry to
    the journal whenever there is one: arming by hand belongs in the audit trail."""
    if not (events.stderr_is_journal() or (cli and os.path.exists(JOURNAL_SOCKET))):
        if not cli:
            print(f"gnocchi: {message}", file=sys.stderr, flush=True)
        return
    from systemd import journal
    extra = {f"GNOCCHI_{k.upper()}": str(v) for k, v in fields.items() if v is not None}
    journal.send(message, MESSAGE_ID=MESSAGE_IDS[event], SYSLOG_IDENTIFIER=IDENTIFIER,
                 PRIORITY=str(PRIORITY[event] if priority is None else priority),
                 OBJECT_SYSTEMD_UNIT=VERIFIER_UNIT, GNOCCHI_EVENT=event, **extra)


def refuse(problems: list[str]) -> int:
    for problem in problems:
        log("arming-refused", f"arming refused: {problem}", priority=3, reason=problem)
    log("arming-refused", f"NOT ARMED: refused to load table inet gnocchi: "
        f"{len(problems)} problem{'s' if len(problems) != 1 else ''} (above; "
        "`gnocchi check` shows them); the table was left as it was",
        reason="; ".join(problems))
    return 1


def load(config_path: str, table_path: str) -> int:
    from gnocchi.admin import check  # not on rearm's path: it loads nacl, and time is open ports
    report = check.run(config_path, table_path)
    for warning in report.warnings:
        log("armed", f"warning: {warning}", priority=4)
    if not report.ok:
        return refuse(report.problems)
    try:
        loaded = nft_table.load(table_path, knock_port=report.ports)
    except nft_table.TableError as e:
        return refuse([str(e)])
    log("armed", loaded.describe(table_path) + flood_limit(loaded.table.knock_ports()),
        how=loaded.how, pending=loaded.kept,
        protected=nft_table.show_ports(loaded.table.protected()),
        knock_port=",".join(map(str, report.ports)))
    return 0


def flood_limit(ports: list | None) -> str:
    if not ports:
        return ("; NO per-source flood limit: the table file has no set knock_port "
                "(docs/firewall.md, \"Floods\")")
    shown = ", ".join(f"{p}/udp" for p in ports)
    return f"; floods from one source to the knock port{'s' * (len(ports) > 1)} {shown} are limited"


def configured_knock_port(config_path: str) -> tuple[list[int] | None, str]:
    """(the knock ports of the server keys the config names, which `gnocchi setup` gave
    gnocchi.socket, or None; why not)."""
    from gnocchi.server import config, keyring
    from gnocchi.shared import keys  # loads nacl: called after the table is back
    try:
        return keyring.ports(keyring.load(config.load(config_path))), ""
    except (config.ConfigError, keys.KeyFileError) as e:
        return None, str(e)


def unload() -> int:
    try:
        was = nft_table.unload()
    except nft_table.TableError as e:
        log("disarmed", f"disarming failed: {e}", priority=2)
        return 1
    if was:  # after a refused first arming there was nothing to remove, nothing to say
        log("disarmed", "disarmed: table inet gnocchi removed; the protected ports are as "
            "open as your own rules make them")
    return 0


def stop() -> int:
    """gnocchi-arm.service's ExecStopPost=: unload, unless this is the stop half of a
    restart that went well so far (the start half then reloads, keeping pending knocks;
    if that start is refused, this runs again with SERVICE_RESULT set and unloads)."""
    jobs = systemctl("list-jobs", "--no-legend", ARM_UNIT).stdout.split()
    if "restart" in jobs and os.environ.get("SERVICE_RESULT", "success") == "success":
        return 0
    return unload()


def meant_to_be_armed() -> bool:
    """gnocchi-arm.service is active: gnocchi is armed by intent, whatever the kernel has."""
    return subprocess.run(["systemctl", "is-active", "--quiet", ARM_UNIT],
                          timeout=30).returncode == 0


def rearm(config_path: str, table_path: str, by: str, intent_known: bool = False) -> int:
    """Load the table again if gnocchi is meant to be armed and it is missing."""
    if not intent_known and not meant_to_be_armed():
        return 0
    try:
        if nft_table.live() is not None:
            return 0
    except nft_table.TableError as e:
        log("table-missing", f"cannot read table inet gnocchi after {by}: {e}")
        return 1
    # Load first, log after: every millisecond here the protected ports are open.
    # No `gnocchi check`: this restores what was armed a moment ago.
    proc = nft_table.nft("-f", table_path)
    if proc.returncode != 0:
        log("table-missing", f"table inet gnocchi is MISSING while gnocchi is armed (removed by "
            f"{by}) and could not be loaded again: {proc.stderr.strip()}; the protected ports "
            "are OPEN", by=by)
        return 1
    # The flood limit's port comes second: it guards the verifier, not the ports.
    port, why = configured_knock_port(config_path)
    limited = (flood_limit(port if nft_table.set_knock_port(port) else None) if port else
               f"; NO per-source flood limit: cannot tell the knock port: {why}")
    log("table-missing", f"table inet gnocchi was MISSING while gnocchi is armed (removed by "
        f"{by}): the protected ports were open; re-armed from {table_path}{limited}", by=by,
        knock_port=",".join(map(str, port or [])) or None)
    return 0


WATCH_PERIOD = 30.0  # seconds between checks when nft monitor says nothing


def watch(config_path: str, table_path: str) -> int:
    """Follow the kernel's table events; put table inet gnocchi back whenever it goes.
    Runs only while gnocchi-arm.service is active (gnocchi-watch.service is bound to it
    and stops before it), so a missing table here always means "meant to be armed"."""
    monitor = subprocess.Popen([nft_table.NFT, "monitor", "tables"], stdout=subprocess.PIPE)
    by = "a ruleset flush outside gnocchi: `nft flush ruleset` or a firewall tool"
    settle_then_rearm(config_path, table_path, by)  # also what happened while it was down
    fd = monitor.stdout.fileno()
    while True:
        # Any table event (they are rare), or the period: look at the kernel itself
        # rather than parse monitor text. Our own reloads delete and add the table
        # in one transaction, so after them it is there and nothing happens.
        if select.select([fd], [], [], WATCH_PERIOD)[0] and not os.read(fd, 65536):
            log("table-missing", "nft monitor ended; gnocchi-watch stops (systemd restarts "
                "it)", priority=3)
            return 1
        settle_then_rearm(config_path, table_path, by)


def settle_then_rearm(config_path: str, table_path: str, by: str, patience: float = 3.0) -> None:
    """Rearm, unless nftables.service is starting, reloading or stopping: its own drop-in
    then puts the table back (and the journal names it), possibly after more than one
    flush (a restart flushes twice), so wait until it is done, within reason."""
    deadline = time.monotonic() + patience
    while nft_table.live() is None:
        state = systemctl("is-active", "nftables.service").stdout.strip()
        if state not in ("activating", "deactivating", "reloading") or \
                time.monotonic() > deadline:
            rearm(config_path, table_path, by, intent_known=True)
            return
        time.sleep(0.05)


def table_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="gnocchi table",
        description="Load or unload table inet gnocchi (what gnocchi-arm.service runs; "
                    "to arm and disarm use systemctl on gnocchi.socket).")
    p.add_argument("action", choices=("load", "unload", "stop", "rearm", "watch"),
                   help="load: check, then load the table keeping pending knocks; "
                        "unload: remove it; stop: unload unless gnocchi-arm.service is "
                        "restarting; rearm: load it if gnocchi-arm.service is "
                        "active and the table is missing; watch: rearm whenever the "
                        "table goes (gnocchi-watch.service)")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--table", default=nft_table.DEFAULT_FILE, metavar="FILE")
    p.add_argument("--by", default="a ruleset flush", metavar="WHAT",
                   help="rearm: what removed the table, for the journal")
    args = p.parse_args(argv[1:])
    if args.action == "load":
        return load(args.config, args.table)
    if args.action == "rearm":
        return rearm(args.config, args.table, args.by)
    if args.action == "watch":
        return watch(args.config, args.table)
    if args.action == "stop":
        return stop()
    return unload()

def systemctl(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["systemctl", *args], capture_output=True, text=True, timeout=120)


def main(argv=None) -> int:
    return table_main(sys.argv if argv is None else argv)

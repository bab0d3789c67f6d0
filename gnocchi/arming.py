"""Arming: what gnocchi-arm.service runs, and its journal entries.

`gnocchi table load` (ExecStart=, ExecReload=) runs `gnocchi check` first
and refuses to arm, loudly, when the verifier could not run or nobody could
knock in; otherwise it loads /etc/gnocchi/gnocchi.nft keeping pending knocks
(gnocchi/table.py). `gnocchi table unload` (ExecStop=) removes the table. `gnocchi table rearm`
(nftables.service's drop-in, after its "flush ruleset") loads it again when
gnocchi is meant to be armed (gnocchi-arm.service active) and it is missing.

Trusts the admin's files (through gnocchi.check) and nft. Guarantees: a
refusal changes nothing; every outcome is one journal entry that
`journalctl -u gnocchi` shows too (OBJECT_SYSTEMD_UNIT=gnocchi.service: a
root process may attach its entries to another unit), so the verifier's
journal is the whole audit trail.
"""
from __future__ import annotations

import argparse
import subprocess
import sys

from gnocchi import audit, table

IDENTIFIER = "gnocchi-arm"
VERIFIER_UNIT = "gnocchi.service"
# One MESSAGE_ID per event; gnocchi/gnocchi.catalog explains each.
MESSAGE_IDS = {
    "armed": "3ffefbb5713e4e14888b87b6c05ecff8",
    "arming-refused": "f85d972a5f49413b8f5ba9717fa1b455",
    "disarmed": "fb5d91cca0504cacae22fb89f1ea4e0b",
    "table-missing": "5ff01fba9beb452d9d8c6738974f507e",
}
PRIORITY = {"armed": 5, "arming-refused": 2, "disarmed": 4, "table-missing": 2}
ARM_UNIT = "gnocchi-arm.service"
DEFAULT_CONFIG = "/etc/gnocchi/gnocchi.toml"  # gnocchi.config's, without importing it


def log(event: str, message: str, priority: int | None = None, **fields) -> None:
    """One entry: to the journal when run by a unit, else one line on stderr."""
    if not audit.stderr_is_journal():
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
    from gnocchi import check  # not on rearm's path: it loads nacl, and time is open ports
    report = check.run(config_path, table_path)
    for warning in report.warnings:
        log("armed", f"warning: {warning}", priority=4)
    if not report.ok:
        return refuse(report.problems)
    try:
        loaded = table.load(table_path)
    except table.TableError as e:
        return refuse([str(e)])
    log("armed", loaded.describe(table_path), how=loaded.how, pending=loaded.kept,
        protected=table.show_ports(loaded.table.protected()), knock_port=report.port)
    return 0


def unload() -> int:
    try:
        was = table.unload()
    except table.TableError as e:
        log("disarmed", f"disarming failed: {e}", priority=2)
        return 1
    log("disarmed", "disarmed: table inet gnocchi removed; the protected ports are as open "
        "as your own rules make them" if was else
        "disarmed: table inet gnocchi was not loaded")
    return 0


def meant_to_be_armed() -> bool:
    """gnocchi-arm.service is active: gnocchi is armed by intent, whatever the kernel has."""
    return subprocess.run(["systemctl", "is-active", "--quiet", ARM_UNIT],
                          timeout=30).returncode == 0


def rearm(config_path: str, table_path: str, by: str) -> int:
    if not meant_to_be_armed():
        return 0
    try:
        if table.live() is not None:
            return 0
    except table.TableError as e:
        log("table-missing", f"cannot read table inet gnocchi after {by}: {e}")
        return 1
    # Load first, log after: every millisecond here the protected ports are open.
    # No `gnocchi check`: this restores what was armed a moment ago.
    proc = table.nft("-f", table_path)
    if proc.returncode != 0:
        log("table-missing", f"table inet gnocchi is MISSING while gnocchi is armed (removed by "
            f"{by}) and could not be loaded again: {proc.stderr.strip()}; the protected ports "
            "are OPEN", by=by)
        return 1
    log("table-missing", f"table inet gnocchi was MISSING while gnocchi is armed (removed by "
        f"{by}, whose ruleset flushes it): the protected ports were open; re-armed from "
        f"{table_path}", by=by)
    return 0


def table_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="gnocchi table",
        description="Load or unload table inet gnocchi (what gnocchi-arm.service runs; "
                    "to arm and disarm use systemctl on gnocchi.socket).")
    p.add_argument("action", choices=("load", "unload", "rearm"),
                   help="load: check, then load the table keeping pending knocks; "
                        "unload: remove it; rearm: load it if gnocchi-arm.service is "
                        "active and the table is missing")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--table", default=table.DEFAULT_FILE, metavar="FILE")
    p.add_argument("--by", default="a ruleset flush", metavar="WHAT",
                   help="rearm: what removed the table, for the journal")
    args = p.parse_args(argv[1:])
    if args.action == "load":
        return load(args.config, args.table)
    if args.action == "rearm":
        return rearm(args.config, args.table, args.by)
    return unload()


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    return {"table": table_main}[argv[0]](argv)

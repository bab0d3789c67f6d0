"""`gnocchi table`: what gnocchi-arm.service and gnocchi-watch.service run, and
arming's journal entries.

`gnocchi table load` (ExecStart=, ExecReload=) runs `gnocchi check` first
and refuses to arm, loudly, when the verifier could not run or nobody could
knock in; otherwise it loads what gnocchi loads (nft_table.wanted: the rules
file /usr/share/gnocchi/gnocchi.nft with the config's protected ports, and the
knock port of the server key named in the config, the port `gnocchi check` has
just found gnocchi.socket listening on, in the table's per-source flood limit),
in one transaction that keeps pending knocks (gnocchi/admin/nft_table.py), and
keeps the config as the last good one (gnocchi/admin/last_good.py). A config
that does not load never changes what is enforced: a reload refuses it, and a
start (boot, a restart) arms with its last good copy, loudly (arming-fell-back);
only a first config, with no good copy yet, is refused. `gnocchi table record`
(gnocchi.service's ExecStartPre=) keeps the config the verifier is about to
start with as the last good one. `gnocchi table unload` removes the table;
`gnocchi table stop` (ExecStopPost=) does unless this is the stop half of a
restart, and `gnocchi table socket-stop` (gnocchi.socket's ExecStopPost=) does
when gnocchi.socket is being stopped, so that `systemctl disable --now
gnocchi.socket` returns with the table gone. `gnocchi table rearm`
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
    "arming-fell-back": "443efdca79d74a0189c3a7f186c582e0",
}
PRIORITY = {"armed": 5, "arming-refused": 2, "disarmed": 4, "table-missing": 2, "trial": 4,
            "arming-fell-back": 3}
ARM_UNIT = "gnocchi-arm.service"
SOCKET_UNIT = "gnocchi.socket"
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


def load(config_path: str, table_path: str, reload: bool = False) -> int:
    """Check, then load what gnocchi loads. A config file that does not load: a reload
    (reload=True) refuses it and changes nothing; a start arms with its last good copy
    (refusing then would leave the protected ports open), loudly."""
    from gnocchi.admin import check, last_good  # not on rearm's path: time is open ports
    from gnocchi.server import config as server_config
    report = check.run(config_path, table_path, last_good=not reload)
    for warning in report.warnings:
        log("armed", f"warning: {warning}", priority=4)
    if not report.ok:
        return refuse(report.problems)
    try:
        want = nft_table.wanted(config_path, table_path, cfg=report.cfg)
        loaded = nft_table.load_wanted(want)
    except nft_table.TableError as e:
        return refuse([str(e)])
    if report.config_error:
        good = report.cfg.path
        log("arming-fell-back", server_config.fell_back(report.config_error, good),
            config=config_path, last_good=good, reason=report.config_error)
    else:
        recorded, said = last_good.record(config_path)
        if not recorded:
            log("armed", f"warning: {said}", priority=4)
    log("armed", loaded.describe(table_path) + f" (the ports from {want.ports.source})"
        + flood_limit(loaded.table.knock_ports()), how=loaded.how, pending=loaded.kept,
        protected=nft_table.show_ports(loaded.table.protected()), knock_port=report.port,
        config=want.config)
    return 0


def record(config_path: str) -> int:
    """gnocchi.service's ExecStartPre= (as root): keep the config the verifier is about
    to start with as the last good one, if it loads (when it does not, the verifier
    runs the last good copy and says so itself). Never fails the start."""
    from gnocchi.admin import last_good
    recorded, said = last_good.record(config_path)
    if not said.endswith(" is the same"):
        print(f"gnocchi: {said}", file=sys.stderr)
    return 0


def socket_stop() -> int:
    """gnocchi.socket's ExecStopPost=: when gnocchi.socket is being stopped (`systemctl
    disable --now`, stop, a shutdown, removing the package), remove the table now,
    before that stop returns: gnocchi-arm.service, started first, would stop only
    after it. A restart keeps the table (its start half loads it again), and so does
    the socket's failure, which comes with no job (a verifier that keeps crashing:
    gnocchi fails closed)."""
    jobs = systemctl("list-jobs", "--no-legend", SOCKET_UNIT).stdout.split()
    if "stop" not in jobs:
        return 0
    return unload()


def flood_limit(ports: list | None) -> str:
    if not ports:
        return ("; NO per-source flood limit: the table file has no set knock_port "
                "(docs/firewall.md, \"Floods\")")
    return f"; floods from one source to the knock port {ports[0]}/udp are limited"


def configured_knock_port(config_path: str) -> tuple[int | None, str]:
    """(the knock port of the server key the config names, which `gnocchi setup` gave
    gnocchi.socket, or None; why not)."""
    from gnocchi.server import config
    from gnocchi.shared import keys  # loads nacl: called after the table is back
    from gnocchi.shared.protocol import knock_port
    try:
        return knock_port(keys.load_server_key(config.load(config_path).server_key_file)), ""
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
    # The config's ports and the flood limit's port come second: parsing the config
    # takes longer than loading the rules, which protect the usual port (22) at once.
    port, why = configured_knock_port(config_path)
    ported = fill_config_ports(config_path, table_path)
    limited = (flood_limit([port] if nft_table.set_knock_port(port) else None) if port else
               f"; NO per-source flood limit: cannot tell the knock port: {why}") + ported
    log("table-missing", f"table inet gnocchi was MISSING while gnocchi is armed (removed by "
        f"{by}): the protected ports were open; re-armed from {table_path}{limited}", by=by,
        knock_port=port)
    return 0


def fill_config_ports(config_path: str, table_path: str) -> str:
    """After a bare load of the rules: the protected ports of the config gnocchi runs,
    in one transaction; what to add to the journal entry."""
    from gnocchi.server import config as server_config
    try:
        want = nft_table.wanted(config_path, table_path)
    except (server_config.ConfigError, nft_table.TableError) as e:
        return f"; the protected ports as the rules file has them: {e}"
    proc = nft_table.nft("-f", "-", input=nft_table.fill_script(want.protected, None))
    if proc.returncode != 0:
        return f"; the protected ports as the rules file has them: {proc.stderr.strip()}"
    return f"; protecting {nft_table.show_ports(want.protected)}"


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
    p.add_argument("action", choices=("load", "unload", "stop", "socket-stop", "rearm",
                                      "watch", "record"),
                   help="load: check, then load the table keeping pending knocks; "
                        "unload: remove it; stop: unload unless gnocchi-arm.service is "
                        "restarting; socket-stop: unload if gnocchi.socket is being "
                        "stopped; rearm: load it if gnocchi-arm.service is "
                        "active and the table is missing; watch: rearm whenever the "
                        "table goes (gnocchi-watch.service); record: keep the config as "
                        "the last good one if it loads")
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--table", default=nft_table.DEFAULT_FILE, metavar="FILE",
                   help=f"the rules file (default {nft_table.DEFAULT_FILE})")
    p.add_argument("--by", default="a ruleset flush", metavar="WHAT",
                   help="rearm: what removed the table, for the journal")
    p.add_argument("--reload", action="store_true",
                   help="load: refuse a config that does not load (ExecReload=), rather "
                        "than arm with its last good copy (ExecStart=)")
    args = p.parse_args(argv[1:])
    if args.action == "load":
        return load(args.config, args.table, args.reload)
    if args.action == "record":
        return record(args.config)
    if args.action == "socket-stop":
        return socket_stop()
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

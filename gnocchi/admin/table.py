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
import functools
import os
import re
import select
import subprocess
import sys
import time

from gnocchi.admin import cut, gate, nft_table
from gnocchi.server import DEFAULT_CONFIG, events

IDENTIFIER = "gnocchi-arm"
VERIFIER_UNIT = "gnocchi.service"
# One MESSAGE_ID per event; gnocchi/gnocchi.catalog explains each.
MESSAGE_IDS = {
    "armed": "3ffefbb5713e4e14888b87b6c05ecff8",
    "arming-refused": "f85d972a5f49413b8f5ba9717fa1b455",
    "disarmed": "fb5d91cca0504cacae22fb89f1ea4e0b",
    "table-missing": "5ff01fba9beb452d9d8c6738974f507e",
    "table-changed": "13168309e3e849cf9396fb86025f7b37",
    "connections-cut": "1cfd0893c9534fa1902d888f2d5d1087",
    "trial": "00e03de13dbd4ef0952d56e4149d903f",
    "arming-fell-back": "443efdca79d74a0189c3a7f186c582e0",
}
PRIORITY = {
    "armed": 5,
    "arming-refused": 2,
    "disarmed": 4,
    "table-missing": 2,
    "table-changed": 2,
    "connections-cut": 2,
    "trial": 4,
    "arming-fell-back": 3,
}
ARM_UNIT = "gnocchi-arm.service"
SOCKET_UNIT = "gnocchi.socket"


JOURNAL_SOCKET = "/run/systemd/journal/socket"
CONFIG = [DEFAULT_CONFIG]  # the config whose server key arming's entries name (table_main's)


@functools.cache
def server_key(config_path: str) -> str | None:
    """The fingerprint of the server key gnocchi runs with, which every one of arming's
    entries names (GNOCCHI_SERVER_KEY, as journald adds it to the verifier's and the
    helper's: gnocchi setup's server-key.conf), or None when it cannot be read."""
    from gnocchi.server import config as server_config
    from gnocchi.shared import keys

    try:
        return keys.fingerprint(
            keys.load_server_key(server_config.load_running(config_path).server_key_file)
        )
    except (server_config.ConfigError, keys.KeyFileError):
        return None


def log(event: str, message: str, priority: int | None = None, cli: bool = False, **fields) -> None:
    """One entry: to the journal when run by a unit, else one line on stderr. A
    command the admin runs (cli=True) prints its own text, and writes the entry to
    the journal whenever there is one: arming by hand belongs in the audit trail."""
    if not (events.stderr_is_journal() or (cli and os.path.exists(JOURNAL_SOCKET))):
        if not cli:
            print(f"gnocchi: {message}", file=sys.stderr, flush=True)
        return
    from systemd import journal

    fields.setdefault("server_key", server_key(CONFIG[0]))
    extra = {f"GNOCCHI_{k.upper()}": str(v) for k, v in fields.items() if v is not None}
    journal.send(
        message,
        MESSAGE_ID=MESSAGE_IDS[event],
        SYSLOG_IDENTIFIER=IDENTIFIER,
        PRIORITY=str(PRIORITY[event] if priority is None else priority),
        OBJECT_SYSTEMD_UNIT=VERIFIER_UNIT,
        GNOCCHI_EVENT=event,
        **extra,
    )


def refuse(problems: list[str]) -> int:
    for problem in problems:
        log("arming-refused", f"arming refused: {problem}", priority=3, reason=problem)
    log(
        "arming-refused",
        f"NOT ARMED: refused to load table inet gnocchi: "
        f"{len(problems)} problem{'s' if len(problems) != 1 else ''} (above; "
        "`gnocchi check` shows them); the table was left as it was",
        reason="; ".join(problems),
    )
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
        log(
            "arming-fell-back",
            server_config.fell_back(report.config_error, good),
            config=config_path,
            last_good=good,
            reason=report.config_error,
        )
    else:
        recorded, said = last_good.record(config_path)
        if not recorded:
            log("armed", f"warning: {said}", priority=4)
    log(
        "armed",
        loaded.describe(table_path)
        + f" (the ports from {want.ports.source})"
        + flood_limit(loaded.table.knock_ports()),
        how=loaded.how,
        pending=loaded.kept,
        protected=nft_table.show_ports(loaded.table.protected()),
        knock_port=",".join(map(str, want.knock_ports or [])),
        config=want.config,
    )
    # Verified, not assumed: the kernel's table now, against what was loaded.
    try:
        problems = judge(nft_table.live(), loaded.table)
    except nft_table.TableError as e:
        problems = [str(e)]
    if problems:
        log(
            "table-changed",
            f"table inet gnocchi is not what was just loaded from "
            f"{table_path}: {'; '.join(problems)} (changed at the same moment?); "
            "gnocchi-watch puts it back",
            reason="; ".join(problems),
        )
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
        return (
            "; NO per-source flood limit: the table file has no set knock_port "
            '(docs/firewall.md, "Floods")'
        )
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
        log(
            "disarmed",
            "disarmed: table inet gnocchi removed; the protected ports are as "
            "open as your own rules make them",
        )
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
    return (
        subprocess.run(["systemctl", "is-active", "--quiet", ARM_UNIT], timeout=30).returncode == 0
    )


def judge(live: nft_table.Table | None, reference: nft_table.Table | None) -> list[str]:
    """Why the live table is not the gate gnocchi loads ([] when it is): missing, what
    differs from the reference (gnocchi/admin/gate.py), and who it would let in."""
    if live is None:
        return ["table inet gnocchi is missing"]
    found = gate.differences(live.objects, reference.objects) if reference is not None else []
    if open_to := gate.unguarded(live.objects):
        found.append(f"it lets in someone who never knocked: {gate.summary(open_to, 1)}")
    return found


def rearm(config_path: str, table_path: str, by: str, intent_known: bool = False) -> int:
    """Load the table again if gnocchi is meant to be armed and the live one is missing,
    or its gate lets a stranger in (a flushed chain or table, a deleted rule). A table
    that only differs from the file is left to gnocchi-watch, which knows what was
    armed: the file may have changed since, for a reload to load."""
    if not intent_known and not meant_to_be_armed():
        return 0
    try:
        live = nft_table.live()
    except nft_table.TableError as e:
        log("table-missing", f"cannot check table inet gnocchi after {by}: {e}")
        return 1
    problems = judge(live, None)
    if not problems:
        return 0
    if live is not None:
        try:
            problems = judge(live, nft_table.expected(table_path))
        except nft_table.TableError:
            pass  # a file nft refuses: the live gate is judged by the probes alone
    return 0 if restore(config_path, table_path, by, live is None, problems) else 1


def restore(config_path: str, table_path: str, by: str, missing: bool, problems: list[str]) -> bool:
    """Load table_path as the live table, at once (the file replaces a changed table in
    one transaction), then say so; the knock port second. True if it loaded."""
    event, what = (
        ("table-missing", "was MISSING")
        if missing
        else ("table-changed", "was CHANGED (" + "; ".join(problems) + ")")
    )
    # Load first, log after: every millisecond here the protected ports are open.
    # No `gnocchi check`: this restores what was armed a moment ago.
    proc = nft_table.nft("-f", table_path)
    if proc.returncode != 0:
        log(
            event,
            f"table inet gnocchi {what} while gnocchi is armed (by {by}) and could not "
            f"be loaded again: {proc.stderr.strip()}; the protected ports are OPEN",
            by=by,
            reason="; ".join(problems),
            how="not-loaded",
        )
        return False
    try:
        still = judge(nft_table.live(), None)
    except nft_table.TableError as e:
        still = [str(e)]
    # The config's ports and the flood limit's port come second: parsing the config
    # takes longer than loading the rules, which protect the usual port (22) at once.
    port, why = configured_knock_port(config_path)
    ported = fill_config_ports(config_path, table_path)
    limited = (
        flood_limit(port if nft_table.set_knock_port(port) else None)
        if port
        else f"; NO per-source flood limit: cannot tell the knock port: {why}"
    ) + ported
    done = (
        f"re-armed from {table_path}"
        if not still
        else f"loaded {table_path} again, but its gate is NOT whole: {'; '.join(still)}"
    )
    log(
        event,
        f"table inet gnocchi {what} while gnocchi is armed (by {by}): the protected "
        f"ports were open; {done}{limited}",
        by=by,
        knock_port=",".join(map(str, port or [])) or None,
        reason="; ".join(problems),
        how="not-whole" if still else "rearmed",
    )
    return not still


def fill_config_ports(config_path: str, table_path: str) -> str:
    """After a bare load of the rules: the protected ports of the config gnocchi runs,
    in one transaction; what to add to the journal entry."""
    from gnocchi.server import config as server_config

    try:
        want = nft_table.wanted(config_path, table_path)
    except (server_config.ConfigError, nft_table.TableError) as e:
        return f"; the protected ports as the rules file has them: {e}"
    proc = nft_table.nft(
        "-f", "-", input=nft_table.fill_script(want.protected, None, want.forwards)
    )
    if proc.returncode != 0:
        return f"; the protected ports as the rules file has them: {proc.stderr.strip()}"
    return f"; protecting {nft_table.show_ports(want.protected)}"


WATCH_PERIOD = 30.0  # seconds between checks when nft monitor says nothing
BY = "something outside gnocchi: `nft flush ruleset`, `nft flush chain`, a firewall tool"
OURS = re.compile(rf"^\w+ \w+ {nft_table.FAMILY} {nft_table.NAME}( |$)".encode())


class Watch:
    """gnocchi-watch's state: the reference (the table file as test-loaded, again when
    the file changes), and the last look at a whole gate: the table as armed, its
    handle, and a gnocchi.admin.cut snapshot, against which a re-arm cuts what came
    in."""

    def __init__(self, config_path: str, table_path: str):
        self.config_path, self.table_path = config_path, table_path
        self.file_key, self.reference, self.refused = None, None, ""
        self.handle, self.snapshot, self.armed = None, None, None

    def load_reference(self) -> nft_table.Table | None:
        try:
            st = os.stat(self.table_path)
            key = (st.st_ino, st.st_mtime_ns, st.st_size)
        except OSError:
            key = None
        if key != self.file_key or self.reference is None and not self.refused:
            self.file_key = key
            try:
                self.reference, self.refused = nft_table.expected(self.table_path), ""
            except nft_table.TableError as e:
                self.reference, self.refused = None, str(e)
                log(
                    "table-changed",
                    f"cannot tell whether table inet gnocchi is the gate "
                    f"gnocchi loads: {e}; only whether it lets strangers in is checked",
                )
        return self.reference

    def problems(self, live: nft_table.Table | None, reference) -> list[str]:
        """judge() against the file, but a table that is what was armed (the last one
        found whole) is whole: the file may have changed since, for a reload to load."""
        found = judge(live, reference)
        if found and live is not None and self.armed is not None and not judge(live, self.armed):
            return []
        if found and live is not None and self.armed is None and not gate.unguarded(live.objects):
            # Its first look: a gate that holds but is not the file's, as when an
            # upgrade's reload is still to come. Kept, and said.
            log(
                "table-changed",
                f"table inet gnocchi holds its gate but is not what "
                f"{self.table_path} makes ({'; '.join(found)}); gnocchi-watch keeps it; "
                "`systemctl reload gnocchi-arm` loads the file",
                priority=4,
            )
            return []
        return found

    def check(self) -> None:
        live, reference = nft_table.live(), self.load_reference()
        problems = self.problems(live, reference)
        if problems and live is None:
            live = settle()  # nftables.service puts it back itself
            problems = self.problems(live, reference)
        if problems:
            restore(self.config_path, self.table_path, BY, live is None, problems)
            live = nft_table.live()
            if judge(live, reference):
                return  # said loudly by restore(); the next event or period tries again
        if self.snapshot is not None and (problems or live.handle() != self.handle):
            self.cut_strangers(live)
        elif problems:
            log(
                "connections-cut",
                "connections that came in while the gate was gone cannot "
                "be told from older ones (gnocchi-watch had not seen the gate whole yet): "
                "none was cut; `ss -tn state established` lists them",
                priority=3,
            )
        # The snapshot first, then a second look: a stranger who came in between the
        # first look and the snapshot must not be taken for an old session.
        taken = cut.snapshot(live.protected())
        again = nft_table.live()
        if (
            again is not None
            and again.handle() == live.handle()
            and not gate.differences(again.objects, live.objects)
            and not gate.unguarded(again.objects)
        ):
            self.handle, self.snapshot, self.armed = live.handle(), taken, again

    def cut_strangers(self, live: nft_table.Table) -> None:
        done, failed = cut.cut(self.snapshot, live.protected())
        if done or failed:
            log(
                "connections-cut",
                f"cut {len(done)} connection{'s' if len(done) != 1 else ''} "
                "to protected ports that came in without a knock while the gate was gone"
                + (f": {shown(done)}" if done else "")
                + (f"; could NOT cut {shown(failed)}" if failed else ""),
                cut=len(done),
                connections=", ".join((done + failed)[:CUT_FIELD]),
            )


CUT_SHOWN, CUT_FIELD = 5, 500  # connections named in the message, in GNOCCHI_CONNECTIONS


def shown(items: list[str]) -> str:
    return ", ".join(items[:CUT_SHOWN]) + (
        f" and {len(items) - CUT_SHOWN} more" if len(items) > CUT_SHOWN else ""
    )


def settle(patience: float = 3.0) -> nft_table.Table | None:
    """The live table once nftables.service is no longer starting, reloading or stopping
    (its own drop-in then puts the table back, and the journal names it, possibly after
    more than one flush: a restart flushes twice), within reason."""
    deadline = time.monotonic() + patience
    while (live := nft_table.live()) is None:
        state = systemctl("is-active", "nftables.service").stdout.strip()
        if state not in ("activating", "deactivating", "reloading") or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    return live


def watch(config_path: str, table_path: str) -> int:
    """Follow the kernel's ruleset events; put table inet gnocchi back whenever it goes or
    is changed, and cut who came in meanwhile. Runs only while gnocchi-arm.service is
    active (gnocchi-watch.service is bound to it and stops before it), so a missing or
    changed table here always means "meant to be armed"."""
    monitor = subprocess.Popen([nft_table.NFT, "monitor"], stdout=subprocess.PIPE)
    state = Watch(config_path, table_path)
    fd, pending = monitor.stdout.fileno(), b""
    look = True  # at once: also what happened while it was down
    while True:
        if look:
            try:
                state.check()
            except (nft_table.TableError, OSError) as e:
                log(
                    "table-changed",
                    f"gnocchi-watch could not check table inet gnocchi: {e}",
                    priority=3,
                )
        # An event about table inet gnocchi, or the period: look at the kernel itself.
        # Our own reloads replace the table in one transaction: after them it is whole.
        if select.select([fd], [], [], WATCH_PERIOD)[0]:
            data = os.read(fd, 65536)
            if not data:
                log(
                    "table-missing",
                    "nft monitor ended; gnocchi-watch stops (systemd restarts it)",
                    priority=3,
                )
                return 1
            *lines, pending = (pending + data).split(b"\n")
            look = any(OURS.match(line) for line in lines)
        else:
            look = True


def table_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="gnocchi table",
        description="Load or unload table inet gnocchi (what gnocchi-arm.service runs; "
        "to arm and disarm use systemctl on gnocchi.socket).",
    )
    p.add_argument(
        "action",
        choices=("load", "unload", "stop", "socket-stop", "rearm", "watch", "record"),
        help="load: check, then load the table keeping pending knocks; "
        "unload: remove it; stop: unload unless gnocchi-arm.service is "
        "restarting; socket-stop: unload if gnocchi.socket is being "
        "stopped; rearm: load it if gnocchi-arm.service is "
        "active and the table is missing; watch: rearm whenever the "
        "table goes (gnocchi-watch.service); record: keep the config as "
        "the last good one if it loads",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument(
        "--table",
        default=nft_table.DEFAULT_FILE,
        metavar="FILE",
        help=f"the rules file (default {nft_table.DEFAULT_FILE})",
    )
    p.add_argument(
        "--by",
        default="a ruleset flush",
        metavar="WHAT",
        help="rearm: what removed the table, for the journal",
    )
    p.add_argument(
        "--reload",
        action="store_true",
        help="load: refuse a config that does not load (ExecReload=), rather "
        "than arm with its last good copy (ExecStart=)",
    )
    args = p.parse_args(argv[1:])
    CONFIG[0] = args.config
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

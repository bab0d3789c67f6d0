"""`gnocchi doctor`: everything a working server needs, each failure with its fix.

Trusts nothing it reads and changes nothing: files, systemd's view of the
units, /proc for sockets and sysctls, and the live ruleset (`nft -j list
ruleset`), which it reads to see whether the admin's own chains let knocks
reach the knock port, and, for the forward path, whether their chains let
gnocchi's forwards through, which ports their rules publish (Docker's,
Podman's) unguarded, and whose chains the kernel runs before gnocchi's.
Guarantees: exit 0 only when every check passes; every failed
check prints the exact command or edit that fixes it. `gnocchi check` is the
subset that needs nothing running (what arming runs first).
"""

from __future__ import annotations

import argparse
import grp
import ipaddress
import json
import os
import socket
import stat
import subprocess
import sys
import time
from dataclasses import dataclass

from gnocchi.admin import chains, check, gate, nft_table, status
from gnocchi.server import DEFAULT_CONFIG

HELPER_DIR = "/run/gnocchi"
FORWARDING = {4: "net.ipv4.ip_forward", 6: "net.ipv6.conf.all.forwarding"}
LEGACY_TABLES = ("/proc/net/ip_tables_names", "/proc/net/ip6_tables_names")


@dataclass
class Finding:
    ok: bool
    what: str
    detail: str = ""
    fix: str = ""
    warn: bool = False  # cannot tell for sure: shown, but does not fail the run


class Doctor:
    def __init__(self, config_path: str, table_path: str):
        self.config_path, self.table_path = config_path, table_path
        self.findings: list[Finding] = []
        self.cfg = None
        self.port: int | None = None
        self.server_key: bytes | None = None
        self.server_keys: tuple[bytes, ...] = ()
        self.ports: list[int] = []
        self.knock_key: list[str] = []
        self.live: nft_table.Table | None = None

    def add(
        self, ok: bool, what: str, bad: str = "", fix: str = "", good: str = "", warn: bool = False
    ) -> bool:
        """One finding: `bad` and `fix` are shown when it fails, `good` when it passes."""
        self.findings.append(Finding(ok, what, good if ok else bad, fix, warn))
        return ok

    # ---- the checks, in the order a setup is built ------------------------------

    def files(self) -> None:
        from gnocchi.server import config as server_config
        from gnocchi.shared import keys

        for path in (self.config_path, self.table_path):
            loose = check.loose_mode(path)
            self.add(loose is None, f"{path} is root's alone", *(_split(loose) if loose else ()))
        try:
            self.cfg = server_config.load(self.config_path)
            self.add(True, "the config loads", good=self.config_path)
        except server_config.ConfigError as e:
            try:  # the rest is about the config gnocchi runs: its last good copy
                self.cfg = server_config.load_running(self.config_path)
            except server_config.ConfigError:
                self.add(False, "the config loads", str(e), f"edit {self.config_path}")
                return
            self.add(
                False,
                "the config loads",
                server_config.fell_back(e, self.cfg.path).split("; fix: ")[0],
                f"correct {self.config_path}, then `gnocchi reload`",
            )
        try:
            from gnocchi.server import keyring  # v1's key, v2's, or both (PROTOCOL.md)

            ring = keyring.load(self.cfg)
            self.server_key, self.ports = ring.v1, keyring.ports(ring)
            self.server_keys = keyring.secrets(ring)
            # The self-knock's key: v2's public key if the server has one, else v1's.
            self.knock_key = (
                ["--server-public-key", ring.v2[-1][0].hex()]
                if ring.v2
                else ["--server-key-file", self.cfg.server_key_file]
            )
            self.port = self.ports[0]
            self.add(
                True,
                "the server key",
                good=f"{', '.join(keyring.paths(self.cfg).values())}"
                f": 0600, knock port {', '.join(f'{p}/udp' for p in self.ports)}",
            )
        except keys.KeyFileError as e:
            self.add(False, "the server key", e.problem, e.fix or "see docs/install.md, step 3")
        try:
            nft_table.test_load(self.table_path)
            self.add(True, "the table file loads", good=self.table_path)
        except nft_table.TableError as e:
            self.add(
                False,
                "the table file loads",
                str(e),
                "apt install --reinstall gnocchi-server (the rules are the package's)",
            )
        from gnocchi.server import counters

        if os.access(self.cfg.state_dir, os.R_OK | os.X_OK):
            try:
                counters.Store(self.cfg.state_dir).load()
                self.add(True, "the counter store reads", good=self.cfg.state_dir)
            except counters.StoreError as e:
                self.add(False, "the counter store reads", *str(e).split("; to recover: ", 1))

    def clients(self) -> None:
        if self.cfg is None:
            return
        from gnocchi.shared import keys

        if not self.add(
            bool(self.cfg.clients),
            "at least one client",
            "no [clients.NAME] in the config",
            f"add one to {self.config_path} (docs/install.md, step 5)",
        ):
            return
        known = {c.public_key: c.name for c in self.cfg.clients}
        for c in self.cfg.clients:
            problem = keys.public_key_problem(c.public_key, self.server_keys, known)
            # A private key passes as a point 1 time in 16: the good text says what was seen.
            self.add(
                problem is None,
                f"clients.{c.name}.public_key is a client's public key",
                problem or "",
                keys.public_key_fix(c.name),
                good="an Ed25519 public key, not this server's key nor another "
                "client's private key",
            )

    def knock_socket(self) -> None:
        report = check.Report()
        check.check_socket(report, self.ports, None)
        if report.problems:
            for problem in report.problems:
                self.add(False, "gnocchi.socket's port is the key's", *_split(problem))
        elif self.port is not None:
            self.add(True, "gnocchi.socket's port is the key's", good=f"{self.port}/udp")
        if self.port is not None:
            self.add(
                status.udp_bound(self.port),
                f"something listens on UDP {self.port}",
                "nothing does",
                "systemctl start gnocchi.socket (or `gnocchi arm "
                "--trial 300`); `systemctl status gnocchi.socket` says why it is down",
            )

    def helper_socket(self) -> None:
        path = status.HELPER_SOCKET
        try:
            gid = grp.getgrnam("gnocchi").gr_gid
        except KeyError:
            self.add(
                False,
                "the group gnocchi exists",
                "",
                "reinstall the package (systemd-sysusers gnocchi-knock.conf makes it)",
            )
            return
        for where, mode, kind in ((HELPER_DIR, 0o750, stat.S_ISDIR), (path, 0o660, stat.S_ISSOCK)):
            try:
                st = os.stat(where)
            except OSError:
                self.add(
                    False,
                    f"{where} exists",
                    "missing",
                    "systemd-tmpfiles --create gnocchi-knock.conf"
                    if where == HELPER_DIR
                    else "systemctl start gnocchi.socket (it starts gnocchi-helper.socket)",
                )
                continue
            good = (
                kind(st.st_mode)
                and st.st_uid == 0
                and st.st_gid == gid
                and stat.S_IMODE(st.st_mode) == mode
            )
            self.add(
                good,
                f"{where} is root:gnocchi {mode:04o}",
                f"it is uid {st.st_uid}, gid {st.st_gid}, mode {stat.S_IMODE(st.st_mode):04o}",
                f"chown root:gnocchi {where} && chmod {mode:04o} {where}"
                + (
                    " (systemctl restart gnocchi-helper.socket makes it anew)"
                    if where == path
                    else ""
                ),
            )
        self.add(
            status.unix_listening(path),
            f"the helper's socket {path} listens",
            "it does not",
            "systemctl start gnocchi.socket (it starts gnocchi-helper.socket)",
        )

    def armed(self) -> None:
        try:
            self.live = nft_table.live()
        except nft_table.TableError as e:
            self.add(False, "table inet gnocchi is loaded", str(e))
            return
        if not self.add(
            self.live is not None,
            "table inet gnocchi is loaded (armed)",
            "NOT ARMED: the protected ports are as open as your own rules make them",
            "gnocchi arm --trial 300 (then `gnocchi arm --confirm` from a session "
            "that knocked in), or systemctl enable --now gnocchi.socket",
        ):
            return
        protected = self.live.protected()
        self.findings.pop()  # the line above, said again with what it protects
        self.add(
            True,
            "table inet gnocchi is loaded (armed)",
            good=f"protecting {nft_table.show_ports(protected)}",
        )
        open_to, differs, refused = status.gate_problems(self.live, self.table_path)
        fix = "systemctl reload gnocchi-arm (gnocchi-watch does it at once while it runs)"
        self.add(
            not open_to,
            "the live gate drops whoever did not knock",
            f"it lets them in: {gate.summary(open_to)}",
            fix,
            good="every probe dropped",
        )
        self.add(
            not differs and not refused,
            "the live table is what gnocchi loads",
            "; ".join(differs) or f"cannot tell: {refused}",
            fix,
            good=f"rules, chains and sets as {self.table_path} makes them",
        )
        if self.port is not None:
            limited = self.live.knock_ports()
            self.add(
                limited == [self.port],
                "the table limits floods on the knock port",
                "it has no set knock_port"
                if limited is None
                else f"it limits UDP {', '.join(map(str, limited)) or 'no port'}, not the "
                f"knock port {self.port}: a flood from one address reaches the verifier",
                "systemctl reload gnocchi-arm (it writes the server key's port into the table)",
                good=f"{self.port}/udp, per source address",
                warn=True,
            )
        if self.cfg is None:
            return
        try:
            configured = nft_table.protected_ports(self.cfg, self.config_path).protected
        except nft_table.TableError:
            configured = {}
        for c in self.cfg.clients:
            for o in c.allow:
                fix = (
                    "gnocchi reload (the config protects it; the loaded table is older)"
                    if nft_table.covers(configured.get(o.proto, []), o.port)
                    else f"gnocchi protect {o.port}/{o.proto}; or remove it from "
                    f"clients.{c.name}.allow"
                )
                self.add(
                    nft_table.covers(protected.get(o.proto, []), o.port),
                    f"clients.{c.name} may open {o.port}/{o.proto}: it is protected",
                    "not in the live table's protected set: it is open to everyone "
                    "without a knock, and the helper refuses it",
                    fix,
                )

    def ruleset(self) -> list[dict] | None:
        proc = nft_table.nft("-j", "list", "ruleset")
        if proc.returncode != 0:
            self.add(False, "the ruleset can be read", proc.stderr.strip(), "run as root")
            return None
        return [o for o in json.loads(proc.stdout)["nftables"] if "metainfo" not in o]

    def own_ruleset(self) -> None:
        if self.port is None:
            return
        objects = self.ruleset()
        if objects is None:
            return
        verdicts = chains.reach(objects, self.port)
        if not verdicts:
            self.add(
                True,
                "your own rules let knocks reach the knock port",
                good="no other table has an input chain",
            )
        for name, (verdict, note) in verdicts.items():
            family, tbl, chain = name
            where = f"{family} {tbl} {chain}"
            if verdict == "accept":
                self.add(True, f"{where} lets knocks to {self.port}/udp through", good=note)
            elif verdict in ("drop", "reject"):
                answer = (
                    " and answers them with ICMP, which also shows a scanner the port is special"
                    if verdict == "reject"
                    else ""
                )
                self.add(
                    False,
                    f"{where} lets knocks to {self.port}/udp through",
                    f"it drops them{answer} ({note}): no knock ever reaches gnocchi, and "
                    "nothing is logged",
                    f"nft insert rule {where} udp dport {self.port} accept (and add "
                    f"`udp dport {self.port} accept` to that chain in /etc/nftables.conf); "
                    f"iptables: iptables -I INPUT -p udp --dport {self.port} -j ACCEPT; "
                    f"ufw: ufw allow {self.port}/udp",
                )
            else:
                self.add(
                    False,
                    f"{where} lets knocks to {self.port}/udp through",
                    f"cannot tell ({note})",
                    f"make sure {where} accepts udp dport {self.port} from anywhere",
                    warn=True,
                )

    def forward_path(self) -> None:
        """What doctor can see of the forward path: the kernel forwards what gnocchi's
        forwards need, their chains let it through, the ports their rules publish are
        guarded, and whose chains run before gnocchi's (docs/firewall.md, "Forwarded
        services")."""
        if self.live is None:
            return
        objects = self.ruleset()
        if objects is None:
            return
        forwards = self.cfg.forwards if self.cfg is not None else ()
        for version in sorted({t.address.version for f in forwards for t in f.to}):
            key = FORWARDING[version]
            names = ", ".join(
                f"forwards.{f.name}"
                for f in forwards
                if any(t.address.version == version for t in f.to)
            )
            self.add(
                sysctl(key) == "1",
                f"the kernel forwards IPv{version} ({names})",
                f"{key} is {sysctl(key) or 'unreadable'}: a knocked client's connection "
                "to a forward is translated, then dropped by the kernel",
                f"sysctl -w {key}=1, and `{key} = 1` in /etc/sysctl.d/90-forward.conf",
                good=f"{key} = 1",
            )
        for f in forwards:
            for to in f.to:
                self.their_forward_chains(objects, f, to)
        self.published_ports(objects, self.live.protected(), forwards)
        for where, hook, prio, kind, ours in chains.before(objects):
            listens = [
                f
                for f in forwards
                if any(
                    f.listen.proto in p.protos
                    and (
                        p.ports is None
                        or nft_table.covers(
                            [list(x) if isinstance(x, tuple) else x for x in p.ports], f.listen.port
                        )
                    )
                    for p in chains.published(objects)
                    if p.where.startswith(where + " ")
                )
            ]
            if kind == "nat":
                self.add(
                    not listens,
                    f"{where} (nat, {hook}, priority {prio}) runs before "
                    f"gnocchi's (priority {ours})",
                    f"it may translate {', '.join(f'forwards.{f.name}' for f in listens)}'s"
                    " port first, and a connection keeps its first translation: that "
                    "forward then never reaches its target (gnocchi's gate still judges "
                    "the connection)",
                    "give the forward another listen port",
                    good="it translates none of gnocchi's forwards' ports",
                )
            else:
                self.add(
                    True,
                    f"{where} ({kind}, {hook}, priority {prio}) runs before "
                    f"gnocchi's (priority {ours})",
                    good="its accepts do not skip "
                    "gnocchi's chain (an accept ends only its own chain); a drop there "
                    "is final, as anywhere",
                )
        legacy = [name for path in LEGACY_TABLES for name in _read(path).split()]
        if legacy:
            self.add(
                False,
                "every rule can be read with nft",
                f"iptables-legacy tables are "
                f"loaded ({', '.join(sorted(set(legacy)))}): doctor cannot see their "
                "rules (gnocchi's chains still see every packet; a drop there still "
                "wins, their accepts do not skip gnocchi)",
                "use iptables-nft "
                "(update-alternatives --set iptables /usr/sbin/iptables-nft), then "
                "restart what loads those rules",
                warn=True,
            )

    def their_forward_chains(self, objects: list[dict], forward, to) -> None:
        """Their forward base chains must let a new connection to the target through."""
        proto, ip = forward.listen.proto, "ip" if to.address.version == 4 else "ip6"
        what = f"{proto} to {to}"
        fix = (
            f"accept it there, e.g. nft insert rule TABLE CHAIN {ip} daddr {to.address} "
            f"{proto} dport {to.port} accept; Docker: iptables -I DOCKER-USER -d "
            f"{to.address} -p {proto} --dport {to.port} -j ACCEPT (and its replies: -s "
            f"{to.address} -p {proto} --sport {to.port})"
        )
        for (family, table, chain), (verdict, note) in chains.reach(
            objects, to.port, forward.listen.proto, "forward", to.address
        ).items():
            where = f"{family} {table} {chain}"
            self.add(
                verdict == "accept",
                f"{where} lets forwards.{forward.name} through ({what})",
                (
                    f"it drops it ({note})"
                    if verdict in ("drop", "reject")
                    else f"cannot tell ({note})"
                ),
                fix.replace("TABLE CHAIN", f"{family} {table} {chain}"),
                good=note,
                warn=verdict not in ("accept", "drop", "reject"),
            )

    def published_ports(self, objects: list[dict], protected: dict, forwards) -> None:
        """Each port their rules publish (translate) is guarded by gnocchi, or said not to be."""
        listens = {(f.listen.proto, f.listen.port) for f in forwards}
        ports: dict[tuple, list] = {}  # (proto, port or (low, high)) -> [(where, to)]
        for p in chains.published(objects):
            if p.ports is None:
                self.add(
                    False,
                    f"{p.where} publishes {'/'.join(p.protos)} ports",
                    "cannot tell which ports: those gnocchi does not protect are open to everyone",
                    "check them with `nft list ruleset`; gnocchi protect "
                    "PORT[/udp] guards one by a knock",
                    warn=True,
                )
                continue
            for proto in p.protos:
                for port in p.ports:
                    if (proto, port) not in listens:  # gnocchi's own forwards: said above
                        ports.setdefault((proto, port), []).append(p)
        for (proto, port), rules in ports.items():
            low, high = (port, port) if isinstance(port, int) else port
            ranges = [list(x) if isinstance(x, tuple) else x for x in protected.get(proto, [])]
            guarded = high - low <= 4096 and all(
                nft_table.covers(ranges, n) for n in range(low, high + 1)
            )
            shown = f"{low}/{proto}" if low == high else f"{low}-{high}/{proto}"
            to = ", ".join(sorted({p.to for p in rules if p.to}))
            where = ", ".join(sorted({p.where.split(" (rule")[0] for p in rules}))
            self.add(
                guarded,
                f"{shown} (published{' to ' + to if to else ''} by {where}) is guarded",
                "it is open to everyone, without a knock (if it should be, nothing to do)",
                f"gnocchi protect {shown}" if low == high else "gnocchi protect each of its ports",
                good="a knock opens it, once",
                warn=True,
            )

    def units(self) -> None:
        for unit_name in ("gnocchi-arm.service", "gnocchi-watch.service", "gnocchi.socket"):
            state = status.unit(unit_name)
            self.add(
                state == "active",
                f"{unit_name} is active",
                state,
                f"systemctl status {unit_name}; to arm: gnocchi arm --trial 300",
            )

    def self_knock(self, key_file: str | None, address: str | None) -> None:
        """Knock this host's own address with a client key kept for this purpose, then
        connect from here: the first connection must pass, the next one must not."""
        what = "a self-knock opens the port once, then it is closed again"
        if key_file is None:
            self.add(
                False,
                what,
                'skipped: no --self-knock CLIENT_KEY_FILE (docs/install.md, "gnocchi doctor")',
                warn=True,
            )
            return
        if self.cfg is None or not self.ports or self.live is None:
            self.add(False, what, "skipped: fix the failures above first", warn=True)
            return
        from gnocchi.shared import keys, knock_request

        try:
            public = keys.public_of(keys.load_secret(key_file))
        except keys.KeyFileError as e:
            self.add(False, what, str(e), e.fix)
            return
        client = self.cfg.client_by_key().get(public)
        if (
            client is None
            or not isinstance(client.default, knock_request.Open)
            or client.default.proto != "tcp"
        ):
            self.add(
                False,
                what,
                f"{key_file} is not the key of a configured client whose "
                "default request opens a TCP port",
                f"add a client with its public key "
                f'(`{keys.PRINT_PUBKEY} {key_file}`) and allow = ["PORT/tcp"] of a '
                "protected port; keep that key for the self-knock only (its counter is its "
                "own)",
            )
            return
        port = client.default.port
        address = address or own_address()
        if address is None:
            self.add(
                False,
                what,
                "this host has no global IPv4 address to knock",
                "give one with --address",
            )
            return
        if reaches(address, port):
            self.add(
                False,
                what,
                f"{address} port {port}/tcp is reachable BEFORE the knock",
                "gnocchi status says whether it is armed",
            )
            return
        since = time.time()
        # The real client, as its launcher runs it: an admin module imports no
        # client one (gnocchi/__init__.py), and this is what a user's knock does.
        client_run = subprocess.run(
            [
                sys.executable,
                "-I",
                "-c",
                "import sys; sys.path.insert(0, sys.argv.pop(1)); "
                "from gnocchi.client.knock import main; sys.exit(main(sys.argv[1:]))",
                os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                *self.knock_key,
                "--client-key-file",
                key_file,
                "--open",
                f"{port}/tcp",
                address,
            ],
            capture_output=True,
            text=True,
            timeout=30,
        )
        if client_run.returncode != 0:
            self.add(False, what, f"gnocchi-knock failed: {client_run.stderr.strip()}")
            return
        deadline = time.monotonic() + 3
        while not reaches(address, port):
            if time.monotonic() > deadline:
                why = latest_refusal(since) or "no entry for it in journalctl -u gnocchi"
                self.add(
                    False,
                    what,
                    f"the knock by {client.name} did not open {port}/tcp on {address}: {why}",
                    "journalctl -u gnocchi says why",
                )
                return
            time.sleep(0.2)
        if reaches(address, port):
            self.add(
                False,
                what,
                "a second connection passed: one knock opened more than one",
                "systemctl reload gnocchi-arm (the table may be an old copy)",
            )
            return
        self.add(
            True,
            what,
            good=f"{client.name} knocked {address}; {port}/tcp let one "
            "connection in, then dropped the next",
        )

    def run(self, key_file: str | None = None, address: str | None = None) -> list[Finding]:
        self.files()
        self.clients()
        self.knock_socket()
        self.helper_socket()
        self.armed()
        self.own_ruleset()
        self.forward_path()
        self.units()
        self.self_knock(key_file, address)
        return self.findings


def reaches(address: str, port: int, timeout: float = 0.5) -> bool:
    """A TCP connection from this host to address:port gets an answer (SYN-ACK or RST):
    the SYN passed the gate. A drop times out."""
    try:
        with socket.create_connection((address, port), timeout=timeout):
            return True
    except ConnectionRefusedError:
        return True
    except OSError:
        return False


def own_address() -> str | None:
    proc = subprocess.run(
        ["ip", "-4", "-o", "addr", "show", "scope", "global"],
        capture_output=True,
        text=True,
        timeout=10,
    )
    for line in proc.stdout.splitlines():
        fields = line.split()
        if "inet" in fields:
            text = fields[fields.index("inet") + 1].split("/")[0]
            address = ipaddress.ip_address(text)
            if not (address.is_loopback or address.is_link_local):
                return text
    return None


def sysctl(key: str) -> str:
    """A sysctl's value as /proc/sys has it, or "" when it cannot be read."""
    return _read("/proc/sys/" + key.replace(".", "/")).strip()


def _read(path: str) -> str:
    try:
        with open(path, encoding="ascii") as f:
            return f.read()
    except OSError:
        return ""


def latest_refusal(since: float) -> str:
    """The verifier's newest entry since `since` that is not an acceptance, if any."""
    try:
        from systemd import journal
    except ImportError:
        return ""
    reader = journal.Reader()
    reader.add_match(_SYSTEMD_UNIT="gnocchi.service")
    reader.seek_realtime(since)
    last = ""
    for entry in reader:
        if entry.get("GNOCCHI_EVENT") not in (None, "accepted", "started"):
            last = entry.get("MESSAGE", "")
    return last


def _split(text: str) -> tuple[str, str]:
    """ "problem; fix: command" -> (problem, command)."""
    problem, _, fix = text.partition("; fix: ")
    return problem, fix


# ---- the command ----------------------------------------------------------------


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(
        prog="gnocchi doctor",
        description="Check everything a working gnocchi server needs: keys and modes, the "
        "knock port's drop-in, the sockets, the helper's socket, the table, every "
        "client key, and whether your own firewall lets knocks in. Each failure "
        "comes with its fix. Exit 0 only when all pass. Changes nothing.",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    p.add_argument("--table", default=nft_table.DEFAULT_FILE, metavar="FILE")
    p.add_argument(
        "--self-knock",
        metavar="CLIENT_KEY_FILE",
        help="knock this host's own address with this client key (one kept for "
        "this only) and check that one connection passes, then none",
    )
    p.add_argument(
        "--address",
        metavar="A.B.C.D",
        help="the address to knock for --self-knock (default: this host's first "
        "global IPv4 address)",
    )
    args = p.parse_args(argv[1:])
    if os.geteuid() != 0:
        print("gnocchi doctor: run as root (keys, the ruleset)", file=sys.stderr)
        return 2
    findings = Doctor(args.config, args.table).run(args.self_knock, args.address)
    for f in findings:
        mark = "ok  " if f.ok else ("??  " if f.warn else "FAIL")
        print(f"{mark} {f.what}" + (f": {f.detail}" if f.detail else ""))
        if not f.ok and f.fix:
            print(f"     fix: {f.fix}")
    failed = [f for f in findings if not f.ok and not f.warn]
    unsure = [f for f in findings if f.warn]
    print(
        f"gnocchi doctor: {len(failed)} failed, {len(unsure)} unsure, "
        f"{len(findings) - len(failed) - len(unsure)} ok"
    )
    return 1 if failed else 0

"""`gnocchi check`: would gnocchi work as configured? (like `sshd -t`, `nginx -t`)

Trusts nothing it reads and changes nothing: it loads the config, the server
key, the rules file (into a throwaway namespace, see gnocchi/admin/nft_table.py) and
asks systemd which port gnocchi.socket would listen on. Guarantees: exit 0
only when the verifier could run and a configured client could open a
protected port; otherwise every problem is named, each with its fix. The
arming unit runs the same checks before it loads or reloads the table
(gnocchi/admin/table.py), so a server is never armed when nobody could knock in;
`gnocchi reload` runs them before it applies a config. A config that does not
load is named with what gnocchi runs instead (its last good copy, if any).
"""

from __future__ import annotations

import argparse
import os
import stat
import subprocess
import sys
from dataclasses import dataclass, field

from gnocchi.server import config as server_config
from gnocchi.server import counters, keyring
from gnocchi.shared import keys
from gnocchi.admin import nft_table
from gnocchi.admin.setup import DROP_IN, UNIT_DIR  # what setup writes, check reads

SHARE = 32  # openings the helper lets one client hold pending (helper/nft.py SHARE)
SOCKET = "gnocchi.socket"


@dataclass
class Report:
    problems: list[str] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    port: int | None = None  # the server key's knock port (the first of knock_ports)
    knock_ports: list[int] = field(default_factory=list)  # those of all the server's keys
    clients: int = 0
    protected: dict | None = None  # from the config (nft_table.protected_ports)
    flood_limit: bool = True  # the rules file has set knock_port
    config_error: str | None = None  # the config does not load: why
    cfg: server_config.Config | None = None  # what was checked: the file, or its last good copy
    ports: nft_table.Ports | None = None  # the protected ports and where they come from
    knocked_size: int | None = None  # the smaller knocked set's size in the rules file

    @property
    def ok(self) -> bool:
        return not self.problems

    def summary(self, config_path: str) -> str:
        ports = nft_table.show_ports(self.protected) if self.protected else "?"
        return (
            f"{config_path}: {self.clients} client{'s' if self.clients != 1 else ''}; "
            f"knock port {', '.join(f'{p}/udp' for p in self.knock_ports) or None} "
            f"(gnocchi.socket); protects {ports}"
        )


def loose_mode(path: str) -> str | None:
    """Why root should not trust path (a file anyone but root may change), or None."""
    try:
        st = os.stat(path)
    except OSError:
        return None  # the loader names a missing file
    if st.st_mode & 0o022 or st.st_uid != 0:
        mode = stat.S_IMODE(st.st_mode)
        return (
            f"{path}: may be changed by others than root (owner uid {st.st_uid}, "
            f"mode {mode:04o}); fix: chown root:root {path} && chmod go-w {path}"
        )
    return None


def systemd_running() -> bool:
    return os.path.isdir("/run/systemd/system")


def listen_ports_loaded() -> tuple[str, list[int]]:
    """(LoadState, datagram ports) of gnocchi.socket as systemd has it loaded."""
    proc = subprocess.run(
        ["systemctl", "show", "-p", "LoadState", "-p", "Listen", SOCKET],
        capture_output=True,
        text=True,
        timeout=30,
    )
    state, ports = "", []
    for line in proc.stdout.splitlines():
        key, _, value = line.partition("=")
        if key == "LoadState":
            state = value
        elif key == "Listen" and value.endswith("(Datagram)"):
            address = value.rsplit(" ", 1)[0]
            ports.append(int(address.rsplit(":", 1)[1]))
    return state, ports


def drop_in_ports(unit_dir: str) -> list[int] | None:
    """The ListenDatagram= ports `gnocchi setup`'s drop-in sets, or None without one."""
    path = os.path.join(unit_dir, DROP_IN)
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError:
        return None
    ports: list[int] = []
    for line in lines:
        key, _, value = line.strip().partition("=")
        if key.strip() == "ListenDatagram":
            value = value.strip()
            if not value:
                ports = []  # an empty assignment resets the list, as in systemd
            else:
                tail = value.rsplit(":", 1)[-1]
                ports.append(int(tail) if tail.isdigit() else -1)
    return ports


def key_ports(want: list[int]) -> str:
    """ "the server key's knock port is P", or the same of several keys' ports."""
    if len(want) == 1:
        return f"the server key's knock port is {want[0]}"
    return f"the knock ports of the server's keys are {', '.join(map(str, want))}"


def check_socket(report: Report, want: list[int], unit_dir: str | None) -> None:
    """gnocchi.socket listens on the keys' ports, each once (want empty: no key is
    usable, so only a missing port is reported)."""
    setup = "run `gnocchi setup`"
    if unit_dir is None and systemd_running():
        state, ports = listen_ports_loaded()
        on_disk = drop_in_ports(UNIT_DIR)
        if state != "loaded" or not ports:
            fix = (
                f"run `systemctl daemon-reload` ({UNIT_DIR}/{DROP_IN} sets it)"
                if on_disk == want
                else setup
            )
            report.problems.append(
                f"{SOCKET} has no knock port (LoadState={state or '?'}), so "
                f"nothing would receive knocks; fix: {fix}"
            )
        elif want and sorted(ports) != sorted(want):
            fix = (
                "run `systemctl daemon-reload`, then `systemctl restart gnocchi.socket`"
                if on_disk == want
                else f"{setup}, then `systemctl restart gnocchi.socket`"
            )
            shown = ", ".join(map(str, ports))
            report.problems.append(
                f"{SOCKET} listens on UDP {shown}, but {key_ports(want)}; fix: {fix}"
            )
        return
    ports = drop_in_ports(unit_dir or UNIT_DIR)
    path = os.path.join(unit_dir or UNIT_DIR, DROP_IN)
    if ports is None:
        report.problems.append(f"{path} is missing, so {SOCKET} has no knock port; fix: {setup}")
    elif want and sorted(ports) != sorted(want):
        report.problems.append(
            f"{path} sets UDP {', '.join(map(str, ports)) or 'nothing'}, "
            f"but {key_ports(want)}; fix: {setup}"
        )


def check_credentials(report: Report, cfg: server_config.Config, unit_dir: str | None) -> None:
    """gnocchi.service hands the verifier each key file the config uses: its own
    LoadCredential= covers only the v1 key; `gnocchi setup` writes the drop-in for
    a v2 key (and for a server without a v1 key)."""
    from gnocchi.admin import setup

    path = os.path.join(unit_dir or UNIT_DIR, setup.SERVICE_DROP_IN)
    try:
        with open(path, encoding="utf-8") as f:
            current = f.read()
    except OSError:
        current = None
    if current is None and list(keyring.paths(cfg)) == ["server_key_file"]:
        return
    if current != setup.service_drop_in_text(cfg):
        report.problems.append(
            f"{path} does not hand gnocchi.service the key files "
            f"{', '.join(keyring.paths(cfg).values())} (the verifier could "
            "not read them); fix: run `gnocchi setup`, then "
            "`systemctl daemon-reload`"
        )


def check_flood_limit(report: Report, table_path: str) -> None:
    if not report.flood_limit:
        report.warnings.append(
            f"{table_path} has no set knock_port, so a flood from one "
            "address reaches the verifier whole and can keep knocks out; "
            "fix: copy set knock_port, sets knock_sources4/6 and "
            "knock_sites6, chain knock (and its jump) from "
            "/usr/share/gnocchi/gnocchi.nft, then "
            "systemctl reload gnocchi-arm"
        )


def check_live_knock_port(report: Report, table_path: str) -> None:
    """The loaded table limits floods on the key's knock port (arming wrote it from
    the key; a key changed since needs the table loaded again)."""
    try:
        live = nft_table.live()
    except nft_table.TableError:
        return  # not root, or no nft: `gnocchi status` says more
    if live is None or not report.knock_ports:
        return
    ports = live.knock_ports()
    fix = "fix: systemctl reload gnocchi-arm (it loads the table with the key's port)"
    if ports is None and report.flood_limit:
        report.warnings.append(
            f"the loaded table inet gnocchi has no flood limit on the knock "
            f"port, but {table_path} has one; {fix}"
        )
    elif ports is not None and sorted(ports) != sorted(report.knock_ports):
        shown = ", ".join(map(str, ports)) or "no port"
        report.warnings.append(
            f"the loaded table inet gnocchi limits floods on UDP {shown}, "
            f"but {key_ports(report.knock_ports)} (a key changed since "
            f"arming?), so floods to it are not limited; {fix}"
        )


def check_live_gate(report: Report, table_path: str) -> None:
    """The loaded table is the gate the file makes (a flushed chain, an edit by hand or
    a firewall tool would show here); a warning: reloading fixes it."""
    from gnocchi.admin import gate

    try:
        live, reference = nft_table.live(), nft_table.test_load(table_path)
    except nft_table.TableError:
        return  # not root, no nft, or the file's own problem is reported
    if live is None:
        return
    found = gate.differences(live.objects, reference.objects)
    if open_to := gate.unguarded(live.objects):
        found.append(f"it lets in someone who never knocked: {gate.summary(open_to, 1)}")
    if found:
        report.warnings.append(
            f"the loaded table inet gnocchi is not what {table_path} makes: "
            f"{'; '.join(found)}; fix: systemctl reload gnocchi-arm"
        )


def check_syncookies(report: Report, path: str = "/proc/sys/net/ipv4/tcp_syncookies") -> None:
    """SYN cookies always on let an ACK make a connection, and the gate judges SYNs
    (docs/firewall.md, "SYN cookies"): a knocked client could replay its ACK, and
    a stranger could guess a cookie. Debian's default, 1, is safe."""
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return  # no IPv4 sysctls here: nothing to judge
    if value == "2":
        report.problems.append(
            "net.ipv4.tcp_syncookies is 2 (SYN cookies always): a cookie "
            "connection starts with an ACK, which the gate does not judge; "
            "fix: sysctl -w net.ipv4.tcp_syncookies=1 (and in "
            "/etc/sysctl.d/, if you set 2 there)"
        )


def check_liberal(
    report: Report, path: str = "/proc/sys/net/netfilter/nf_conntrack_tcp_be_liberal"
) -> None:
    """Conntrack that does not check TCP windows lets one forged ACK complete a
    handshake, and so spend a client's knock (docs/firewall.md, "What a forger
    can still do"): a lockout lever, not a way in, so a warning."""
    try:
        with open(path) as f:
            value = f.read().strip()
    except OSError:
        return  # conntrack not loaded yet: it starts at 0
    if value == "1":
        report.warnings.append(
            "net.netfilter.nf_conntrack_tcp_be_liberal is 1: conntrack takes "
            "any ACK as a completed handshake, so anyone who forges a "
            "client's address can spend its knocks; fix: sysctl -w "
            "net.netfilter.nf_conntrack_tcp_be_liberal=0"
        )


def check_forwarding(report: Report, cfg: server_config.Config, proc: str = "/proc/sys") -> None:
    """A forward needs the kernel to forward its family: otherwise a knock for it is
    translated, then dropped (a warning: the admin may turn it on after arming)."""
    keys = {4: "net/ipv4/ip_forward", 6: "net/ipv6/conf/all/forwarding"}
    for version in sorted({t.address.version for f in cfg.forwards for t in f.to}):
        try:
            with open(f"{proc}/{keys[version]}") as f:
                on = f.read().strip() != "0"
        except OSError:
            continue
        if not on:
            key = keys[version].replace("/", ".")
            report.warnings.append(
                f"{key} is 0: the kernel forwards no IPv{version}, so "
                f"{cfg.path}'s forwards to IPv{version} addresses reach "
                f"nothing; fix: sysctl -w {key}=1 (and in /etc/sysctl.d/)"
            )


def check_clients(report: Report, cfg: server_config.Config) -> None:
    report.clients = len(cfg.clients)
    if not cfg.clients:
        report.problems.append(
            f"{cfg.path}: no [clients.NAME] configured: nobody could knock, "
            "so arming would shut everyone out of the protected ports; "
            "fix: add a client (docs/install.md, step 5)"
        )
        return
    if report.protected is None:
        return  # where the ports come from has its own problem
    usable = []
    for client in cfg.clients:
        for allowed in client.allow:
            if nft_table.covers(report.protected.get(allowed.proto, []), allowed.port):
                usable.append(client.name)
            else:
                report.warnings.append(
                    f"{cfg.path}: clients.{client.name}.allow: "
                    + unprotected(allowed.port, allowed.proto)
                )
    if not usable:
        report.problems.append(
            f"{cfg.path}: no client may open a protected port "
            f"({nft_table.show_ports(report.protected)}), so arming would shut "
            "everyone out; fix: add one to a client's allow list, or protect "
            "a port a client may open (`gnocchi protect PORT[/udp]`)"
        )


def client_line(client: server_config.Client) -> str:
    """What a client may open, and the file it is configured in (the config, a drop-in
    in clients.d, or, when the files are broken, the last good copy)."""
    allowed = ", ".join(f"{o.port}/{o.proto}" for o in client.allow) or "nothing"
    actions = f"; actions {', '.join(client.actions)}" if client.actions else ""
    return f"{client.name}: {allowed}{actions} (from {client.file})"


def unprotected(port: int, proto: str) -> str:
    """Why an allowed port that is not protected matters, and the one command that fixes it."""
    return (
        f"{port}/{proto} is allowed but not protected: it is open to everyone without a "
        f"knock, and the helper refuses to open it (a knock asking for it opens nothing); "
        f"fix: gnocchi protect {port}/{proto}"
    )


def check_ports(report: Report, cfg: server_config.Config, config_path: str) -> None:
    """Where the protected ports come from ([protect], or 0.3's table file), and that
    the knock port is not among them (knocks would then need a knock)."""
    try:
        ports = nft_table.protected_ports(cfg, config_path)
    except nft_table.TableError as e:
        report.problems.append(str(e))
        return
    report.protected, report.ports = ports.protected, ports
    legacy = nft_table.legacy_file(config_path)
    if cfg.protect is None and os.path.exists(legacy):
        listed = " ".join(f"{p}/{proto}" for proto, found in ports.protected.items() for p in found)
        report.warnings.append(
            f"the protected ports ({nft_table.show_ports(ports.protected)}) "
            f"come from {ports.source}; fix: "
            + (
                f"gnocchi protect {listed}"
                if listed
                else f"add [protect] to {cfg.path} (docs/server.md)"
            )
        )
    elif os.path.exists(legacy):
        report.warnings.append(
            f"{legacy} (the table file of gnocchi 0.3 and before) is not "
            f"read any more: the ports are in [protect] in {cfg.path}; "
            f"fix: rm {legacy}"
        )
    for port in report.knock_ports:
        forwarded = [f for f in cfg.forwards if (f.listen.proto, f.listen.port) == ("udp", port)]
        for f in forwarded:
            report.problems.append(
                f"{cfg.path}: forwards.{f.name}.listen: {port}/udp is the "
                "knock port, so knocks would be forwarded; fix: give the "
                "forward another listen port"
            )
        if port in ports.protected.get("udp", []) and not forwarded:
            report.problems.append(
                f"{cfg.path}: protect.udp: {port} is the knock port, so "
                "every knock would need a knock first; fix: gnocchi "
                f"unprotect {port}/udp"
            )


def broken(error: server_config.ConfigError, config_path: str) -> str:
    """A config that does not load, and what gnocchi does about it."""
    good = server_config.last_good_path(config_path)
    if os.path.exists(good):
        return (
            f"{error} (gnocchi goes on with the last good config, {good}: this file is "
            "not applied until it loads)"
        )
    return f"{error} (the verifier would refuse to start)"


def check_client_keys(
    report: Report,
    cfg: server_config.Config,
    server_keys: tuple[bytes, ...],
    starting: bool = False,
) -> None:
    """Each clients.NAME.public_key may be a public key: not a secret pasted in its place
    (gnocchi.shared.keys.public_key_problem, the rule add-client and doctor apply).
    starting (arming at a start): only a warning. Such a key lets nobody in, while a
    refused start would leave the protected ports open; `gnocchi check`, `gnocchi
    reload` and doctor still fail on it."""
    known = {c.public_key: c.name for c in cfg.clients}
    for client in cfg.clients:
        if problem := keys.public_key_problem(client.public_key, server_keys, known):
            text = (
                f"{cfg.path}: clients.{client.name}.public_key: {problem}; "
                f"fix: {keys.public_key_fix(client.name)}"
            )
            if starting:
                report.warnings.append(
                    text + " (armed all the same: no client holds such a "
                    "key, and the others must get in)"
                )
            else:
                report.problems.append(text)


def run(
    config_path: str = server_config.DEFAULT_CONFIG,
    table_path: str = nft_table.DEFAULT_FILE,
    unit_dir: str | None = None,
    live: bool = False,
    last_good: bool = False,
) -> Report:
    """live: also compare with the loaded table (not when arming, which is about to
    load it). last_good: a config file that does not load is no problem when it has a
    last good copy: that copy is checked instead, as gnocchi would run it (report.cfg
    says which; report.config_error why the file was not)."""
    report = Report()
    for path in (config_path, table_path):
        if problem := loose_mode(path):
            report.problems.append(problem)
    try:
        loaded = nft_table.test_load(table_path)
        report.flood_limit = loaded.knock_ports() is not None
        report.knocked_size = min(
            (loaded.sets()[n].get("size", 0) or 1 << 32) for n in nft_table.KNOCKED.values()
        )
        check_flood_limit(report, table_path)
    except nft_table.TableError as e:
        report.problems.append(str(e))
    try:
        cfg = server_config.load(config_path)
    except server_config.ConfigError as e:
        report.config_error = str(e)
        try:
            if not last_good:
                raise e
            cfg = server_config.load_running(config_path)  # its last good copy, or e
        except server_config.ConfigError:
            report.problems.append(broken(e, config_path))
            return report
    report.cfg = cfg
    server_keys: tuple[bytes, ...] = ()
    try:
        ring = keyring.load(cfg)
        report.knock_ports = keyring.ports(ring)
        report.port = report.knock_ports[0]
        server_keys = keyring.secrets(ring)
    except keys.KeyFileError as e:
        report.problems.append(f"{e} (the verifier would refuse to start)")
    check_ports(report, cfg, config_path)
    check_forwarding(report, cfg)
    check_clients(report, cfg)
    check_client_keys(report, cfg, server_keys, starting=last_good)
    if report.knocked_size and len(cfg.clients) * SHARE > report.knocked_size:
        # Each client may hold SHARE openings pending: with more clients than the
        # sets hold shares for, clients who knock at once (stolen keys) can fill them.
        report.warnings.append(
            f"{table_path}: sets knocked4/knocked6 hold {report.knocked_size} openings, "
            f"the shares of {report.knocked_size // SHARE} clients, and {cfg.path} has "
            f"{len(cfg.clients)}; fix: spread the clients over more servers (docs/firewall.md, "
            '"When a set is full")'
        )
    check_socket(report, report.knock_ports, unit_dir)
    check_credentials(report, cfg, unit_dir)
    check_syncookies(report)
    check_liberal(report)
    if live:
        check_live_knock_port(report, table_path)
        check_live_gate(report, table_path)
    # The counter store: readable only with the verifier's or root's full rights;
    # where it is not (the arming unit has no CAP_DAC_*), the verifier checks it itself.
    if os.access(cfg.state_dir, os.R_OK | os.X_OK):
        try:
            counters.Store(cfg.state_dir).load()
        except counters.StoreError as e:
            report.problems.append(f"{e} (the verifier would refuse to start)")
    return report


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gnocchi check",
        description="Check the config, the keys, gnocchi.socket's port and the rules file; "
        "exit 0 only when gnocchi would work. Changes nothing.",
    )
    p.add_argument(
        "--config",
        default=server_config.DEFAULT_CONFIG,
        metavar="FILE",
        help=f"server config (default {server_config.DEFAULT_CONFIG})",
    )
    p.add_argument(
        "--table",
        default=nft_table.DEFAULT_FILE,
        metavar="FILE",
        help=f"the rules file (default {nft_table.DEFAULT_FILE})",
    )
    p.add_argument(
        "--unit-dir",
        metavar="DIR",
        help="read gnocchi.socket's drop-in from DIR instead of asking systemd "
        "(for tests and images)",
    )
    p.add_argument("-q", "--quiet", action="store_true", help="print only problems")
    return p


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    args = parser().parse_args(argv[1:])
    report = run(args.config, args.table, args.unit_dir, live=True)
    for warning in report.warnings:
        print(f"gnocchi check: warning: {warning}", file=sys.stderr)
    for problem in report.problems:
        print(f"gnocchi check: {problem}", file=sys.stderr)
    if not report.ok:
        print(
            f"gnocchi check: {len(report.problems)} problem"
            f"{'s' if len(report.problems) != 1 else ''}: gnocchi would not work; "
            "nothing was changed",
            file=sys.stderr,
        )
        return 1
    if not args.quiet:
        print(f"gnocchi check: ok: {report.summary(args.config)}")
        for client in report.cfg.clients if report.cfg else ():
            print(f"  {client_line(client)}")
    return 0

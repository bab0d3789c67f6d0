"""gnocchi on a booted systemd, installed from its .deb, used as docs/install.md says.

A real systemd boots in a container (tests/system/systemd_container.py) on
an overlay of this machine's root, inside the server namespace of a
tests/support/netns.py Net; the client namespace is the client host. The steps are
docs/install.md's, run as an admin runs them: install the .deb, make the
server key, add a client to the config, `gnocchi setup`, and
`systemctl enable --now gnocchi.socket`: nothing else.
A python listener started by systemd-run stands for sshd on the protected
port 22 (the table's default).

The tests share one container and run in order: knock, audit, a knock while
the verifier is stopped, an IPv6 knock, a container reboot, an upgrade that
keeps a pending knock, `systemctl disable --now gnocchi.socket`, and
removing, purging and reinstalling the package.
"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
import sys
import time

import pytest

from support import REPO, Net
from systemd_container import Container, installed

pytestmark = pytest.mark.system

PROTECTED = 22
LISTENER = (
    "import socket\n"
    "s = socket.create_server(('', 22), family=socket.AF_INET6, dualstack_ipv6=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(b'hello from the protected port\\n')\n"
    "    c.close()\n"
)
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)\n"
    "    print(c.recv(100).decode().strip())\n"
    "except socket.timeout:\n"
    "    print('timeout')\n"
    "except OSError as e:\n"
    "    print('error', e)\n"
)
CLIENT_DIR = "/root/alice"  # the client's files, used from the client namespace
CONFIG = "/etc/gnocchi/gnocchi.toml"


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' '.join(missing)}")


class Server:
    """The booted container plus what the admin and the client made in it."""

    def __init__(self, net: Net, box: Container):
        self.net, self.box = net, box
        self.port = 0

    def connect(self, host=None) -> str:
        """One TCP connection from the client host to the protected port."""
        return self.net.client.run(
            [sys.executable, "-c", CONNECT, host or self.net.server.ip, str(PROTECTED)], timeout=30
        ).stdout.strip()

    def start_listener(self) -> None:
        self.box.run(
            [
                "systemd-run",
                "--unit=protected-service",
                "--quiet",
                "/usr/bin/python3",
                "-c",
                LISTENER,
            ]
        )
        self.wait(
            lambda: self.box.run(["ss", "-Htln", "sport", "= :22"]).stdout.strip(),
            "the protected service listens",
        )

    def knock(self, *options, host=None) -> None:
        """gnocchi-knock, the package's client, from the client namespace."""
        self.box.run_in_netns(
            self.net.client.name,
            [
                "gnocchi-knock",
                "--server-key-file",
                f"{CLIENT_DIR}/server.key",
                "--client-key-file",
                f"{CLIENT_DIR}/client.key",
                "--state-dir",
                f"{CLIENT_DIR}/state",
                *options,
                host or self.net.server.ip,
            ],
        )

    def journal(self, *args) -> list[dict]:
        out = self.box.run(["journalctl", "--no-pager", "-o", "json", *args]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def accepted(self) -> list[dict]:
        return [e for e in self.journal("-u", "gnocchi") if e.get("GNOCCHI_EVENT") == "accepted"]

    def wait_accepted(self, count: int) -> dict:
        """The count-th accepted-knock entry (the verifier logs it after the helper's OK)."""

        def enough():
            entries = self.accepted()
            return entries if len(entries) >= count else None

        return self.wait(enough, f"{count} accepted knock(s) in journalctl -u gnocchi")[count - 1]

    def table(self, check=True) -> subprocess.CompletedProcess:
        return self.net.server.nft("list", "table", "inet", "gnocchi", check=check)

    def wait(self, probe, what: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.2)
        raise AssertionError(
            f"timed out after {timeout} s waiting until: {what}\n"
            + self.box.run(
                ["journalctl", "--no-pager", "-n", "40", "-u", "gnocchi*"], check=False
            ).stdout
        )


@pytest.fixture(scope="module")
def server(deb):
    need("systemd-nspawn", "nsenter", "nft")
    with installed(deb, "y") as (net, box):
        yield install(Server(net, box))


def install(s: Server) -> Server:
    box = s.box
    assert_nothing_enabled_or_running(s)

    # The admin: server key, then the client's public key in the config.
    s.port = int(box.run(["gnocchi", "keygen", "--server", "/etc/gnocchi/server.key"]).stdout)
    # The client: its own key, and a copy of the server key.
    box.run(["mkdir", "-m", "0700", CLIENT_DIR])
    public = box.run(["gnocchi", "keygen", "--client", f"{CLIENT_DIR}/client.key"]).stdout.strip()
    box.run(["install", "-m", "0600", "/etc/gnocchi/server.key", f"{CLIENT_DIR}/server.key"])
    config = box.root / CONFIG.lstrip("/")
    config.write_text(
        config.read_text() + f'\n[clients.alice]\npublic_key = "{public}"\n'
        f'allow = ["{PROTECTED}/tcp"]\n'
    )

    out = box.run(["gnocchi", "setup"]).stdout
    assert f"UDP port {s.port}" in out, out
    box.run(["systemctl", "enable", "--now", "gnocchi.socket"])
    s.start_listener()
    return s


UNITS = (
    "gnocchi.socket",
    "gnocchi.service",
    "gnocchi-helper.socket",
    "gnocchi-helper.service",
    "gnocchi-arm.service",
    "gnocchi-watch.service",
)


def state(box, unit: str, what: str = "is-active") -> str:
    return box.run(["systemctl", what, unit], check=False).stdout.strip()


def assert_nothing_enabled_or_running(s: Server) -> None:
    """What installing, disabling and purging leave: no table, no unit enabled or active."""
    assert "gnocchi" not in s.net.server.nft("list", "tables").stdout
    assert state(s.box, "gnocchi.socket", "is-enabled") == "disabled"
    # The others have no [Install]: gnocchi.socket is the one switch.
    for unit in ("gnocchi-helper.socket", "gnocchi-arm.service", "gnocchi-watch.service"):
        assert state(s.box, unit, "is-enabled") == "static"
    for unit in UNITS:
        assert state(s.box, unit) in ("inactive", "failed"), unit
    wants = s.box.root / "etc/systemd/system"
    assert not [str(p) for p in wants.glob("*/gnocchi*")], "no enablement symlink left"


def listening(s: Server) -> str:
    """gnocchi's sockets in the container: the UDP knock port and the helper's."""
    udp = s.box.run(["ss", "-Huln", f"sport = :{s.port}"]).stdout.strip()
    unix = s.box.run(["ss", "-Hxl", "src", "/run/gnocchi/helper.sock"]).stdout.strip()
    return (udp + "\n" + unix).strip()


def test_the_one_switch_armed_everything_in_order(server):
    box = server.box
    server.table()
    for unit in (
        "gnocchi-arm.service",
        "gnocchi-watch.service",
        "gnocchi-helper.socket",
        "gnocchi.socket",
    ):
        assert state(box, unit) == "active", unit
    assert state(box, "gnocchi.socket", "is-enabled") == "enabled"
    assert f":{server.port}" in listening(server) and "helper.sock" in listening(server)
    # The table first, then the helper's socket, then the knock port.
    start = {
        u: int(box.run(["systemctl", "show", "-P", "ActiveEnterTimestampMonotonic", u]).stdout)
        for u in ("gnocchi-arm.service", "gnocchi-helper.socket", "gnocchi.socket")
    }
    assert start["gnocchi-arm.service"] <= start["gnocchi-helper.socket"] <= start["gnocchi.socket"]
    armed = [e for e in server.journal("-u", "gnocchi") if e.get("GNOCCHI_EVENT") == "armed"]
    assert armed and "protecting 22/tcp" in armed[-1]["MESSAGE"], "journalctl -u gnocchi says so"


def test_installed_units_verify_clean_and_score(server):
    box = server.box
    units = [
        "gnocchi.socket",
        "gnocchi.service",
        "gnocchi-helper.socket",
        "gnocchi-helper.service",
        "gnocchi-arm.service",
        "gnocchi-watch.service",
    ]
    proc = box.run(["systemd-analyze", "verify", *units], check=False)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), (
        f"systemd-analyze verify:\n{proc.stdout}{proc.stderr}"
    )
    for unit, limit in (("gnocchi.service", 1.0), ("gnocchi-helper.service", 2.0)):
        out = box.run(["systemd-analyze", "security", "--offline=true", "--no-pager", unit]).stdout
        score = float(out.split(f"Overall exposure level for {unit}: ")[1].split()[0])
        assert score <= limit, f"{unit} scores {score} (limit {limit})"
    listen = box.run(["systemctl", "show", "-P", "Listen", "gnocchi.socket"]).stdout
    assert f":{server.port} (Datagram)" in listen


def test_knock_opens_one_connection_and_the_journal_names_the_client(server):
    net = server.net
    assert server.connect() == "timeout", "port 22 must be dropped before a knock"
    server.knock()
    entry = server.wait_accepted(1)
    assert entry["GNOCCHI_CLIENT"] == "alice"
    assert entry["GNOCCHI_SOURCE_IP"] == net.client.ip
    assert entry["GNOCCHI_REQUEST"] == f"open {PROTECTED}/tcp"
    assert entry["_SYSTEMD_UNIT"] == "gnocchi.service"
    assert server.connect() == "hello from the protected port"
    assert server.connect() == "timeout", "one knock opens one connection"

    # The package's journal catalog explains the entry (journalctl -x).
    explained = server.box.run(["journalctl", "--no-pager", "-x", "-u", "gnocchi"]).stdout
    assert f"gnocchi knock accepted: open {PROTECTED}/tcp for alice" in explained

    # The helper's decision is in `journalctl -u gnocchi` too: one command is the audit trail.
    helper = [
        e
        for e in server.journal("-u", "gnocchi")
        if e.get("GNOCCHI_HELPER_STATUS") == "OK" and "GNOCCHI_HELPER_ADDRESS" in e
    ]
    assert helper and helper[-1]["GNOCCHI_HELPER_ADDRESS"] == net.client.ip
    assert helper[-1]["_SYSTEMD_UNIT"] == "gnocchi-helper.service"
    assert helper[-1]["GNOCCHI_HELPER_TIMEOUT"] == "30"


def test_the_verifier_runs_unprivileged_without_network(server):
    box = server.box
    pid = box.run(["systemctl", "show", "-P", "MainPID", "gnocchi.service"]).stdout.strip()
    assert pid != "0", "the verifier stays up after a knock"
    status = box.run(["cat", f"/proc/{pid}/status"]).stdout
    uid = box.run(["id", "-u", "gnocchi"]).stdout.strip()
    fields = dict(line.split(":", 1) for line in status.splitlines() if ":" in line)
    assert fields["Uid"].split()[:2] == [uid, uid]
    assert fields["CapEff"].strip() == fields["CapPrm"].strip() == "0000000000000000"
    assert fields["NoNewPrivs"].strip() == "1"
    own = box.run(["readlink", f"/proc/{pid}/ns/net"]).stdout
    assert own != box.run(["readlink", "/proc/1/ns/net"]).stdout, "PrivateNetwork=yes"


def test_audit_lists_the_knock_and_the_arming(server):
    out = server.box.run(["gnocchi", "audit"]).stdout
    lines = [line for line in out.splitlines() if " accepted " in line]
    assert lines and "alice" in lines[-1] and server.net.client.ip in lines[-1], out
    armed = [line for line in out.splitlines() if " armed " in line]
    assert armed and "protecting 22/tcp" in armed[-1], out
    # --since as journalctl takes it (the knock was the test before); a time after
    # every entry lists none.
    for since in (["--since", "5 min ago"], ["--since", "-5m"], ["--since=-1h"]):
        recent = server.box.run(["gnocchi", "audit", *since]).stdout
        assert lines[-1] in recent.splitlines(), (since, recent)
    later = server.box.run(["gnocchi", "audit", "--since", "+1h"]).stdout
    assert later.splitlines() == out.splitlines()[:1]


# Paths are what the packages ship under /usr, /lib, /bin, /sbin, the conffile, and
# man: pages; /usr/local and the rest of /etc are the admin's to make (or, as
# /etc/gnocchi/gnocchi.nft now, an old version's, which the docs name as such).
NAMED_PATHS = r"""
import gzip, json, os, re, subprocess
PATH = re.compile(r"(?<![\w.~$/-])(?:file://)?(/(?:usr|lib|bin|sbin)/[\w.@+/-]*[\w/]"
                  r"|/etc/gnocchi/gnocchi\.toml\b)")
MAN = re.compile(r"man:([\w.-]+)\((\d)\)")
files = subprocess.run(["dpkg", "-L", "gnocchi-server", "gnocchi-client"], check=True,
                       capture_output=True, text=True).stdout.split()
named = {}
for f in files:
    if not os.path.isfile(f) or os.path.islink(f) or f.endswith(".pyc"):
        continue
    raw = open(f, "rb").read()
    try:
        text = (gzip.decompress(raw) if f.endswith(".gz") else raw).decode()
    except (UnicodeDecodeError, OSError):
        continue
    paths = [p for p in PATH.findall(text) if not p.startswith("/usr/local/")]
    paths += [f"/usr/share/man/man{n}/{page}.{n}.gz" for page, n in MAN.findall(text)]
    for path in paths:
        named.setdefault(path, [os.path.exists(path), []])[1].append(f)
print(json.dumps(named))
"""


def test_every_path_the_shipped_files_and_man_pages_name_exists(server):
    named = json.loads(server.box.run(["python3", "-c", NAMED_PATHS]).stdout)
    missing = {path: named_in for path, (exists, named_in) in named.items() if not exists}
    assert missing == {}, "paths named but not installed:\n" + "\n".join(
        f"{path} (named in {', '.join(sorted(set(files)))})" for path, files in missing.items()
    )
    for known in (
        "/usr/share/doc/gnocchi-server/server.md",
        "/etc/gnocchi/gnocchi.toml",
        "/usr/share/man/man8/gnocchi.8.gz",
        "/usr/share/gnocchi/gnocchi.nft",
        "/usr/share/bash-completion/completions/gnocchi",
        "/usr/share/bash-completion/completions/gnocchi-knock",
    ):
        assert known in named, f"{known}: the search missed a path the files name"


def test_the_installed_commands_say_their_version_and_complete_in_bash(server):
    box = server.box
    version = box.run(["dpkg-query", "-W", "-f", "${Version}", "gnocchi-server"]).stdout
    assert box.run(["gnocchi", "--version"]).stdout == f"gnocchi {version}\n"
    assert box.run(["gnocchi-knock", "--version"]).stdout == f"gnocchi-knock {version}\n"
    # As bash-completion loads them: by the command's name, from the packages' files.
    complete = (
        'source "/usr/share/bash-completion/completions/$1"; f=$2; shift 2; '
        'COMP_WORDS=("$@"); COMP_CWORD=$(( $# - 1 )); $f; echo "${COMPREPLY[@]}"'
    )
    offered = box.run(
        ["bash", "-c", complete, "_", "gnocchi", "_gnocchi", "gnocchi", "add-client", "--"]
    ).stdout.split()
    assert offered == ["--help", "--config", "--drop-in", "--allow", "--host"]
    offered = box.run(
        ["bash", "-c", complete, "_", "gnocchi-knock", "_gnocchi_knock", "gnocchi-knock", "--pu"]
    ).stdout.split()
    assert offered == ["--pubkey"]


def test_a_knock_while_the_verifier_is_stopped_is_not_lost(server):
    box = server.box
    before = server.accepted()
    box.run(["systemctl", "stop", "gnocchi.service"])
    assert (
        box.run(["systemctl", "is-active", "gnocchi.service"], check=False).stdout.strip()
        == "inactive"
    )
    assert box.run(["systemctl", "is-active", "gnocchi.socket"]).stdout.strip() == "active"
    server.knock()  # queued in the socket, which starts the verifier again
    entry = server.wait_accepted(len(before) + 1)
    assert int(entry["GNOCCHI_COUNTER"]) > int(before[-1]["GNOCCHI_COUNTER"])
    assert server.connect() == "hello from the protected port"


def test_a_knock_while_the_verifier_restarts_is_not_lost(server):
    before = len(server.accepted())
    server.box.run(["systemctl", "restart", "--no-block", "gnocchi.service"])
    server.knock()  # most likely lands while the old verifier stops or the new one starts
    server.wait_accepted(before + 1)
    assert server.connect() == "hello from the protected port"


def test_restarts_of_the_verifier_the_helper_and_their_sockets_leave_the_table_alone(server):
    """Restarting any of them never disarms and never drops a pending knock;
    nor does restarting the arming unit itself (its stop half keeps the table)."""
    box, net = server.box, server.net
    before = len(server.accepted())
    server.knock()
    server.wait_accepted(before + 1)  # pending in the kernel set now
    monitor = net.server.popen(["nft", "monitor", "tables"], stdout=subprocess.PIPE, text=True)
    try:
        for unit in (
            "gnocchi.service",
            "gnocchi-helper.service",
            "gnocchi.socket",
            "gnocchi-helper.socket",
            "gnocchi-arm.service",
        ):
            box.run(["systemctl", "restart", unit])
            server.table()
        time.sleep(0.5)
    finally:
        monitor.terminate()
    events, _ = monitor.communicate(timeout=10)
    assert events.strip() == "", f"table events during the restarts:\n{events}"
    assert state(box, "gnocchi-arm.service") == "active"
    assert server.connect() == "hello from the protected port", "the pending knock survived"
    assert server.connect() == "timeout"


def test_an_ipv6_knock_reaches_the_dual_stack_socket(server):
    """ListenDatagram=PORT is one socket for both families (docs/install.md, step 6)."""
    net, box = server.net, server.box
    # An IPv6 knock still signs an IPv4 address: the server must be told its own
    # (and keeps that setting for the tests after this one).
    config = box.root / CONFIG.lstrip("/")
    config.write_text(f'server_addresses = ["{net.server.ip}"]\n' + config.read_text())
    box.run(["systemctl", "restart", "gnocchi.service"])
    before = len(server.accepted())
    assert server.connect(net.server.ip6) == "timeout"
    server.knock("--sign-ip", net.server.ip, host=net.server.ip6)
    entry = server.wait_accepted(before + 1)
    assert entry["GNOCCHI_SOURCE_IP"] == net.client.ip6
    assert server.connect(net.server.ip6) == "hello from the protected port"


def test_after_a_reboot_the_table_is_armed_and_a_knock_works(server):
    before = len(server.accepted())
    server.box.reboot()
    server.table()  # armed at boot, before anyone knocked
    for unit in ("gnocchi-arm.service", "gnocchi-helper.socket", "gnocchi.socket"):
        assert state(server.box, unit) == "active", unit
    server.start_listener()
    assert server.connect() == "timeout"
    server.knock()
    entry = server.wait_accepted(before + 1)
    assert entry["GNOCCHI_SOURCE_IP"] == server.net.client.ip
    assert server.connect() == "hello from the protected port"


class Prober:
    """SYNs to the protected port from another host (a second address on the client's
    link) every 10 ms while the block runs; counts those that got a connection."""

    CODE = (
        "import os, select, socket, sys, time\n"
        "src, dst, stop = sys.argv[1:4]\n"
        "tries = opened = 0\n"
        "pending = []\n"
        "while not os.path.exists(stop):\n"
        "    s = socket.socket(); s.setblocking(False); s.bind((src, 0))\n"
        "    s.connect_ex((dst, 22)); tries += 1\n"
        "    pending.append((time.monotonic(), s))\n"
        "    _, ready, _ = select.select([], [p for _, p in pending], [], 0.01)\n"
        "    for p in ready:\n"
        "        if p.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0: opened += 1\n"
        "    old = [(t, p) for t, p in pending if p in ready or time.monotonic() - t > 0.5]\n"
        "    for t, p in old: pending.remove((t, p)); p.close()\n"
        "print(tries, opened)\n"
    )

    def __init__(self, server: Server):
        self.server = server
        net = server.net
        self.source = net.client.ip.rsplit(".", 1)[0] + ".3"
        net.client.run(["ip", "addr", "replace", f"{self.source}/24", "dev", "gveth0"])
        self.stop = server.box.dir / "probe.stop"
        self.tries = self.opened = 0

    def __enter__(self) -> Prober:
        self.stop.unlink(missing_ok=True)
        self.proc = self.server.net.client.popen(
            [
                sys.executable,
                "-c",
                self.CODE,
                self.source,
                self.server.net.server.ip,
                str(self.stop),
            ],
            stdout=subprocess.PIPE,
            text=True,
        )
        time.sleep(0.5)
        return self

    def __exit__(self, *exc) -> None:
        self.stop.touch()
        out, _ = self.proc.communicate(timeout=30)
        self.tries, self.opened = map(int, out.split())


def test_an_upgrade_keeps_a_pending_knock_and_the_port_closed_to_others(server, deb):
    """Upgrade = the package's postinst: try-restart the verifier and the helper, then
    reload the table, keeping pending knocks."""
    box = server.box

    def pid():
        return box.run(["systemctl", "show", "-P", "MainPID", "gnocchi.service"]).stdout.strip()

    # Loaded rules that differ from the package's (as an older version's do): the
    # upgrade brings its own rules file back, and its reload must replace the table
    # and carry the pending knock.
    rules = box.root / "usr/share/gnocchi/gnocchi.nft"
    rules.write_text(rules.read_text().replace("\t\tdrop\n", "\t\tcounter drop\n"))
    box.run(["systemctl", "reload", "gnocchi-arm.service"])
    assert (
        "counter packets"
        in server.net.server.nft("list", "chain", "inet", "gnocchi", "admit").stdout
    )
    before = pid()
    assert before != "0"
    accepted = len(server.accepted())
    server.knock()
    server.wait_accepted(accepted + 1)  # a knock pending in the kernel set
    with Prober(server) as probe:
        box.run(
            ["apt-get", "install", "-y", "-q", "--reinstall", f"./{deb.name}"],
            cwd="/root",
            timeout=180,
        )
    print(f"upgrade: {probe.opened} of {probe.tries} SYNs from another host got through")
    assert probe.tries > 100 and probe.opened == 0, (
        f"{probe.opened} of {probe.tries} connections from another host got through"
    )
    assert pid() != before, "the running verifier was restarted with the new code"
    admit = server.net.server.nft("list", "chain", "inet", "gnocchi", "admit").stdout
    assert "counter packets" not in admit, "the package's rules are loaded"
    armed = [e for e in server.journal("-u", "gnocchi") if e.get("GNOCCHI_EVENT") == "armed"]
    assert armed[-1]["GNOCCHI_HOW"] == "replaced" and armed[-1]["GNOCCHI_PENDING"] == "1"
    assert server.connect() == "hello from the protected port", "the pending knock still works"
    assert server.connect() == "timeout", "once"
    assert state(box, "gnocchi.socket", "is-enabled") == "enabled"


def test_an_upgrade_from_the_three_unit_install_moves_to_the_one_switch(server, deb):
    """The first packages' README enabled gnocchi-arm.service and gnocchi-helper.socket
    too; an upgrade removes those links (gnocchi.socket's stays), and the watch runs
    (gnocchi-arm.service upholds it)."""
    box = server.box
    etc = box.root / "etc/systemd/system"
    old = {
        "sysinit.target.wants/gnocchi-arm.service": "gnocchi-arm.service",
        "nftables.service.wants/gnocchi-arm.service": "gnocchi-arm.service",
        "sockets.target.wants/gnocchi-helper.socket": "gnocchi-helper.socket",
    }
    for link, unit in old.items():
        (etc / link).parent.mkdir(exist_ok=True)
        (etc / link).symlink_to(f"/lib/systemd/system/{unit}")
    box.run(
        ["apt-get", "install", "-y", "-q", "--reinstall", f"./{deb.name}"], cwd="/root", timeout=180
    )
    assert not [link for link in old if (etc / link).is_symlink()]
    assert state(box, "gnocchi.socket", "is-enabled") == "enabled"
    assert state(box, "gnocchi-watch.service") == "active"
    server.table()


def test_disable_now_is_the_one_switch_off(server):
    box = server.box
    box.run(["systemctl", "disable", "--now", "gnocchi.socket"])
    # Gone when the command returns (gnocchi.socket's own stop removes it), although
    # gnocchi-arm.service, started first, stops just after.
    assert server.table(check=False).returncode != 0, "table inet gnocchi is gone"
    server.wait(lambda: all(state(box, u) != "deactivating" for u in UNITS), "units stopped")
    assert listening(server) == "", "nothing listens"
    assert_nothing_enabled_or_running(server)
    assert server.connect() == "hello from the protected port", "port 22 no longer guarded"
    disarmed = [e for e in server.journal("-u", "gnocchi") if e.get("GNOCCHI_EVENT") == "disarmed"]
    assert disarmed and "table inet gnocchi removed" in disarmed[-1]["MESSAGE"]


def documented(command: str) -> list[str]:
    """docs/install.md's one `apt COMMAND PACKAGE...` command, as words."""
    text = " ".join((REPO / "docs" / "install.md").read_text().split())
    found = set(re.findall(rf"`(apt {command} [a-z0-9 .+-]+)`", text))
    assert len(found) == 1, f"docs/install.md gives {len(found)} `apt {command}` commands"
    return found.pop().split()


def test_remove_purge_and_reinstall_leave_nothing_enabled(server, deb):
    box = server.box
    box.run(["systemctl", "enable", "--now", "gnocchi.socket"])
    server.table()
    remove = documented("remove")  # docs/install.md's command, as the admin runs it
    box.run([*remove[:2], "-y", "-q", *remove[2:]], timeout=180)
    assert server.table(check=False).returncode != 0, "no table left without its verifier"
    for unit in UNITS:
        assert state(box, unit) != "active", unit
    assert server.connect() == "hello from the protected port"

    purge = documented("purge")
    box.run([*purge[:2], "-y", "-q", *purge[2:]], timeout=180)
    etc = box.root / "etc"
    assert not [str(p) for p in (etc / "systemd/system").rglob("*gnocchi*")], (
        "purge leaves no enablement link and no drop-in"
    )
    # What purge leaves, all named in docs/install.md ("Uninstall"): the server key
    # and the counter store (kept so that old knocks stay replay-proof if you
    # reinstall with that key), and the user gnocchi.
    assert sorted(p.name for p in (etc / "gnocchi").iterdir()) == ["server.key"]
    assert box.run(["test", "-f", "/var/lib/gnocchi/counters"], check=False).returncode == 0
    assert box.run(["id", "gnocchi"], check=False).returncode == 0

    box.run(["apt-get", "install", "-y", "-q", f"./{deb.name}"], cwd="/root", timeout=180)
    assert_nothing_enabled_or_running(server)

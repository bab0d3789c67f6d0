"""gnocchi on a booted systemd, installed from its .deb, used as docs/install.md says.

A real systemd boots in a container (tests/system/systemd_container.py) on
an overlay of this machine's root, inside the server namespace of a
tests/support/netns.py Net; the client namespace is the client host. The steps are
docs/install.md's, run as an admin runs them: install the .deb, make the
server key, add a client to the config, `gnocchi setup`, enable the units.
A python listener started by systemd-run stands for sshd on the protected
port 22 (the table's default).

The tests share one container and run in order: knock, audit, a knock while
the verifier is stopped, an IPv6 knock, a container reboot, an upgrade,
disarming, and removing the package.
"""
from __future__ import annotations

import json
import shutil
import subprocess
import sys
import time

import pytest

from support import Net
from systemd_container import Container

pytestmark = pytest.mark.system

PROTECTED = 22
LISTENER = ("import socket\n"
            "s = socket.create_server(('', 22), family=socket.AF_INET6, dualstack_ipv6=True)\n"
            "while True:\n"
            "    c, _ = s.accept()\n"
            "    c.sendall(b'hello from the protected port\\n')\n"
            "    c.close()\n")
CONNECT = ("import socket, sys\n"
           "try:\n"
           "    c = socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=1.5)\n"
           "    print(c.recv(100).decode().strip())\n"
           "except socket.timeout:\n"
           "    print('timeout')\n"
           "except OSError as e:\n"
           "    print('error', e)\n")
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
        return self.net.client.run([sys.executable, "-c", CONNECT, host or self.net.server.ip,
                                    str(PROTECTED)], timeout=30).stdout.strip()

    def start_listener(self) -> None:
        self.box.run(["systemd-run", "--unit=protected-service", "--quiet",
                      "/usr/bin/python3", "-c", LISTENER])
        self.wait(lambda: self.box.run(["ss", "-Htln", "sport", "= :22"]).stdout.strip(),
                  "the protected service listens")

    def knock(self, *options, host=None) -> None:
        """gnocchi-knock, the package's client, from the client namespace."""
        self.box.run_in_netns(self.net.client.name, [
            "gnocchi-knock", "--server-key-file", f"{CLIENT_DIR}/server.key",
            "--client-key-file", f"{CLIENT_DIR}/client.key", "--state-dir", f"{CLIENT_DIR}/state",
            *options, host or self.net.server.ip])

    def journal(self, *args) -> list[dict]:
        out = self.box.run(["journalctl", "--no-pager", "-o", "json", *args]).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def accepted(self) -> list[dict]:
        return [e for e in self.journal("-u", "gnocchi")
                if e.get("GNOCCHI_EVENT") == "accepted"]

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
        raise AssertionError(f"timed out after {timeout} s waiting until: {what}\n"
                             + self.box.run(["journalctl", "--no-pager", "-n", "40",
                                             "-u", "gnocchi*"], check=False).stdout)


@pytest.fixture(scope="module")
def server(deb):
    need("systemd-nspawn", "nsenter", "nft")
    with Net("y") as net:
        box = Container(net.server.name)
        try:
            box.boot()
            yield install(Server(net, box), deb)
        finally:
            box.close()


def install(s: Server, deb) -> Server:
    box = s.box
    shutil.copy(deb, box.root / "root" / deb.name)
    box.run(["apt-get", "install", "-y", "-q", f"./{deb.name}"], cwd="/root", timeout=180)

    # Installing armed nothing and started nothing.
    assert "gnocchi" not in s.net.server.nft("list", "tables").stdout
    for unit in ("gnocchi.socket", "gnocchi-helper.socket", "gnocchi-arm.service"):
        assert box.run(["systemctl", "is-enabled", unit], check=False).stdout.strip() == "disabled"
        assert box.run(["systemctl", "is-active", unit], check=False).stdout.strip() == "inactive"

    # The admin: server key, then the client's public key in the config.
    s.port = int(box.run(["gnocchi", "keygen", "--server", "/etc/gnocchi/server.key"]).stdout)
    # The client: its own key, and a copy of the server key.
    box.run(["mkdir", "-m", "0700", CLIENT_DIR])
    public = box.run(["gnocchi", "keygen", "--client", f"{CLIENT_DIR}/client.key"]).stdout.strip()
    box.run(["install", "-m", "0600", "/etc/gnocchi/server.key", f"{CLIENT_DIR}/server.key"])
    config = box.root / CONFIG.lstrip("/")
    config.write_text(config.read_text() + f'\n[clients.alice]\npublic_key = "{public}"\n'
                      f'allow = ["{PROTECTED}/tcp"]\n')

    out = box.run(["gnocchi", "setup"]).stdout
    assert f"UDP port {s.port}" in out, out
    box.run(["systemctl", "enable", "--now",
             "gnocchi-arm.service", "gnocchi-helper.socket", "gnocchi.socket"])
    s.start_listener()
    return s


def test_installed_units_verify_clean_and_score(server):
    box = server.box
    units = ["gnocchi.socket", "gnocchi.service", "gnocchi-helper.socket",
             "gnocchi-helper.service", "gnocchi-arm.service"]
    proc = box.run(["systemd-analyze", "verify", *units], check=False)
    assert proc.returncode == 0 and not proc.stderr.strip() and not proc.stdout.strip(), \
        f"systemd-analyze verify:\n{proc.stdout}{proc.stderr}"
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

    helper = [e for e in server.journal("-u", "gnocchi-helper")
              if e.get("GNOCCHI_HELPER_STATUS") == "OK"]
    assert helper and helper[-1]["GNOCCHI_HELPER_ADDRESS"] == net.client.ip


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


def test_audit_lists_the_knock(server):
    out = server.box.run(["gnocchi", "audit"]).stdout
    lines = [line for line in out.splitlines() if " accepted " in line]
    assert lines and "alice" in lines[-1] and server.net.client.ip in lines[-1], out


def test_a_knock_while_the_verifier_is_stopped_is_not_lost(server):
    box = server.box
    before = server.accepted()
    box.run(["systemctl", "stop", "gnocchi.service"])
    assert box.run(["systemctl", "is-active", "gnocchi.service"],
                   check=False).stdout.strip() == "inactive"
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
    server.start_listener()
    assert server.connect() == "timeout"
    server.knock()
    entry = server.wait_accepted(before + 1)
    assert entry["GNOCCHI_SOURCE_IP"] == server.net.client.ip
    assert server.connect() == "hello from the protected port"


def test_an_upgrade_keeps_the_table_armed_and_restarts_the_verifier(server, deb):
    box = server.box

    def pid():
        return box.run(["systemctl", "show", "-P", "MainPID", "gnocchi.service"]).stdout.strip()
    before = pid()
    assert before != "0"
    box.run(["apt-get", "install", "-y", "-q", "--reinstall", f"./{deb.name}"], cwd="/root",
            timeout=180)
    server.table()
    assert pid() != before, "the running verifier was restarted with the new code"
    assert box.run(["systemctl", "is-enabled", "gnocchi-arm.service"]).stdout.strip() == "enabled"


def test_stopping_the_arming_unit_disarms(server):
    server.box.run(["systemctl", "stop", "gnocchi-arm.service"])
    assert server.table(check=False).returncode != 0, "table inet gnocchi is gone"
    assert server.connect() == "hello from the protected port", "port 22 no longer guarded"


def test_removing_the_package_stops_everything_and_leaves_no_table(server):
    box = server.box
    box.run(["systemctl", "start", "gnocchi-arm.service"])
    server.table()
    box.run(["apt-get", "remove", "-y", "-q", "gnocchi-knock"], timeout=180)
    assert server.table(check=False).returncode != 0, "no table left without its verifier"
    for unit in ("gnocchi.socket", "gnocchi.service", "gnocchi-helper.socket",
                 "gnocchi-helper.service"):
        assert box.run(["systemctl", "is-active", unit], check=False).stdout.strip() != "active"
    assert server.connect() == "hello from the protected port"

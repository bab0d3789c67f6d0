"""Never locked out, never silently open, on a booted systemd.

The package is installed in a container (tests/system/systemd_container.py)
in the server namespace of a tests/netns.py Net. The tests share it and run
in order, as an admin's mistakes would come: arming before `gnocchi setup`,
with no client, with a first config that is broken; then a good setup;
reloads that check first; a typo in the config at a reload, a restart, a
socket activation and a reboot (gnocchi runs the last good config, loudly);
an allowed port that is not protected; ruleset flushes by nftables.service
and by hand; `gnocchi status`; disarming; trial arming.
"""

from __future__ import annotations

import json
import socket
import sys
import time

import pytest

from gnocchi.admin import gate, nft_table, table
from support import Net, inside, tcp_connect
from systemd_container import Container, installed
from test_system import need

pytestmark = pytest.mark.system

CONFIG = "/etc/gnocchi/gnocchi.toml"
RULES = "/usr/share/gnocchi/gnocchi.nft"  # the package's; the ports are [protect] in CONFIG
LAST_GOOD = "/var/lib/gnocchi-config/last-good.toml"
CLIENT_DIR = "/root/alice"
CONNECT = (
    "import socket, sys\n"
    "source = (sys.argv[2], 0) if sys.argv[2:] else None\n"
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], 22), 1.5, source)\n"
    "    print(c.recv(100).decode().strip())\n"
    "except socket.timeout:\n"
    "    print('timeout')\n"
    "except OSError as e:\n"
    "    print('error', e)\n"
)
LISTENER = (
    "import socket\n"
    "s = socket.create_server(('', 22), family=socket.AF_INET6, dualstack_ipv6=True)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(b'hello\\n')\n"
    "    c.close()\n"
)


class Box:
    def __init__(self, net: Net, box: Container):
        self.net, self.box = net, box
        self.public = ""

    def run(self, *argv, check=True, **kw):
        return self.box.run(list(argv), check=check, **kw)

    def file(self, path: str):
        return self.box.root / path.lstrip("/")

    def state(self, unit: str, what: str = "is-active") -> str:
        return self.run("systemctl", what, unit, check=False).stdout.strip()

    def armed(self) -> bool:
        return self.net.server.nft("list", "table", "inet", "gnocchi", check=False).returncode == 0

    def journal(self, *args) -> list[dict]:
        out = self.run("journalctl", "--no-pager", "-o", "json", *args).stdout
        return [json.loads(line) for line in out.splitlines() if line.strip()]

    def events(self, event: str, since: float = 0) -> list[dict]:
        return [
            e
            for e in self.journal("-u", "gnocchi")
            if e.get("GNOCCHI_EVENT") == event and int(e["__REALTIME_TIMESTAMP"]) / 1e6 >= since
        ]

    def write_config(self, clients: str, extra: str = "") -> None:
        self.file(CONFIG).write_text(
            f'server_key_file = "/etc/gnocchi/server.key"\n{extra}\n{clients}'
        )

    def alice(self, allow='["22/tcp"]') -> str:
        return f'[clients.alice]\npublic_key = "{self.public}"\nallow = {allow}\n'

    def knock(self, client_key: str = f"{CLIENT_DIR}/client.key") -> None:
        self.box.run_in_netns(
            self.net.client.name,
            [
                "gnocchi-knock",
                "--server-key-file",
                f"{CLIENT_DIR}/server.key",
                "--client-key-file",
                client_key,
                "--state-dir",
                f"{CLIENT_DIR}/state",
                self.net.server.ip,
            ],
        )

    def knock_and_wait(self, client_key: str = f"{CLIENT_DIR}/client.key") -> None:
        """Knock, and wait for the verifier's accepted entry for this very knock (an
        element of an earlier knock may still be pending: waiting for one proves nothing)."""
        before = len(self.events("accepted"))
        self.knock(client_key)
        self.wait(lambda: len(self.events("accepted")) > before, "the knock is accepted")

    def connect(self) -> str:
        return self.net.client.run(
            [sys.executable, "-c", CONNECT, self.net.server.ip], timeout=30
        ).stdout.strip()

    def stranger_connects(self) -> str:
        """A connection from another host on the client's link, which never knocked."""
        stranger = self.net.client.ip.rsplit(".", 1)[0] + ".66"
        self.net.client.run(["ip", "addr", "replace", f"{stranger}/24", "dev", "gveth0"])
        return self.net.client.run(
            [sys.executable, "-c", CONNECT, self.net.server.ip, stranger], timeout=30
        ).stdout.strip()

    def pid(self) -> str:
        return self.run("systemctl", "show", "-P", "MainPID", "gnocchi.service").stdout.strip()

    def wait(self, probe, what: str, timeout: float = 20):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            value = probe()
            if value:
                return value
            time.sleep(0.1)
        raise AssertionError(
            f"timed out after {timeout} s waiting until: {what}\n"
            + self.run("journalctl", "--no-pager", "-n", "30", "-u", "gnocchi*", check=False).stdout
        )

    def nothing_armed_or_listening(self) -> None:
        assert not self.armed()
        for unit in ("gnocchi.socket", "gnocchi-helper.socket", "gnocchi.service"):
            assert self.state(unit) != "active", unit


@pytest.fixture(scope="module")
def b(deb):
    need("systemd-nspawn", "nsenter", "nft")
    with installed(deb, "ar") as (net, box):
        b = Box(net, box)
        b.run("mkdir", "-m", "0700", CLIENT_DIR)
        b.public = b.run("gnocchi", "keygen", "--client", f"{CLIENT_DIR}/client.key").stdout.strip()
        box.run(
            [
                "systemd-run",
                "--unit=protected-service",
                "--quiet",
                "/usr/bin/python3",
                "-c",
                LISTENER,
            ]
        )
        yield b


# ---- arming refused ---------------------------------------------------------


def test_without_a_knock_port_nothing_arms(b):
    proc = b.run("systemctl", "enable", "--now", "gnocchi.socket", check=False)
    assert proc.returncode != 0
    assert "gnocchi.socket has a bad unit file setting" in proc.stderr
    b.nothing_armed_or_listening()
    # The arming unit alone (the old way to arm) refuses too, and says why.
    b.run("gnocchi", "keygen", "--server", "/etc/gnocchi/server.key")
    b.run("install", "-m", "0600", "/etc/gnocchi/server.key", f"{CLIENT_DIR}/server.key")
    b.write_config(b.alice())
    since = time.time()
    assert b.run("systemctl", "start", "gnocchi-arm.service", check=False).returncode != 0
    assert not b.armed()
    refused = b.events("arming-refused", since)
    assert any(
        "gnocchi.socket has no knock port" in e["MESSAGE"] and "run `gnocchi setup`" in e["MESSAGE"]
        for e in refused
    ), refused
    assert any(e["MESSAGE"].startswith("NOT ARMED") for e in refused)
    assert b.state("gnocchi-arm.service") == "failed"
    status = b.run("systemctl", "status", "gnocchi-arm.service", check=False).stdout
    assert "gnocchi.socket has no knock port" in status


def test_with_no_client_nothing_arms(b):
    b.write_config("")
    out = b.run("gnocchi", "setup").stdout
    assert "not ready to arm yet" in out and "no [clients.NAME] configured" in out
    check = b.run("gnocchi", "check", check=False)
    assert check.returncode == 1 and "no [clients.NAME] configured" in check.stderr
    since = time.time()
    proc = b.run("systemctl", "enable", "--now", "gnocchi.socket", check=False)
    assert proc.returncode != 0 and "A dependency job for gnocchi.socket failed" in proc.stderr
    b.nothing_armed_or_listening()
    assert any(
        "no [clients.NAME] configured" in e["MESSAGE"] for e in b.events("arming-refused", since)
    )


def test_with_a_broken_first_config_nothing_arms(b):
    """No config has been good yet, so there is no last good one to arm with."""
    assert not b.file(LAST_GOOD).exists()
    b.write_config(b.alice() + 'alow = ["22"]\n')
    since = time.time()
    assert b.run("systemctl", "start", "gnocchi.socket", check=False).returncode != 0
    b.nothing_armed_or_listening()
    assert any(
        f"{CONFIG}: clients.alice.alow: unknown key" in e["MESSAGE"]
        and "the verifier would refuse to start" in e["MESSAGE"]
        for e in b.events("arming-refused", since)
    )
    # The verifier was never started: no restart loop, no start limit hit.
    assert b.state("gnocchi.service") == "inactive"


def test_once_check_passes_the_same_command_arms(b):
    b.write_config(b.alice())
    assert b.run("gnocchi", "check").stdout.startswith("gnocchi check: ok:")
    b.run("systemctl", "start", "gnocchi.socket")  # enabled by the refused attempt before
    assert b.armed()
    assert b.state("gnocchi.socket", "is-enabled") == "enabled"
    assert b.connect() == "timeout"
    b.knock()
    b.wait(lambda: b.events("accepted"), "an accepted knock")
    assert b.connect() == "hello"


def test_reloading_a_broken_config_keeps_the_running_verifier(b):
    b.knock_and_wait()  # the verifier runs
    pid = b.run("systemctl", "show", "-P", "MainPID", "gnocchi.service").stdout.strip()
    good = b.file(CONFIG).read_text()
    b.file(CONFIG).write_text(good + "typo = 1\n")
    proc = b.run("systemctl", "reload", "gnocchi", check=False)
    assert proc.returncode != 0
    assert b.run("systemctl", "show", "-P", "MainPID", "gnocchi.service").stdout.strip() == pid
    status = b.run("systemctl", "status", "gnocchi", check=False).stdout
    assert "clients.alice.typo: unknown key" in status
    # A good config: the verifier exits, and the next knock starts it with the new one.
    b.file(CONFIG).write_text(good)
    b.run("systemctl", "reload", "gnocchi")
    b.wait(lambda: b.state("gnocchi.service") == "inactive", "the old verifier exited")
    assert b.state("gnocchi.socket") == "active" and b.armed()


def test_reloading_broken_rules_keeps_the_loaded_table_and_its_knocks(b):
    b.knock_and_wait()
    before = b.net.server.nft("list", "chain", "inet", "gnocchi", "input").stdout
    good = b.file(RULES).read_text()
    b.file(RULES).write_text(good.replace("elements = { 22 }", "elements = { 22 x }"))
    since = time.time()
    assert b.run("systemctl", "reload", "gnocchi-arm", check=False).returncode != 0
    assert any("nft refuses it" in e["MESSAGE"] for e in b.events("arming-refused", since))
    assert b.net.server.nft("list", "chain", "inet", "gnocchi", "input").stdout == before
    assert b.state("gnocchi-arm.service") == "active", "still armed"
    b.file(RULES).write_text(good)
    assert b.connect() == "hello", "the pending knock survived the refused reload"
    assert b.connect() == "timeout"


# ---- a broken config never changes what is enforced ------------------------------


def typo(b: Box) -> str:
    """The admin's typo under [clients.alice] (`sorces =` for `sources =`); returns the
    good text."""
    good = b.file(CONFIG).read_text()
    b.file(CONFIG).write_text(good + 'sorces = ["198.51.100.0/24"]\n')
    return good


BROKEN = f"CONFIG BROKEN: {CONFIG}: clients.alice.sorces: unknown key"


def test_the_after_editing_command_refuses_a_typo_whether_or_not_the_verifier_runs(b):
    b.knock_and_wait()  # the verifier runs
    pid = b.pid()
    good = typo(b)
    for running in (True, False):
        proc = b.run("gnocchi", "reload", check=False)
        assert proc.returncode == 1, proc.stdout + proc.stderr
        assert f"{CONFIG}: clients.alice.sorces: unknown key" in proc.stderr
        assert "REFUSED" in proc.stderr and "nothing was changed" in proc.stderr
        assert b.pid() == (pid if running else "0"), "the verifier is left as it was"
        b.run("systemctl", "stop", "gnocchi.service")  # idle, as between knocks
    assert b.connect() == "hello", "the knock made before still opens"
    b.file(CONFIG).write_text(good)
    out = b.run("gnocchi", "reload").stdout
    assert out.startswith("gnocchi reload: ok: ") and "gnocchi-arm.service" in out, out
    assert b.file(LAST_GOOD).read_text() == good


def test_a_typo_at_a_restart_and_a_socket_activation_runs_the_last_good_config(b):
    good = typo(b)
    since = time.time()
    b.run("systemctl", "restart", "gnocchi.service")
    assert b.state("gnocchi.service") == "active", "no crash loop"
    b.knock_and_wait()
    assert b.connect() == "hello", "alice's knock opens"
    assert b.stranger_connects() == "timeout", "a stranger stays out"
    # Loud: the catalogued journal event, status (exit 1) and doctor name file, key, fix.
    entry = b.wait(lambda: b.events("config-fell-back", since), "a config-fell-back entry")[0]
    assert entry["MESSAGE_ID"] == "ae32aab35e454c32ac8896aba4e0e643"
    assert entry["MESSAGE"].startswith(BROKEN) and entry["GNOCCHI_LAST_GOOD"] == LAST_GOOD
    assert "fix: correct the file, then `gnocchi reload`" in entry["MESSAGE"]
    explained = b.run("journalctl", "--no-pager", "-x", "-u", "gnocchi").stdout
    assert "the verifier runs the last good one" in explained
    rc, out = status(b)
    assert rc == 1 and out.startswith("gnocchi: ARMED"), out
    assert f"gnocchi: {BROKEN}" in out and "gnocchi runs the last good config instead" in out
    assert "fix: correct the file, then `gnocchi reload`" in out
    rc, out = doctor(b)
    assert rc == 1 and f"FAIL the config loads: {BROKEN}" in out, out
    # Socket activation: the verifier is stopped, and the next knock starts it.
    b.run("systemctl", "stop", "gnocchi.service")
    b.knock_and_wait()
    assert b.connect() == "hello"
    b.file(CONFIG).write_text(good)
    b.run("gnocchi", "reload")
    assert status(b)[0] == 0


def test_a_reboot_with_a_typo_arms_with_the_last_good_config(b):
    good = typo(b)
    b.box.reboot()
    b.box.run(
        ["systemd-run", "--unit=protected-service", "--quiet", "/usr/bin/python3", "-c", LISTENER]
    )
    assert b.armed(), "armed at boot, not left open"
    assert b.stranger_connects() == "timeout"
    rc, out = status(b)
    assert rc == 1 and out.startswith("gnocchi: ARMED") and f"gnocchi: {BROKEN}" in out, out
    fell_back = [
        e for e in b.journal("-b", "-u", "gnocchi") if e.get("GNOCCHI_EVENT") == "arming-fell-back"
    ]
    assert fell_back and fell_back[0]["MESSAGE"].startswith(BROKEN)
    b.knock_and_wait()
    assert b.connect() == "hello", "alice's knock opens"
    b.file(CONFIG).write_text(good)
    b.run("gnocchi", "reload")
    assert status(b)[0] == 0


def test_a_broken_drop_in_never_changes_what_runs_and_is_named(b):
    carol = b.run("gnocchi", "keygen", "--client", f"{CLIENT_DIR}/carol.key").stdout.strip()
    added = b.run("gnocchi", "add-client", "--drop-in", "carol", carol, "--allow", "22")
    drop_in = "/etc/gnocchi/clients.d/carol.toml"
    assert f"added [clients.carol] to {drop_in}" in added.stderr
    b.knock_and_wait(f"{CLIENT_DIR}/carol.key")
    assert b.connect() == "hello", "a client of a drop-in knocks in"
    good = b.file(drop_in).read_text()
    b.file(drop_in).write_text(good + "alow = [2222]\n")
    proc = b.run("gnocchi", "reload", check=False)
    assert proc.returncode == 1 and f"{drop_in}: clients.carol.alow: unknown key" in proc.stderr
    since = time.time()
    b.run("systemctl", "restart", "gnocchi.service")
    b.knock_and_wait(f"{CLIENT_DIR}/carol.key")
    assert b.connect() == "hello", "the last good config, carol included, runs"
    assert b.stranger_connects() == "timeout"
    entry = b.wait(lambda: b.events("config-fell-back", since), "a config-fell-back entry")[0]
    assert f"{drop_in}: clients.carol.alow: unknown key" in entry["MESSAGE"]
    rc, out = status(b)
    assert rc == 1 and f"CONFIG BROKEN: {drop_in}: clients.carol.alow" in out, out
    b.file(drop_in).write_text(good)
    removed = b.run("gnocchi", "remove-client", "carol")
    assert f"removed {drop_in}" in removed.stderr and not b.file(drop_in).exists()
    b.knock(f"{CLIENT_DIR}/carol.key")
    assert b.connect() == "timeout", "carol is out"
    assert status(b)[0] == 0


# ---- allow and protect agree ------------------------------------------------------


def test_an_allowed_port_that_is_not_protected_is_named_and_protected_in_one_command(b):
    b.run("mkdir", "-p", "-m", "0700", "/root/bob")
    bob = b.run("gnocchi", "keygen", "--client", "/root/bob/client.key").stdout.strip()
    added = b.run(
        "gnocchi", "add-client", "bob", bob, "--allow", "22", "60001/udp", "--host", b.net.server.ip
    )
    assert (
        "warning: clients.bob.allow: 60001/udp is allowed but not protected: it is open "
        "to everyone without a knock"
    ) in added.stderr
    assert "fix: gnocchi protect 60001/udp" in added.stderr
    assert 'request = "open 22/tcp 60001/udp"' in added.stdout, "what --allow said"
    assert "fix: gnocchi protect 60001/udp" in b.run("gnocchi", "check").stderr
    protected = b.run("gnocchi", "protect", "60001/udp")
    assert "now protects 22/tcp, 60001/udp" in protected.stderr
    assert "table inet gnocchi reloaded" in protected.stderr
    assert "60001" in b.net.server.nft("list", "set", "inet", "gnocchi", "protected_udp").stdout
    assert status(b)[1].startswith(
        "gnocchi: ARMED: table inet gnocchi is loaded, protecting 22/tcp, 60001/udp"
    )
    assert b.run("gnocchi", "check").stderr == ""
    # bob's knock for both ports now opens both (all or none: before, it opened nothing).
    before = len(b.events("accepted"))
    b.box.run_in_netns(
        b.net.client.name,
        [
            "gnocchi-knock",
            "--server-key-file",
            f"{CLIENT_DIR}/server.key",
            "--client-key-file",
            "/root/bob/client.key",
            "--state-dir",
            "/root/bob/state",
            "--request",
            "open 22/tcp 60001/udp",
            b.net.server.ip,
        ],
    )
    b.wait(lambda: len(b.events("accepted")) > before, "bob's knock is accepted")
    assert b.events("accepted")[-1]["GNOCCHI_REQUEST"] == "open 22/tcp 60001/udp"
    b.run("gnocchi", "remove-client", "bob")
    b.run("gnocchi", "unprotect", "60001/udp")
    assert "60001" not in b.net.server.nft("list", "set", "inet", "gnocchi", "protected_udp").stdout


# ---- status, and a table that stays armed -----------------------------------


def status(b: Box, env: tuple = ()) -> tuple[int, str]:
    proc = b.run("env", *env, "gnocchi", "status", check=False)
    return proc.returncode, proc.stdout


def test_status_says_armed_with_port_clients_pending_and_decisions(b):
    b.knock_and_wait()
    rc, out = status(b)
    ported = b.run("gnocchi", "port", "/etc/gnocchi/server.key")
    port, fingerprint = ported.stdout.strip(), ported.stderr.split()[-1]
    assert rc == 0, out
    lines = out.splitlines()
    assert lines[0] == "gnocchi: ARMED: table inet gnocchi is loaded, protecting 22/tcp"
    assert (
        f"knock port: {port}/udp, listening (gnocchi.socket active); "
        f"server key fingerprint {fingerprint}"
    ) in lines
    assert "  alice: 22/tcp (from /etc/gnocchi/gnocchi.toml)" in lines
    assert any(
        line.startswith(f"  {b.net.client.ip} tcp/22, ") and line.endswith(" s left")
        for line in lines
    ), out
    assert "last entries (journalctl -u gnocchi):" in lines
    assert any(" accepted " in line and "alice" in line for line in lines), out
    # The same facts for scripts: one JSON object, the same exit status.
    proc = b.run("gnocchi", "status", "--json")
    facts = json.loads(proc.stdout)
    assert (facts["status"], facts["state"], facts["armed"], facts["listening"]) == (
        0,
        "armed",
        True,
        True,
    )
    assert facts["knock_ports"] == [int(port)] and facts["server_keys"] == [fingerprint]
    assert facts["clients"][0] == {
        "name": "alice",
        "allow": ["22/tcp"],
        "actions": [],
        "file": "/etc/gnocchi/gnocchi.toml",
    }
    assert {"address": b.net.client.ip, "proto": "tcp", "port": 22} in [
        {k: v for k, v in p.items() if k != "seconds_left"} for p in facts["pending"]
    ]
    assert facts["elements"]["knocked4"] >= 1 and facts["report"][0] == lines[0]
    assert b.connect() == "hello"


def test_nftables_service_flushes_are_rearmed_whatever_ran_them(b):
    since = time.time()
    # The first start while gnocchi is armed: the case PartOf= could not see.
    for action in (["enable", "--now"], ["reload"], ["restart"], ["stop"], ["start"]):
        b.run("systemctl", *action, "nftables.service")
        assert b.armed(), f"after systemctl {' '.join(action)} nftables"
        assert b.state("gnocchi.socket") == "active"
    missing = b.events("table-missing", since)
    assert len(missing) >= 5 and all(e["PRIORITY"] == "2" for e in missing)
    assert all(
        "nftables.service" in e["MESSAGE"] and "re-armed" in e["MESSAGE"] for e in missing
    ), "\n".join(e["_SYSTEMD_UNIT"] + ": " + e["MESSAGE"] for e in missing)
    assert b.connect() == "timeout"
    b.run("systemctl", "disable", "--now", "nftables.service")


def test_a_flush_by_hand_is_rearmed_at_once_and_said_loudly(b):
    since = time.time()
    b.net.server.nft("flush", "ruleset")
    b.wait(b.armed, "table inet gnocchi is back", timeout=5)
    entry = b.wait(lambda: b.events("table-missing", since), "a table-missing entry")[-1]
    assert entry["PRIORITY"] == "2" and "nft flush ruleset" in entry["MESSAGE"]
    assert entry["_SYSTEMD_UNIT"] == "gnocchi-watch.service"


def gate_whole(b: Box) -> bool:
    with inside(b.net.server):
        live = nft_table.live()
    return (
        live is not None
        and not gate.unguarded(live.objects)
        and not gate.differences(live.objects, nft_table.test_load(str(b.file(RULES))).objects)
    )


def test_a_flushed_chain_is_put_back_at_once_and_logged_critical(b):
    since = time.time()
    b.net.server.nft("flush", "chain", "inet", "gnocchi", "input")
    b.wait(lambda: gate_whole(b), "the gate is whole again", timeout=5)
    entry = b.wait(lambda: b.events("table-changed", since), "a table-changed entry")[-1]
    assert entry["PRIORITY"] == "2" and entry["_SYSTEMD_UNIT"] == "gnocchi-watch.service"
    assert entry["MESSAGE_ID"] == table.MESSAGE_IDS["table-changed"]
    rules = len(gate.definition(nft_table.test_load(str(b.file(RULES))).objects)["rules"]["input"])
    assert f"chain input: {rules} of its {rules} rules missing" in entry["MESSAGE"]
    assert f"re-armed from {RULES}" in entry["MESSAGE"], entry["MESSAGE"]
    explained = b.run("journalctl", "--no-pager", "-x", "-u", "gnocchi").stdout
    assert "gnocchi's gate was changed while armed" in explained
    assert b.connect() == "timeout"


def test_status_never_says_armed_over_an_emptied_gate(b):
    b.run("systemctl", "kill", "--kill-who=main", "--signal=STOP", "gnocchi-watch.service")
    try:
        b.net.server.nft("flush", "table", "inet", "gnocchi")
        rc, out = status(b)
        assert rc == 1 and out.startswith(
            "gnocchi: NOT ARMED: table inet gnocchi is loaded but its gate is EMPTIED"
        ), out
        assert "fix: systemctl reload gnocchi-arm" in out
        assert b.connect() == "hello", "the emptied gate is open: status must not say ARMED"
    finally:
        b.run("systemctl", "kill", "--kill-who=main", "--signal=CONT", "gnocchi-watch.service")
    b.wait(lambda: gate_whole(b), "put back by the watch")
    assert status(b)[0] == 0


ECHO = (
    "import socket, threading\n"
    "s = socket.create_server(('', 22), family=socket.AF_INET6, dualstack_ipv6=True)\n"
    "def echo(c):\n"
    "    while (d := c.recv(100)):\n"
    "        c.sendall(d)\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    threading.Thread(target=echo, args=(c,), daemon=True).start()\n"
)


def talks(sock: socket.socket) -> bool:
    sock.settimeout(3)
    try:
        sock.send(b"ping")
        return sock.recv(10) == b"ping"
    except OSError:
        return False


def test_a_stranger_who_came_in_during_a_flush_is_cut_and_a_knocked_session_stays(b):
    b.run("systemctl", "stop", "protected-service")
    b.run("systemd-run", "--unit=echo-service", "--quiet", "/usr/bin/python3", "-c", ECHO)
    try:
        b.knock_and_wait()
        knocked = tcp_connect(b.net.client, b.net.server.ip, 22)
        assert knocked is not None and talks(knocked)
        since = time.time()
        b.run("systemctl", "kill", "--kill-who=main", "--signal=STOP", "gnocchi-watch.service")
        try:
            b.net.server.nft("flush", "ruleset")
            stranger = tcp_connect(b.net.client, b.net.server.ip, 22)
            assert stranger is not None and talks(stranger), "the window was not open"
        finally:
            b.run("systemctl", "kill", "--kill-who=main", "--signal=CONT", "gnocchi-watch.service")
        entry = b.wait(lambda: b.events("connections-cut", since), "a connections-cut entry")[-1]
        assert entry["PRIORITY"] == "2" and entry["GNOCCHI_CUT"] == "1", entry["MESSAGE"]
        assert f"{b.net.client.ip} port {stranger.getsockname()[1]} -> 22/tcp" in entry["MESSAGE"]
        assert not talks(stranger), "the stranger is still inside after the re-arm"
        assert talks(knocked), "the knocked session was cut"
    finally:
        b.run("systemctl", "stop", "echo-service", check=False)
        b.run("systemctl", "reset-failed", "protected-service", check=False)
        b.wait(
            lambda: (
                b.run(
                    "systemctl", "show", "-P", "LoadState", "protected-service", check=False
                ).stdout.strip()
                == "not-found"
            ),
            "the old unit is gone",
        )
        b.box.run(
            [
                "systemd-run",
                "--unit=protected-service",
                "--quiet",
                "/usr/bin/python3",
                "-c",
                LISTENER,
            ]
        )


def test_status_says_not_armed_loudly_when_the_table_is_missing(b):
    # Freeze the watch, so that nothing puts the table back. (Stopping it does not
    # work: gnocchi-arm.service upholds it, and systemd starts it again at once.)
    b.run("systemctl", "stop", "gnocchi-watch.service")
    assert b.wait(lambda: b.state("gnocchi-watch.service") == "active", "upheld")
    b.run("systemctl", "kill", "--kill-who=main", "--signal=STOP", "gnocchi-watch.service")
    b.net.server.nft("delete", "table", "inet", "gnocchi")
    rc, out = status(b)
    assert rc == 1
    assert out.startswith(
        "gnocchi: NOT ARMED: table inet gnocchi is MISSING although gnocchi is meant to be armed"
    ), out
    assert "fix: systemctl reload gnocchi-arm" in out
    b.run("systemctl", "kill", "--kill-who=main", "--signal=CONT", "gnocchi-watch.service")
    b.wait(b.armed, "re-armed by the watch")
    assert status(b)[0] == 0


# ---- trial arming ------------------------------------------------------------


def test_disable_now_returns_with_the_table_gone_and_status_not_armed(b):
    since = time.time()
    for _ in range(3):
        b.run("systemctl", "disable", "--now", "gnocchi.socket")
        assert not b.armed(), "gone when the command returns"  # nft at once, from outside
        rc, out = status(b)
        assert rc == 3 and out.startswith("gnocchi: NOT ARMED (disarmed"), out
        b.run("systemctl", "enable", "--now", "gnocchi.socket")
        assert b.armed()
    assert b.events("table-missing", since) == [], "the watch put nothing back"


def test_disarm_is_the_console_switch_off(b):
    out = b.run("gnocchi", "disarm").stdout
    assert out.startswith("gnocchi: NOT ARMED: disarmed")
    assert not b.armed() and b.state("gnocchi.socket", "is-enabled") == "disabled"
    b.nothing_armed_or_listening()
    rc, out = status(b)
    assert rc == 3 and out.startswith("gnocchi: NOT ARMED (disarmed")


def test_an_unconfirmed_trial_disarms_by_itself_even_with_gnocchi_killed(b):
    b.run("systemctl", "enable", "gnocchi.socket")  # as a refused `enable --now` leaves it
    start = time.monotonic()
    out = b.run("gnocchi", "arm", "--trial", "12").stdout
    assert "ARMED ON TRIAL" in out and "in 12 s" in out
    assert b.armed() and b.state("gnocchi.socket") == "active"
    assert b.state("gnocchi.socket", "is-enabled") == "disabled", "a reboot disarms too"
    rc, out = status(b)
    assert rc == 0 and "gnocchi: TRIAL: disarms by itself in " in out
    b.knock()  # the verifier and the helper run; then everything of gnocchi's dies
    b.wait(lambda: b.state("gnocchi-helper.service") == "active", "the helper runs")
    for unit in ("gnocchi.service", "gnocchi-helper.service", "gnocchi-watch.service"):
        b.run("systemctl", "kill", "--kill-who=main", "--signal=KILL", unit)
    b.wait(lambda: not b.armed(), "the trial disarmed by itself", timeout=30)
    assert 11 <= time.monotonic() - start <= 25
    b.wait(lambda: b.state("gnocchi.socket") == "inactive", "gnocchi.socket stopped")
    assert b.state("gnocchi.socket", "is-enabled") == "disabled"
    assert any("NOT confirmed in time" in e["MESSAGE"] for e in b.events("trial"))
    assert b.connect() == "hello", "open again, as without gnocchi"


def test_confirm_needs_a_session_that_came_in_through_a_knock(b):
    b.run("gnocchi", "arm", "--trial", "300")
    stranger = b.net.client.ip.rsplit(".", 1)[0] + ".77"
    proc = b.run(
        "env",
        f"SSH_CONNECTION={stranger} 50000 {b.net.server.ip} 22",
        "gnocchi",
        "arm",
        "--confirm",
        check=False,
    )
    assert proc.returncode == 1 and "has not knocked in since the trial began" in proc.stderr
    assert b.run("gnocchi", "status").stdout.count("TRIAL") == 1, "still on trial"


def test_audit_shows_arming_as_root_wrote_it_and_no_forgery(b):
    """gnocchi-arm's entries attach to gnocchi.service: audit shows them beside the knocks.
    A user's entry that claims the same fields is not shown: journald's _UID says who
    wrote it, as for `journalctl -u gnocchi`."""
    b.run(
        "runuser",
        "-u",
        "nobody",
        "--",
        "python3",
        "-c",
        "from systemd import journal; journal.send('FORGED: armed by nobody', "
        "SYSLOG_IDENTIFIER='gnocchi-arm', OBJECT_SYSTEMD_UNIT='gnocchi.service', "
        "GNOCCHI_EVENT='armed')",
    )
    b.wait(
        lambda: (
            "FORGED"
            in b.run(
                "journalctl", "--no-pager", "-o", "cat", "SYSLOG_IDENTIFIER=gnocchi-arm"
            ).stdout
        ),
        "the forged entry is in the journal",
    )
    out = b.run("gnocchi", "audit").stdout
    events = {line.split()[2] for line in out.splitlines()[1:] if len(line.split()) > 2}
    assert {"arming-refused", "armed", "table-missing", "trial", "disarmed"} <= events, out
    for said in (
        "NOT ARMED: refused to load table inet gnocchi",
        "re-armed from",
        "armed on trial",
        "NOT confirmed in time",
        "disarmed: table inet gnocchi",
    ):
        assert said in out, f"{said!r} not in:\n{out}"
    assert "FORGED" not in out


def test_a_confirmed_arm_survives_a_reboot(b):
    b.knock()  # the admin's client knocks, and logs in from its address:
    b.wait(lambda: b.connect() == "hello", "the knock let the client in", timeout=10)
    out = b.run(
        "env",
        f"SSH_CONNECTION={b.net.client.ip} 50000 {b.net.server.ip} 22",
        "gnocchi",
        "arm",
        "--confirm",
    ).stdout
    assert "confirmed" in out
    assert b.state("gnocchi.socket", "is-enabled") == "enabled"
    assert "TRIAL" not in b.run("gnocchi", "status").stdout
    assert any("confirmed" in e["MESSAGE"] for e in b.events("trial"))
    b.box.reboot()
    assert b.armed()
    rc, out = status(b)
    assert rc == 0 and "TRIAL" not in out
    b.box.run(
        ["systemd-run", "--unit=protected-service", "--quiet", "/usr/bin/python3", "-c", LISTENER]
    )
    time.sleep(0.5)
    assert b.connect() == "timeout"


def test_a_verifier_that_keeps_failing_never_disarms(b):
    """gnocchi fails closed: the verifier hitting its start limit fails gnocchi.socket,
    and the table stays (a remote crash must not switch the firewall off); status says
    that nobody can knock in. (A broken config no longer makes it fail: the last good
    one runs. A corrupt counter store does: the verifier fails closed.)"""
    store = b.file("/var/lib/gnocchi/counters")
    good = store.read_bytes()
    store.write_bytes(b"not a counter store\n")
    for _ in range(25):
        b.run("systemctl", "restart", "gnocchi.service", check=False)
        if b.state("gnocchi.socket") == "failed":
            break
    assert b.state("gnocchi.socket") == "failed"
    assert b.armed() and b.state("gnocchi-arm.service") == "active"
    rc, out = status(b)
    assert rc == 1 and "NOBODY CAN KNOCK IN" in out, out
    store.write_bytes(good)
    b.run("systemctl", "reset-failed", "gnocchi.service", "gnocchi.socket")
    b.run("systemctl", "start", "gnocchi.socket")
    assert status(b)[0] == 0


# ---- gnocchi doctor ----------------------------------------------------------


def doctor(b: Box) -> tuple[int, str]:
    proc = b.run("gnocchi", "doctor", check=False)
    return proc.returncode, proc.stdout


def diagnosis(b: Box, *expected: str) -> str:
    """doctor fails, and its output names the fault and the fix."""
    rc, out = doctor(b)
    assert rc == 1, out
    for text in expected:
        assert text in out, f"{text!r} not in:\n{out}"
    return out


def healthy(b: Box) -> None:
    rc, out = doctor(b)
    assert rc == 0 and out.splitlines()[-1].startswith("gnocchi doctor: 0 failed"), out


def not_a_point_seed() -> str:
    """A client's private key (seed) that is not also a valid public key (15 in 16 are not)."""
    import os
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    while True:
        seed = os.urandom(32)
        if not crypto_core_ed25519_is_valid_point(seed):
            return seed.hex()


def test_doctor_passes_a_good_setup(b):
    healthy(b)


def test_doctor_names_a_private_key_pasted_as_a_public_key(b):
    good = b.file(CONFIG).read_text()
    b.file(CONFIG).write_text(
        good + f'[clients.bob]\npublic_key = "{not_a_point_seed()}"\nallow = ["22/tcp"]\n'
    )
    diagnosis(
        b,
        "FAIL clients.bob.public_key is a client's public key: it is not an Ed25519 "
        "public key (not a point of the curve's group, which every public key is): "
        "most likely a secret pasted by mistake",
        "fix: on bob's machine run `gnocchi-knock --pubkey`",
    )
    server_key = b.file("/etc/gnocchi/server.key").read_text().strip()
    b.file(CONFIG).write_text(good + f'[clients.bob]\npublic_key = "{server_key}"\n')
    diagnosis(
        b,
        "FAIL clients.bob.public_key is a client's public key: it is this server's own secret key",
    )
    b.file(CONFIG).write_text(good)
    healthy(b)


def test_doctor_names_loose_modes(b):
    b.run("chmod", "0644", "/etc/gnocchi/server.key")
    diagnosis(
        b,
        "FAIL the server key: secret key is open to group or others (mode 0644)",
        "fix: chmod 600 /etc/gnocchi/server.key",
    )
    b.run("chmod", "0600", "/etc/gnocchi/server.key")
    b.run("chmod", "0666", CONFIG)
    diagnosis(
        b, f"FAIL {CONFIG} is root's alone", f"fix: chown root:root {CONFIG} && chmod go-w {CONFIG}"
    )
    b.run("chmod", "0644", CONFIG)
    healthy(b)


def test_doctor_names_a_drop_in_for_another_key(b):
    drop_in = b.file("/etc/systemd/system/gnocchi.socket.d/port.conf")
    good = drop_in.read_text()
    drop_in.write_text("[Socket]\nListenDatagram=\nListenDatagram=2999\n")
    b.run("systemctl", "daemon-reload")
    diagnosis(
        b,
        "FAIL gnocchi.socket's port is the key's: gnocchi.socket listens on UDP 2999",
        "fix: run `gnocchi setup`",
    )
    drop_in.write_text(good)
    b.run("systemctl", "daemon-reload")
    # systemd closed the old port's socket at the first reload: only a restart opens
    # the port again, as `gnocchi setup` says (doctor reports "nothing listens" until then).
    diagnosis(b, "FAIL something listens on UDP")
    b.run("systemctl", "restart", "gnocchi.socket")
    healthy(b)


def test_doctor_names_a_default_drop_chain_that_hides_the_knock_port_and_its_fix(b):
    port = b.run("gnocchi", "port", "/etc/gnocchi/server.key").stdout.strip()
    b.net.server.run(
        ["nft", "-f", "-"],
        input=(
            "table inet filter {\n chain input {\n  type filter hook input priority 0; "
            "policy drop;\n  ct state established,related accept\n  iif lo accept\n"
            "  tcp dport 22 accept\n }\n}\n"
        ),
    )
    try:
        out = diagnosis(
            b,
            f"FAIL inet filter input lets knocks to {port}/udp through: it "
            "drops them (the chain's policy is drop)",
            f"fix: nft insert rule inet filter input udp dport {port} accept",
            f"iptables -I INPUT -p udp --dport {port} -j ACCEPT",
            f"ufw allow {port}/udp",
        )
        fix = next(line for line in out.splitlines() if "fix: nft insert rule" in line)
        b.net.server.run(fix.split("fix: ", 1)[1].split(" (")[0].split())  # as given
        healthy(b)
        b.net.server.nft(
            "add", "rule", "inet", "filter", "input", "meta", "l4proto", "udp", "reject"
        )
        b.net.server.nft("flush", "chain", "inet", "filter", "input")
        b.net.server.nft(
            "add", "rule", "inet", "filter", "input", "meta", "l4proto", "udp", "reject"
        )
        diagnosis(b, "it drops them and answers them with ICMP")
    finally:
        b.net.server.nft("delete", "table", "inet", "filter")
    healthy(b)


def test_doctor_names_a_helper_socket_others_may_use(b):
    b.run("chmod", "0666", "/run/gnocchi/helper.sock")
    diagnosis(
        b, "FAIL /run/gnocchi/helper.sock is root:gnocchi 0660: it is uid 0, gid", "mode 0666"
    )
    b.run("systemctl", "restart", "gnocchi-helper.socket")  # the fix doctor gives
    healthy(b)


def test_doctor_names_a_client_port_the_table_does_not_protect(b):
    good = b.file(CONFIG).read_text()
    b.file(CONFIG).write_text(good.replace('allow = ["22/tcp"]', 'allow = ["22/tcp", "2222"]'))
    diagnosis(
        b,
        "FAIL clients.alice may open 2222/tcp: it is protected: not in the live "
        "table's protected set",
        "fix: gnocchi protect 2222/tcp",
    )
    b.file(CONFIG).write_text(good)
    healthy(b)


def test_doctor_names_a_broken_table_file(b):
    good = b.file(RULES).read_text()
    b.file(RULES).write_text(good.replace("elements = { 22 }", "elements = { 22 x }"))
    diagnosis(
        b,
        f"FAIL the table file loads: {RULES}: nft refuses it",
        "fix: apt install --reinstall gnocchi-server",
    )
    b.file(RULES).write_text(good)
    healthy(b)


def test_doctor_names_a_server_that_is_not_armed(b):
    b.run("gnocchi", "disarm")
    diagnosis(
        b,
        "FAIL table inet gnocchi is loaded (armed): NOT ARMED",
        "fix: gnocchi arm --trial 300",
        "FAIL gnocchi.socket is active: inactive",
        "FAIL something listens on UDP",
    )
    b.run("systemctl", "enable", "--now", "gnocchi.socket")
    healthy(b)


def test_doctor_self_knock_opens_once_and_names_a_knock_that_does_not(b):
    self_pub = b.run("gnocchi", "keygen", "--client", "/etc/gnocchi/self.key").stdout.strip()
    good = b.file(CONFIG).read_text()
    with_self = good + f'[clients.self]\npublic_key = "{self_pub}"\nallow = ["22/tcp"]\n'
    b.file(CONFIG).write_text(with_self)
    b.run("systemctl", "restart", "gnocchi.service")
    proc = b.run("gnocchi", "doctor", "--self-knock", "/etc/gnocchi/self.key", check=False)
    assert proc.returncode == 0, proc.stdout
    assert (
        f"ok   a self-knock opens the port once, then it is closed again: self knocked "
        f"{b.net.server.ip}; 22/tcp let one connection in, then dropped the next" in proc.stdout
    ), proc.stdout
    # Signed for another address than the one it arrives on: only the knock shows it.
    b.file(CONFIG).write_text('server_addresses = ["203.0.113.9"]\n' + with_self)
    b.run("systemctl", "restart", "gnocchi.service")
    proc = b.run("gnocchi", "doctor", "--self-knock", "/etc/gnocchi/self.key", check=False)
    assert proc.returncode == 1
    assert (
        "FAIL a self-knock opens the port once, then it is closed again: the knock by self "
        f"did not open 22/tcp on {b.net.server.ip}: knock claiming client self from "
        f"{b.net.server.ip} has a bad signature" in proc.stdout
    ), proc.stdout
    b.file(CONFIG).write_text(good)
    b.run("systemctl", "restart", "gnocchi.service")

"""The whole stack, every part real.

    client ns 198.18.n.1                         server ns 198.18.n.2
    python3 -m gnocchi.client.knock  --UDP knock-->     python3 -m gnocchi.admin serve (user nobody)
                                                   | SEQPACKET, helper.sock
                                                 python3 helper (root, socket-activated,
                                                   --open-seconds 2)
                                                   | libnftables JSON
                                                 table inet gnocchi: tcp 22, udp 60001
                                                 echo services: tcp 22, 8080; udp 60001, 60002

The client signs 198.18.n.2 and the verifier reads it with IP_PKTINFO; the
helper serves uid nobody as it would serve gnocchi.
"""

import os
import pwd
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gnocchi.server import counters
from support import (
    PYTHON,
    REPO,
    EchoServices,
    Helper,
    Net,
    echoes,
    elements,
    events,
    gnocchi_cli,
    load_table,
    stop,
    tcp_connect,
    udp_socket,
)

OPEN_SECONDS = 2


def cli(*args) -> str:
    return gnocchi_cli(*args, check=True).stdout.strip()


class Stack:
    def __init__(self, net: Net, d: Path):
        self.net, self.d = net, d
        load_table(net.server, d, udp_ports=(60001,))
        self.helper = Helper(net.server, open_seconds=OPEN_SECONDS)
        cli("keygen", "--server", d / "server.key")
        cli("keygen", "--client", d / "client.key")
        self.knock_port = int(cli("port", d / "server.key").split()[-1])
        public = cli("pubkey", d / "client.key").split()[-1]
        nobody = pwd.getpwnam("nobody")
        (d / "state").mkdir()
        counters.create(str(d / "state"))  # as `gnocchi setup` does
        for path in (d / "state", d / "state" / "counters", d / "server.key"):  # the verifier's
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        (d / "gnocchi.toml").write_text(
            f'server_key_file = "{d}/server.key"\n'
            f'state_dir = "{d}/state"\n'
            f'helper_socket = "{self.helper.path}"\n'
            "[clients.alice]\n"
            f'public_key = "{public}"\n'
            'allow = ["22/tcp", "60001/udp"]\n'
        )
        # The verifier runs as nobody, who may not be able to read the checkout
        # (a clone under /root): it gets its own copy of the package.
        shutil.copytree(
            REPO / "gnocchi", d / "gnocchi", ignore=shutil.ignore_patterns("__pycache__")
        )
        self.verifier_log = d / "verifier.log"
        with open(self.verifier_log, "w") as log:
            self.verifier = net.server.popen(
                [
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    PYTHON,
                    "-m",
                    "gnocchi.admin",
                    "serve",
                    "--config",
                    str(d / "gnocchi.toml"),
                    "--listen",
                    f"{net.server.ip}:{self.knock_port}",
                ],
                cwd=d,
                stdout=log,
                stderr=log,
            )
        for _ in range(100):  # up to 10 s
            if "started" in self.verifier_log.read_text() or self.verifier.poll() is not None:
                break
            time.sleep(0.1)
        assert "started" in self.verifier_log.read_text(), self.verifier_log.read_text()

    def knock(self, req: str) -> None:
        """gnocchi.client.knock from the client, then wait (bounded) for its element."""
        proto, port = ("udp", 60001) if "udp" in req else ("tcp", 22)
        subprocess.run(
            self.net.client.argv(
                [
                    PYTHON,
                    "-m",
                    "gnocchi.client.knock",
                    "--server-key-file",
                    str(self.d / "server.key"),
                    "--client-key-file",
                    str(self.d / "client.key"),
                    "--state-dir",
                    str(self.d / "client"),
                    "--request",
                    req,
                    self.net.server.ip,
                ]
            ),
            cwd=REPO,
            check=True,
            timeout=30,
        )
        want = {"val": {"concat": [self.net.client.ip, proto, port]}, "timeout": OPEN_SECONDS}
        for _ in range(30):  # up to 3 s: UDP, then the verifier, then the helper
            found = [
                {k: e[k] for k in ("val", "timeout")} for e in elements(self.net.server, "knocked4")
            ]
            if want in found:
                return
            time.sleep(0.1)
        pytest.fail(
            f"no element after the knock; verifier said:\n{self.verifier_log.read_text()}"
            f"\nhelper said:\n{self.helper.log.read_text()}"
        )

    def audit(self, proto: str, port: int) -> None:
        """The verifier's accepted entry and the helper's OK line for this opening
        (both log just after the element is added: wait for them, bounded)."""

        def seen():
            verifier = any(
                e.get("GNOCCHI_EVENT") == "accepted"
                and e.get("GNOCCHI_CLIENT") == "alice"
                and e.get("GNOCCHI_SOURCE_IP") == self.net.client.ip
                and e.get("GNOCCHI_REQUEST") == f"open {port}/{proto}"
                and e.get("GNOCCHI_HELPER_STATUS") == "OK"
                for e in events(self.verifier_log.read_text())
            )
            want = f"OK: {self.net.client.ip} {proto}/{port} "
            return verifier and any(want in line for line in self.helper.log_lines())

        for _ in range(20):
            if seen():
                return
            time.sleep(0.1)
        pytest.fail(
            f"no audit entries for {port}/{proto}:\n{self.verifier_log.read_text()}"
            f"\n{self.helper.log.read_text()}"
        )

    def close(self):
        stop(self.verifier)
        self.helper.close()


@pytest.fixture(scope="module")
def stack():
    d = Path(tempfile.mkdtemp(prefix="gnocchi-stack-"))
    os.chmod(d, 0o755)  # the verifier (nobody) reads its config here
    try:
        with Net("fs") as net:
            s = Stack(net, d)
            try:
                with EchoServices(net.server, tcp_ports=(22, 8080), udp_ports=(60001, 60002)):
                    yield s
            finally:
                s.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def test_closed_before_a_knock_and_unprotected_ports_untouched(stack):
    net = stack.net
    assert tcp_connect(net.client, net.server.ip, 22) is None
    assert not echoes(udp_socket(net.client, net.server.ip, 60001))
    with tcp_connect(net.client, net.server.ip, 8080) as c:
        assert c is not None and echoes(c)
    assert echoes(udp_socket(net.client, net.server.ip, 60002))


def test_tcp_knock_one_connection_which_outlives_the_window(stack):
    net = stack.net
    stack.knock("open 22")
    knocked = time.monotonic()
    stack.audit("tcp", 22)
    first = tcp_connect(net.client, net.server.ip, 22)
    assert first is not None and echoes(first)
    assert tcp_connect(net.client, net.server.ip, 22) is None  # a second one: dropped
    with tcp_connect(net.client, net.server.ip, 8080) as c:  # unprotected: untouched
        assert c is not None and echoes(c)
    time.sleep(max(0.0, knocked + OPEN_SECONDS + 0.5 - time.monotonic()))
    assert echoes(first, b"after the window")  # established outlives the timeout
    first.close()
    assert tcp_connect(net.client, net.server.ip, 22) is None


def test_udp_knock_one_flow_which_outlives_the_window(stack):
    net = stack.net
    stack.knock("open 60001/udp")
    knocked = time.monotonic()
    stack.audit("udp", 60001)
    first = udp_socket(net.client, net.server.ip, 60001)
    assert echoes(first)
    assert not echoes(udp_socket(net.client, net.server.ip, 60001))  # another flow: dropped
    assert echoes(udp_socket(net.client, net.server.ip, 60002))  # unprotected: untouched
    time.sleep(max(0.0, knocked + OPEN_SECONDS + 0.5 - time.monotonic()))
    assert echoes(first, b"after the window")
    assert not echoes(udp_socket(net.client, net.server.ip, 60001))


def test_unused_knocks_expire_and_the_ports_close_again(stack):
    net = stack.net
    stack.knock("open 22")
    stack.knock("open 60001/udp")
    for _ in range(50):  # up to 5 s; the kernel alone removes them
        if not elements(net.server, "knocked4"):
            break
        time.sleep(0.1)
    assert elements(net.server, "knocked4") == []
    assert tcp_connect(net.client, net.server.ip, 22) is None
    assert not echoes(udp_socket(net.client, net.server.ip, 60001))

"""Knock protocol v2 over IPv6 only and over dual stack, the whole stack real:

    client ns  fd00:..::1 (+ 198.18.n.1)         server ns  fd00:..::2 (+ 198.18.n.2)
      stranger fd00:..::3 (+ 198.18.n.3)           table inet gnocchi: tcp 22 (8080 open)
      gnocchi-knock, a profile with the            the root helper (--open-seconds 3)
      server's public key; "server.test"           gnocchi serve (user nobody, v1 = false,
      names the server's addresses                 no server_addresses), TCP echo on 22, 8080

Nothing on either side names an address: the client resolves server.test as ssh
would, and the server takes the address each knock was sent to. A `--proxy`
knock (ssh's ProxyCommand) knocks the address it then connects to; a plain knock
knocks the address ssh tries first; a stranger beside the client stays out on
both families.
"""

from __future__ import annotations

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
    events,
    gnocchi_cli,
    load_table,
    stop,
    tcp_connect,
)

OPEN_SECONDS = 3


def cli(*args) -> str:
    return gnocchi_cli(*args, check=True).stdout.strip()


class Stack:
    def __init__(self, net: Net, d: Path):
        self.net, self.d = net, d
        cli("keygen", "--private", d / "private.key")
        self.port = int(cli("port", "--private", d / "private.key"))
        self.public = cli("pubkey", "--private", d / "private.key")
        load_table(net.server, d, knock_port=self.port)
        self.helper = Helper(net.server, open_seconds=OPEN_SECONDS)
        cli("keygen", "--client", d / "client.key")
        client_public = cli("pubkey", d / "client.key")
        nobody = pwd.getpwnam("nobody")
        (d / "state").mkdir()
        counters.create(str(d / "state"))
        for path in (d / "state", d / "state" / "counters", d / "private.key"):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        (d / "gnocchi.toml").write_text(
            f'v1 = false\nprivate_key_file = "{d}/private.key"\nstate_dir = "{d}/state"\n'
            f'helper_socket = "{self.helper.path}"\n'
            f'[clients.alice]\npublic_key = "{client_public}"\nallow = ["22/tcp"]\n'
        )
        (d / "knock.toml").write_text(
            f'[profiles.work]\nhost = "server.test"\nserver_public_key = "{self.public}"\n'
            f'client_key_file = "client.key"\nrequest = "open 22"\n'
        )
        shutil.copytree(
            REPO / "gnocchi", d / "gnocchi", ignore=shutil.ignore_patterns("__pycache__")
        )
        names = ([net.server.ip] if net.ipv4 else []) + [net.server.ip6]
        net.client.name_hosts({"server.test": names})
        self.stranger6 = net.client.add_address(net.client.ip6.replace("::1", "::3"))
        self.stranger4 = (
            net.client.add_address(net.client.ip.rsplit(".", 1)[0] + ".3") if net.ipv4 else None
        )
        self.log = d / "verifier.log"
        with open(self.log, "w") as log:
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
                    f"[::]:{self.port}",
                ],
                cwd=d,
                stdout=log,
                stderr=log,
            )
        for _ in range(100):
            if "started" in self.log.read_text() or self.verifier.poll() is not None:
                break
            time.sleep(0.1)
        assert "started" in self.log.read_text(), self.log.read_text()

    def knock(self, *args, stdin: bytes = b"") -> subprocess.CompletedProcess:
        return subprocess.run(
            self.net.client.argv(
                [
                    PYTHON,
                    "-m",
                    "gnocchi.client.knock",
                    "--config",
                    str(self.d / "knock.toml"),
                    "--state-dir",
                    str(self.d / "client-state"),
                    "-v",
                    *args,
                ]
            ),
            cwd=REPO,
            input=stdin,
            capture_output=True,
            timeout=60,
        )

    def ssh_order(self) -> list[str]:
        """The addresses of server.test in the order ssh tries them (getaddrinfo's)."""
        out = self.net.client.run(
            [
                PYTHON,
                "-c",
                "import socket; print(*dict.fromkeys(a[4][0] "
                "for a in socket.getaddrinfo('server.test', 22, "
                "type=socket.SOCK_STREAM)))",
            ]
        ).stdout
        return out.split()

    def accepted_sources(self, count: int) -> list[str]:
        for _ in range(50):
            found = [
                e["GNOCCHI_SOURCE_IP"]
                for e in events(self.log.read_text())
                if e.get("GNOCCHI_EVENT") == "accepted"
            ]
            if len(found) >= count:
                return found
            time.sleep(0.1)
        pytest.fail(f"{count} accepted knocks expected:\n{self.log.read_text()}")

    def close(self):
        stop(self.verifier)
        self.helper.close()


@pytest.fixture(params=["ipv6-only", "dual-stack"])
def stack(request):
    d = Path(tempfile.mkdtemp(prefix="gnocchi-families-"))
    os.chmod(d, 0o755)
    try:
        with Net("fam", ipv4=request.param == "dual-stack") as net:
            s = Stack(net, d)
            try:
                with EchoServices(net.server, tcp_ports=(22, 8080)):
                    yield s
            finally:
                s.close()
    finally:
        shutil.rmtree(d, ignore_errors=True)


def strangers_stay_out(s: Stack) -> None:
    net = s.net
    for server_ip, stranger in ((net.server.ip6, s.stranger6), (net.server.ip, s.stranger4)):
        if stranger:
            # The stranger reaches the server (8080 is not guarded; a fresh link may
            # take a moment for neighbour discovery), but not port 22.
            for _ in range(20):
                if reachable := tcp_connect(net.client, server_ip, 8080, source=stranger):
                    break
            assert reachable is not None and echoes(reachable), stranger
            reachable.close()
            assert tcp_connect(net.client, server_ip, 22, source=stranger) is None, stranger


def test_ssh_like_proxy_knock_gets_in_over_the_family_ssh_uses(stack):
    s, net = stack, stack.net
    strangers_stay_out(s)
    assert tcp_connect(net.client, net.server.ip6, 22) is None  # no knock yet
    first = s.ssh_order()[0]
    out = s.knock("--proxy", "server.test", "22", stdin=b"SSH-2.0-hello\r\n")
    assert out.returncode == 0, out.stderr.decode() + s.log.read_text()
    assert out.stdout == b"SSH-2.0-hello\r\n"  # through the echo service, relayed
    assert f"knocked {first} port {s.port} (v2, server public key".encode() in out.stderr
    [source] = s.accepted_sources(1)
    assert source == (net.client.ip6 if ":" in first else net.client.ip)
    assert b"attempt 1/3" in out.stderr and b"attempt 2/3" not in out.stderr
    strangers_stay_out(s)


def test_a_plain_knock_opens_the_family_ssh_tries_first(stack):
    """One knock, to the address ssh tries first; not one per family: two knocks can
    arrive out of order (a first IPv6 datagram waits for neighbour discovery), and the
    later counter would make the earlier knock a replay."""
    s, net = stack, stack.net
    first = s.ssh_order()[0]
    out = s.knock("work")
    assert out.returncode == 0 and out.stderr.count(b"knocked ") == 1, out.stderr
    mine = net.client.ip6 if ":" in first else net.client.ip
    assert s.accepted_sources(1) == [mine]
    strangers_stay_out(s)
    conn = tcp_connect(net.client, first, 22)
    assert conn is not None and echoes(conn), first
    conn.close()
    assert tcp_connect(net.client, first, 22) is None  # one connection per knock
    for other in {net.server.ip6, net.server.ip if net.ipv4 else first} - {first}:
        assert tcp_connect(net.client, other, 22) is None  # the other family: not knocked


def test_minus_4_and_6_knock_one_family_only(stack):
    s, net = stack, stack.net
    out = s.knock("-6", "work")
    assert out.returncode == 0 and out.stderr.count(b"knocked ") == 1, out.stderr
    assert s.accepted_sources(1) == [net.client.ip6]
    refused = s.knock("-4", "work")
    if not net.ipv4:
        assert refused.returncode == 1 and b"server.test has no IPv4 address" in refused.stderr
    else:
        assert refused.returncode == 0
        assert s.accepted_sources(2)[1] == net.client.ip

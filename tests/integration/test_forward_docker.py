"""The real Docker (Debian's docker.io) publishing a container's port on a server
that gnocchi guards: its own dockerd, run in the server's network namespace (and a
mount namespace of its own), with its data in a temporary directory.

    client ns 198.18.n.1 (and .3, a stranger)     server ns .2: table inet gnocchi
                                                    ([protect] tcp 8080), dockerd,
                                                    docker0 198.19.n.1/24
                                                  container (busybox httpd on 80 and 81)
                                                    -p 8080:80 (protected) -p 8081:81

Over IPv4 Docker DNATs a published port (the forward path); over IPv6, with its
default userland proxy, docker-proxy listens on the port on the server itself (the
input path). Both are closed before a knock and open once after; the unprotected
port stays open to everyone; and all of it holds again after dockerd restarts and
programs its rules anew. Skipped where docker.io (or busybox-static, whose binary is
the container's image) is not installed: tests/run installs them only where
installing cannot start a daemon on the machine itself.
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gnocchi.admin import nft_table
from support import STATUS, TABLE_FILE, Helper, Keys, Net, inside, request, stop, write_config

OK = STATUS["OK"]
BUSYBOX = "/bin/busybox"
PUBLISHED, OPEN = 8080, 8081

pytestmark = pytest.mark.skipif(
    shutil.which("dockerd") is None or not os.path.exists(BUSYBOX),
    reason="needs Debian's docker.io and busybox-static (apt install docker.io busybox-static; "
    "the test runs its own dockerd in a namespace, never the machine's)",
)


class Docker:
    """dockerd in host's network namespace and a mount namespace of its own. Not `ip netns
    exec`, which mounts a fresh /sys over the cgroup hierarchies dockerd needs."""

    def __init__(self, host, root: Path, bridge: str):
        self.host, self.root, self.bridge = host, root, bridge
        self.sock = root / "docker.sock"
        self.env = dict(os.environ, DOCKER_HOST=f"unix://{self.sock}")
        self.pids: list[int] = []  # the containers' processes, to be sure they end
        self.start()

    def start(self):
        script = (
            'mount --make-rprivate / && exec dockerd --data-root "$1/data" '
            '--exec-root "$1/exec" --pidfile "$1/dockerd.pid" -H "unix://$1/docker.sock" '
            '--containerd-namespace gnocchi-test --storage-driver vfs --bip "$2" '
            "--ip6tables=false --log-level warn"
        )
        with open(self.root / "dockerd.log", "ab") as log:  # the daemon keeps its own copy
            self.proc = subprocess.Popen(
                [
                    "nsenter",
                    f"--net=/run/netns/{self.host.name}",
                    "unshare",
                    "-m",
                    "sh",
                    "-c",
                    script,
                    "sh",
                    str(self.root),
                    self.bridge,
                ],
                stdout=log,
                stderr=log,
            )
        deadline = time.monotonic() + 30
        while self.docker("info", check=False).returncode != 0:
            assert self.proc.poll() is None, (self.root / "dockerd.log").read_text()
            assert time.monotonic() < deadline, "dockerd did not start in 30 s"
            time.sleep(0.2)

    def docker(self, *args: str, check=True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(
            ["docker", *args],
            env=self.env,
            check=check,
            capture_output=True,
            text=True,
            timeout=120,
            **kw,
        )

    def image(self) -> str:
        """A one-binary image: busybox, its httpd serving an empty directory."""
        tree = self.root / "image"
        (tree / "bin").mkdir(parents=True)
        (tree / "www").mkdir()
        shutil.copy(BUSYBOX, tree / "bin" / "busybox")
        for name in ("sh", "httpd", "sleep"):
            (tree / "bin" / name).symlink_to("busybox")
        subprocess.run(
            ["tar", "-C", str(tree), "-cf", str(self.root / "image.tar"), "."], check=True
        )
        self.docker("import", str(self.root / "image.tar"), "gnocchi-test/busybox:1")
        return "gnocchi-test/busybox:1"

    def run(self, image: str) -> None:
        self.docker(
            "run",
            "-d",
            "--name",
            "web",
            "--restart",
            "always",
            "-p",
            f"{PUBLISHED}:80",
            "-p",
            f"{OPEN}:81",
            image,
            "/bin/sh",
            "-c",
            "httpd -p 81 -h /www && exec httpd -f -p 80 -h /www",
        )
        self.wait_running()

    def wait_running(self) -> None:
        deadline = time.monotonic() + 30
        while True:
            state = json.loads(self.docker("inspect", "web").stdout)[0]["State"]
            if state.get("Running") and state.get("Pid"):
                self.pids.append(state["Pid"])
                return
            assert time.monotonic() < deadline, f"the container did not run: {state}"
            time.sleep(0.2)

    def restart(self) -> None:
        """dockerd stops and starts again: it removes its rules, then makes them anew (and
        starts the container again, its restart policy being always)."""
        self.docker("stop", "-t", "1", "web")
        self.stop_daemon()
        self.start()
        self.wait_running()

    def stop_daemon(self) -> None:
        """SIGTERM, and time to stop its containerd too (a second dockerd cannot start
        while the first one's runs)."""
        self.proc.terminate()
        try:
            self.proc.wait(30)
        except subprocess.TimeoutExpired:
            stop(self.proc)

    def close(self) -> None:
        self.docker("rm", "-f", "web", check=False)
        if self.proc.poll() is None:
            self.stop_daemon()
        for pid in self.pids:
            try:
                os.kill(pid, 9)
            except ProcessLookupError:
                pass


@pytest.fixture(scope="module")
def docker_host(tmp_path_factory):
    d = tmp_path_factory.mktemp("docker")
    with Net("dk") as net:
        n = int(net.client.ip.split(".")[2])
        net.stranger = (f"198.18.{n}.3", f"fd00:198:18:{n:x}::3")
        net.client.run(["ip", "addr", "add", f"{net.stranger[0]}/24", "dev", "gveth0"])
        net.client.run(
            [
                "ip",
                "-6",
                "addr",
                "add",
                f"{net.stranger[1]}/64",
                "dev",
                "gveth0",
                "nodad",
                "preferred_lft",
                "0",
            ]
        )
        config = write_config(d, Keys(d), "/nonexistent", extra=f"[protect]\ntcp = [{PUBLISHED}]\n")
        with inside(net.server):
            nft_table.load_wanted(nft_table.wanted(str(config), str(TABLE_FILE)))
        # A short directory of its own: unix socket paths are at most 107 bytes.
        root = Path(tempfile.mkdtemp(prefix="gnocchi-dk-"))
        docker = Docker(net.server, root, f"198.19.{n}.1/24")
        helper = Helper(net.server)
        try:
            docker.run(docker.image())
            net.docker, net.helper = docker, helper
            yield net
        finally:
            helper.close()
            docker.close()
            shutil.rmtree(root, ignore_errors=True)


def http(net, src: str, dst: str, port: int) -> bool:
    """An HTTP request from src that the container's httpd answers."""
    with inside(net.client):
        s = socket.socket(socket.AF_INET6 if ":" in dst else socket.AF_INET)
    with s:
        s.bind((src, 0))
        s.settimeout(0.5)
        try:
            s.connect((dst, port))
            s.sendall(b"GET / HTTP/1.0\r\n\r\n")
            return s.recv(9).startswith(b"HTTP/1.")
        except OSError:
            return False


def gnocchi_table(net) -> list:
    out = json.loads(net.server.nft("-j", "list", "table", "inet", "gnocchi").stdout)
    return [
        o
        for o in out["nftables"]
        if o.get("set", {}).get("name") not in ("knocked4", "knocked6", "knockers6")
    ]


def closed_open_once_closed(net, v: int) -> None:
    i = 0 if v == 4 else 1
    client, stranger = (net.client.ip, net.client.ip6)[i], net.stranger[i]
    server = (net.server.ip, net.server.ip6)[i]
    assert not http(net, client, server, PUBLISHED)
    assert not http(net, stranger, server, PUBLISHED)
    assert net.helper.send(request(client, PUBLISHED)) == [OK]
    assert not http(net, stranger, server, PUBLISHED)
    assert http(net, client, server, PUBLISHED), "the knocked client got no answer"
    assert not http(net, client, server, PUBLISHED), "a second connection"
    assert http(net, stranger, server, OPEN), "the unprotected published port"


def test_a_port_the_real_docker_publishes_opens_once_per_knock_and_again_after_a_restart(
    docker_host,
):
    net = docker_host
    before = gnocchi_table(net)
    rules = net.server.nft("list", "table", "ip", "nat").stdout
    assert f"dport {PUBLISHED}" in rules and "dnat to" in rules, rules  # Docker's DNAT
    closed_open_once_closed(net, 4)  # DNATed: the forward path
    closed_open_once_closed(net, 6)  # docker-proxy on the server: the input path
    net.docker.restart()
    assert f"dport {PUBLISHED}" in net.server.nft("list", "table", "ip", "nat").stdout
    closed_open_once_closed(net, 4)
    assert gnocchi_table(net) == before, "Docker changed gnocchi's table"

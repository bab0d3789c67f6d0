"""Test hosts in network namespaces of our own (never the root namespace).

A Net is a pair of hosts, client and server, joined by a veth pair and
addressed from 198.18.0.0/15 and fd00:198:18::/48 (ipv4=False: IPv6 only); a
Lan is a control host and several hosts on one bridged link. Everything is
removed on exit, even when the test fails. Commands run inside with
`net.server.run([...])`; `inside(host)` makes sockets there from this
process. `net.client.add_address(ip)` gives a host a second address (a
stranger beside it); `net.client.name_hosts({...})` gives names to the
commands run in it (/etc/netns/NAME/hosts, which `ip netns exec` puts over
/etc/hosts for them, removed with the Net).
"""

from __future__ import annotations

import ctypes
import itertools
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

_serial = itertools.count(1)
_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


def sh(*argv: str, check: bool = True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


@dataclass
class Host:
    name: str  # namespace name
    ip: str  # IPv4 address on the veth
    ip6: str  # IPv6 address on the veth

    def argv(self, argv) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, argv, check=True, **kw) -> subprocess.CompletedProcess:
        return subprocess.run(self.argv(argv), check=check, text=True, capture_output=True, **kw)

    def popen(self, argv, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), **kw)

    def nft(self, *args: str, check=True) -> subprocess.CompletedProcess:
        return self.run(["nft", *args], check=check)

    def add_address(self, ip: str) -> str:
        """A second address, never the kernel's own choice of source (IPv4: secondary;
        IPv6: deprecated); a socket bound to it sends from it."""
        dev = "gveth0" if self.name.endswith("c") else "gveth1"
        extra = ["nodad", "preferred_lft", "0"] if ":" in ip else []
        self.run(["ip", "addr", "add", f"{ip}/{64 if ':' in ip else 24}", "dev", dev, *extra])
        return ip

    def name_hosts(self, names: dict[str, list[str]]) -> None:
        """Commands run in this host resolve each name to its addresses, in order."""
        directory = Path("/etc/netns") / self.name
        directory.mkdir(parents=True, exist_ok=True)
        (directory / "hosts").write_text(
            "127.0.0.1 localhost\n::1 localhost\n"
            + "".join(f"{ip} {name}\n" for name, ips in names.items() for ip in ips)
        )

    # What was delivered, for a test that floods: on a busy machine a datagram
    # may be dropped on the way, so a test counts what arrived, not what it sent.

    def udp(self) -> dict[str, int]:
        """This namespace's Udp counters (/proc/net/snmp): InDatagrams counts the
        datagrams applications read, RcvbufErrors those a full socket buffer dropped."""
        lines = [
            line.split()
            for line in self.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
            if line.startswith("Udp:")
        ]
        return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))

    def udp_queued(self, port: int) -> int:
        """Bytes waiting, not yet read, in this namespace's UDP sockets bound to port."""
        text = self.run(["cat", "/proc/net/udp", "/proc/net/udp6"]).stdout
        rows = [line.split() for line in text.splitlines() if not line.lstrip().startswith("sl")]
        return sum(
            int(row[4].split(":")[1], 16)
            for row in rows
            if int(row[1].rsplit(":", 1)[1], 16) == port
        )

    def tx_dropped(self, dev: str) -> int:
        """What dev dropped sending: for a veth, the datagrams its peer could not take."""
        return int(self.run(["cat", f"/sys/class/net/{dev}/statistics/tx_dropped"]).stdout)


class Net:
    """Two namespaces, `client` and `server`, joined by one veth link."""

    def __init__(self, tag: str = "t", ipv4: bool = True):
        self.ipv4 = ipv4
        n = (os.getpid() * 7 + next(_serial)) % 250 + 1
        self.prefix = f"gn{tag}{os.getpid()}x{n}"
        self.client = Host(f"{self.prefix}c", f"198.18.{n}.1", f"fd00:198:18:{n:x}::1")
        self.server = Host(f"{self.prefix}s", f"198.18.{n}.2", f"fd00:198:18:{n:x}::2")

    def __enter__(self) -> Net:
        try:
            for host in (self.client, self.server):
                sh("ip", "netns", "add", host.name)
                host.run(["ip", "link", "set", "lo", "up"])
            sh(
                "ip",
                "link",
                "add",
                "gveth0",
                "netns",
                self.client.name,
                "type",
                "veth",
                "peer",
                "name",
                "gveth1",
                "netns",
                self.server.name,
            )
            for host, dev in ((self.client, "gveth0"), (self.server, "gveth1")):
                if self.ipv4:
                    host.run(["ip", "addr", "add", f"{host.ip}/24", "dev", dev])
                host.run(["ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", dev, "nodad"])
                host.run(["ip", "link", "set", dev, "up"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for host in (self.client, self.server):
            # Killing what still runs inside lets the namespace go away for real.
            pids = sh("ip", "netns", "pids", host.name, check=False).stdout.split()
            for pid in pids:
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", host.name, check=False)
            shutil.rmtree(Path("/etc/netns") / host.name, ignore_errors=True)
        try:
            os.rmdir("/etc/netns")  # if name_hosts made it and nothing else is in it
        except OSError:
            pass


class Lan:
    """A control host and `count` hosts on one /24, each in a namespace of its own, joined
    by a bridge in the control host's namespace: every host reaches every other."""

    def __init__(self, tag: str, count: int):
        n = (os.getpid() * 7 + next(_serial)) % 250 + 1
        self.prefix = f"gn{tag}{os.getpid()}x{n}"
        self.control = Host(f"{self.prefix}c", f"198.18.{n}.1", f"fd00:198:18:{n:x}::1")
        self.hosts = [
            Host(f"{self.prefix}h{i}", f"198.18.{n}.{i + 2}", f"fd00:198:18:{n:x}::{i + 2:x}")
            for i in range(count)
        ]

    def __enter__(self) -> Lan:
        try:
            for host in (self.control, *self.hosts):
                sh("ip", "netns", "add", host.name)
                host.run(["ip", "link", "set", "lo", "up"])
            self.control.run(["ip", "link", "add", "gbr0", "type", "bridge"])
            self.control.run(["ip", "addr", "add", f"{self.control.ip}/24", "dev", "gbr0"])
            self.control.run(
                ["ip", "-6", "addr", "add", f"{self.control.ip6}/64", "dev", "gbr0", "nodad"]
            )
            self.control.run(["ip", "link", "set", "gbr0", "up"])
            for i, host in enumerate(self.hosts):
                sh(
                    "ip",
                    "link",
                    "add",
                    f"gport{i}",
                    "netns",
                    self.control.name,
                    "type",
                    "veth",
                    "peer",
                    "name",
                    "gveth1",
                    "netns",
                    host.name,
                )
                self.control.run(["ip", "link", "set", f"gport{i}", "master", "gbr0", "up"])
                host.run(["ip", "addr", "add", f"{host.ip}/24", "dev", "gveth1"])
                host.run(["ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", "gveth1", "nodad"])
                host.run(["ip", "link", "set", "gveth1", "up"])
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for host in (self.control, *self.hosts):
            pids = sh("ip", "netns", "pids", host.name, check=False).stdout.split()
            for pid in pids:
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", host.name, check=False)


@contextmanager
def inside(host: Host):
    """Run the block in host's network namespace (this thread only).
    Sockets made in the block stay in that namespace after it ends."""
    with open(f"/run/netns/{host.name}") as there, open("/proc/thread-self/ns/net") as home:
        if _libc.setns(there.fileno(), CLONE_NEWNET) != 0:
            raise OSError(ctypes.get_errno(), f"setns into {host.name}")
        try:
            yield
        finally:
            if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), "setns back home")

"""The bench's hosts and instruments: two network namespaces joined by one
veth link, and the clocks, counters and probes the comparison reads.

    client namespace                       server namespace
    198.18.242.1  knocks, TCP connects     198.18.242.2  the daemons, the
    198.18.242.3  floods (another address) protected TCP port 22
    198.18.242.4  a sink (client start)    route 198.18.0.0/15 on the link, so
    198.18.243.1-240  sustained knocks     any source of the range arrives as
    198.19.0.0/16  spoofed flood sources   from a neighbour (rp_filter or not)

Nothing here touches the root namespace's network or firewall: every socket
the bench opens is made inside one of these namespaces (setns on one thread),
and every process runs in one through `ip netns exec`. close() kills what
still runs inside and deletes both namespaces.
"""

from __future__ import annotations

import ctypes
import os
import select
import socket
import statistics
import subprocess
import threading
import time
from contextlib import contextmanager

CLONE_NEWNET = 0x40000000
NETLINK_NETFILTER = 12
NFNLGRP_NFTABLES = 7  # nf_tables ruleset change notifications
PREFIX = "gnbench"
SUBNET = "198.18.242"
SOURCES_SUBNET = "198.18.243"  # the sustained row's source addresses, .1 up
SOURCES = 240
SPOOFED = "198.19.0.0/16"  # raw-socket floods' sources (bench/blast.py spoof:)
_libc = ctypes.CDLL(None, use_errno=True)


def read(path: str) -> str:
    with open(path) as f:
        return f.read()


def run(*argv, check=True, **kw) -> subprocess.CompletedProcess:
    return subprocess.run(argv, check=check, text=True, capture_output=True, **kw)


class Host:
    def __init__(self, name: str, ip: str):
        self.name, self.ip = name, ip

    def argv(self, argv) -> list[str]:
        return ["ip", "netns", "exec", self.name, *argv]

    def run(self, *argv, check=True, **kw) -> subprocess.CompletedProcess:
        return run(*self.argv(argv), check=check, **kw)

    def popen(self, argv, **kw) -> subprocess.Popen:
        return subprocess.Popen(self.argv(argv), **kw)

    @contextmanager
    def inside(self):
        """Run the block in this namespace (this thread only); sockets made
        in the block stay in it."""
        with open(f"/run/netns/{self.name}") as there, open("/proc/thread-self/ns/net") as home:
            if _libc.setns(there.fileno(), CLONE_NEWNET) != 0:
                raise OSError(ctypes.get_errno(), f"setns into {self.name}")
            try:
                yield
            finally:
                if _libc.setns(home.fileno(), CLONE_NEWNET) != 0:
                    raise OSError(ctypes.get_errno(), "setns back home")

    def socket(self, family=socket.AF_INET, kind=socket.SOCK_DGRAM, proto=0) -> socket.socket:
        with self.inside():
            return socket.socket(family, kind, proto)

    def udp_counters(self) -> dict[str, int]:
        """This namespace's Udp line of /proc/net/snmp. InDatagrams counts
        datagrams an application read (udp_recvmsg), RcvbufErrors those the
        full socket buffer dropped."""
        with self.inside():
            lines = [
                line.split()
                for line in read("/proc/thread-self/net/snmp").splitlines()
                if line.startswith("Udp:")
            ]
        return dict(zip(lines[0][1:], map(int, lines[1][1:]), strict=True))


def remove_stale() -> None:
    """Namespaces left by a bench run that was killed (its pid is gone)."""
    for line in run("ip", "netns", "list").stdout.splitlines():
        name = line.split()[0] if line.strip() else ""
        pid = name[len(PREFIX) : -1]
        if name.startswith(PREFIX) and pid.isdigit() and not os.path.exists(f"/proc/{pid}"):
            kill_inside(name)
            run("ip", "netns", "del", name, check=False)


def kill_inside(name: str) -> None:
    for pid in run("ip", "netns", "pids", name, check=False).stdout.split():
        try:
            os.kill(int(pid), 9)
        except (ProcessLookupError, ValueError):
            pass


class Lab:
    def __init__(self):
        tag = f"{PREFIX}{os.getpid()}"
        self.client = Host(f"{tag}c", f"{SUBNET}.1")
        self.server = Host(f"{tag}s", f"{SUBNET}.2")
        self.flood_ip = f"{SUBNET}.3"
        self.sink_ip = f"{SUBNET}.4"
        self.sources = [f"{SOURCES_SUBNET}.{i}" for i in range(1, SOURCES + 1)]

    def open(self) -> Lab:
        remove_stale()
        try:
            for host in (self.client, self.server):
                run("ip", "netns", "add", host.name)
                host.run("ip", "link", "set", "lo", "up")
            run(
                "ip",
                "link",
                "add",
                "gb0",
                "netns",
                self.client.name,
                "type",
                "veth",
                "peer",
                "name",
                "gb1",
                "netns",
                self.server.name,
            )
            for ip in (self.client.ip, self.flood_ip, self.sink_ip):
                self.client.run("ip", "addr", "add", f"{ip}/24", "dev", "gb0")
            self.client.run(
                "ip",
                "-batch",
                "-",
                input="".join(f"addr add {ip}/32 dev gb0\n" for ip in self.sources),
            )
            self.server.run("ip", "addr", "add", f"{self.server.ip}/24", "dev", "gb1")
            for host, dev in ((self.client, "gb0"), (self.server, "gb1")):
                host.run("ip", "link", "set", dev, "up")
            self.server.run("ip", "route", "add", "198.18.0.0/15", "dev", "gb1")
        except BaseException:
            self.close()
            raise
        return self

    def close(self) -> None:
        for host in (self.client, self.server):
            kill_inside(host.name)  # the namespace only goes away once empty
            run("ip", "netns", "del", host.name, check=False)


# ---- process figures ----------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """utime + stime of pid and of its children it has waited for (fwknopd
    runs iptables as children), in seconds."""
    fields = read(f"/proc/{pid}/stat").rsplit(")", 1)[1].split()
    utime, stime, cutime, cstime = (int(x) for x in fields[11:15])
    return (utime + stime + cutime + cstime) / os.sysconf("SC_CLK_TCK")


def memory_kib(pid: int) -> tuple[int, int]:
    """(VmRSS, VmHWM) in KiB: resident now, and the peak."""
    values = {}
    for line in read(f"/proc/{pid}/status").splitlines():
        key, _, rest = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            values[key] = int(rest.split()[0])
    return values["VmRSS"], values["VmHWM"]


def fs_type(path: str) -> str:
    """The filesystem type holding path (from /proc/self/mountinfo, longest mount point)."""
    path, best, kind = os.path.realpath(path), "", "?"
    for line in read("/proc/self/mountinfo").splitlines():
        left, _, right = line.partition(" - ")
        mount = left.split()[4]
        if (path == mount or path.startswith(mount.rstrip("/") + "/")) and len(mount) >= len(best):
            best, kind = mount, right.split()[0]
    return kind


# ---- the firewall opening, seen from both ends ------------------------------------------


class RulesetWatch:
    """nf_tables change notifications from the server namespace: a knocked
    element or an ACCEPT rule appears, and this wakes within microseconds,
    so a connect can be tried at once instead of on a coarse poll."""

    def __init__(self, host: Host):
        with host.inside():
            self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW, NETLINK_NETFILTER)
        self.sock.bind((0, 1 << (NFNLGRP_NFTABLES - 1)))
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 20)

    def drain(self) -> None:
        while select.select([self.sock], [], [], 0)[0]:
            try:
                self.sock.recv(65536)
            except OSError:  # ENOBUFS after an overflow: nothing to keep anyway
                pass

    def close(self) -> None:
        self.sock.close()


class Service:
    """The protected service: a TCP listener on port 22 in the server
    namespace that accepts and closes (the handshake is the kernel's)."""

    def __init__(self, host: Host, port: int = 22):
        with host.inside():
            self.sock = socket.create_server(("0.0.0.0", port), backlog=1024)
        self.sock.settimeout(0.2)
        self.stop = threading.Event()
        self.thread = threading.Thread(target=self._accept, daemon=True)
        self.thread.start()

    def _accept(self):
        while not self.stop.is_set():
            try:
                conn, _ = self.sock.accept()
                conn.close()
            except OSError:
                continue

    def close(self):
        self.stop.set()
        self.thread.join()
        self.sock.close()


class Prober:
    """TCP connects from the client's address to the protected port."""

    ATTEMPT = 0.02  # s: a SYN the firewall let in is answered in far less on a veth

    def __init__(self, lab: Lab, watch: RulesetWatch, port: int = 22):
        self.lab, self.watch, self.port = lab, watch, port

    def _connecting(self) -> socket.socket:
        s = self.lab.client.socket(socket.AF_INET, socket.SOCK_STREAM)
        s.bind((self.lab.client.ip, 0))
        s.setblocking(False)
        s.connect_ex((self.lab.server.ip, self.port))
        return s

    def closed(self) -> bool:
        """The port drops a connect from the client (the firewall is armed)."""
        with self._connecting() as s:
            return not select.select([], [s], [], 0.1)[1]

    def until_open(self, since: float, timeout: float) -> float | None:
        """Seconds from `since` until a TCP connect worked, or None after
        timeout. One SYN in flight at a time: a new one at every ruleset
        change, or after ATTEMPT without an answer (the last was dropped)."""
        deadline = since + timeout
        while (now := time.monotonic()) < deadline:
            with self._connecting() as s:  # closed before a dropped SYN is retransmitted
                changed, done, _ = select.select(
                    [self.watch.sock], [s], [], min(self.ATTEMPT, deadline - now)
                )
                if done and s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    return time.monotonic() - since
            if changed:
                self.watch.drain()
        return None


# ---- numbers --------------------------------------------------------------------------


def summary(values) -> tuple[float, float, float] | None:
    """(median, min, max), or None without values."""
    values = [v for v in values if v is not None]
    if not values:
        return None
    return statistics.median(values), min(values), max(values)

"""What the integration tests share: sockets opened inside a test namespace,
the real root helper started the way systemd starts it, tiny echo services,
and requests sent to the helper as another user.

Every socket here lives in a namespace a test made (tests/netns.py); nothing
touches the root namespace's network or firewall.
"""
from __future__ import annotations

import ctypes
import ipaddress
import json
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from contextlib import contextmanager
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"  # the distribution's nacl/nftables/systemd bindings
TABLE_FILE = REPO / "nft" / "gnocchi.nft"
CONNECT_TIMEOUT = 0.5  # below the first SYN retransmit (1 s): one SYN per try
REQUEST = struct.Struct("!BBBBH16s")  # docs/contracts.md, written out again on purpose
STATUS = {name: i for i, name in enumerate((
    "OK", "BAD_PEER", "BAD_LENGTH", "BAD_VERSION", "BAD_ADDRESS",
    "NOT_PROTECTED", "BAD_PROTO", "RATE_LIMITED", "NFT_FAILED"))}

_libc = ctypes.CDLL(None, use_errno=True)
CLONE_NEWNET = 0x40000000


@contextmanager
def inside(host):
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


def family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def tcp_connect(host, ip: str, port: int) -> socket.socket | None:
    """A connected socket from host, or None if the SYN went unanswered."""
    with inside(host):
        s = socket.socket(family_of(ip), socket.SOCK_STREAM)
    s.settimeout(CONNECT_TIMEOUT)
    try:
        s.connect((ip, port))
    except (TimeoutError, socket.timeout):
        s.close()
        return None
    return s


def echoes(sock: socket.socket, data: bytes = b"hello") -> bool:
    """True when the service behind sock (TCP or connected UDP) echoes data."""
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.send(data)
        return sock.recv(100) == data
    except (TimeoutError, socket.timeout):
        return False


def udp_socket(host, ip: str, port: int) -> socket.socket:
    """A UDP socket in host, connected (one source port = one conntrack flow)."""
    with inside(host):
        s = socket.socket(family_of(ip), socket.SOCK_DGRAM)
    s.connect((ip, port))
    return s


class EchoServices:
    """TCP and UDP echo servers on the given ports in host, on all addresses
    (IPv4 and IPv6), each served by a daemon thread until close()."""

    def __init__(self, host, tcp_ports=(), udp_ports=()):
        self.stop = threading.Event()
        self.socks = []
        with inside(host):
            for port in tcp_ports:
                s = socket.create_server(("::", port), family=socket.AF_INET6, dualstack_ipv6=True)
                self._serve(self._tcp, s)
            for port in udp_ports:
                s = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
                s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
                s.bind(("::", port))
                self._serve(self._udp, s)

    def _serve(self, loop, s):
        s.settimeout(0.2)
        self.socks.append(s)
        threading.Thread(target=loop, args=(s,), daemon=True).start()

    def _tcp(self, listener):
        while not self.stop.is_set():
            try:
                conn, _ = listener.accept()
            except (TimeoutError, socket.timeout, OSError):
                continue
            self._serve(self._echo_stream, conn)

    def _echo_stream(self, conn):
        while not self.stop.is_set():
            try:
                data = conn.recv(100)
            except (TimeoutError, socket.timeout):
                continue
            except OSError:
                return
            if not data:
                return
            conn.sendall(data)

    def _udp(self, s):
        while not self.stop.is_set():
            try:
                data, peer = s.recvfrom(100)
            except (TimeoutError, socket.timeout, OSError):
                continue
            s.sendto(data, peer)

    def close(self):
        self.stop.set()
        time.sleep(0.3)  # the threads notice within their 0.2 s timeouts
        for s in self.socks:
            s.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def load_table(host, directory: Path, udp_ports=(), tcp_ports=(22,)) -> Path:
    """Load nft/gnocchi.nft into host, edited as an admin would edit it:
    the protected ports changed in the one place the file keeps them."""
    text = TABLE_FILE.read_text()
    tcp = "elements = { 22 }"
    udp = "# elements = { 51820 }"
    assert tcp in text and udp in text, "nft/gnocchi.nft no longer has its port lines"
    text = text.replace(tcp, "elements = { %s }" % ", ".join(map(str, tcp_ports)))
    if udp_ports:
        text = text.replace(udp, "elements = { %s }" % ", ".join(map(str, udp_ports)))
    path = directory / "gnocchi.nft"
    path.write_text(text)
    host.nft("-f", str(path))
    return path


def ruleset(host) -> str:
    return host.nft("-j", "list", "ruleset").stdout


def elements(host, set_name: str) -> list:
    """The knocked set's elements as libnftables' JSON gives them."""
    out = json.loads(host.nft("-j", "list", "set", "inet", "gnocchi", set_name).stdout)
    return [e["elem"] for item in out["nftables"] for e in item.get("set", {}).get("elem", [])]


class Helper:
    """The real root helper (helper/ in the checkout) in host's namespace,
    handed its socket by systemd-socket-activate exactly as systemd would."""

    def __init__(self, host, peer_user="nobody", open_seconds=30):
        # Its own directory: pytest's tmp_path is root-only, and the peer
        # (another user) must reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="gnocchi-helper-"))
        os.chmod(self.dir, 0o755)
        self.path = self.dir / "helper.sock"
        self.log = self.dir / "helper.log"
        with open(self.log, "w") as log:
            self.proc = host.popen(
                ["systemd-socket-activate", "--seqpacket", "-l", str(self.path),
                 PYTHON, str(REPO / "helper"), "--peer-user", peer_user,
                 "--open-seconds", str(open_seconds)],
                stdout=log, stderr=log)
        for _ in range(100):  # up to 5 s
            if self.path.exists():
                break
            time.sleep(0.05)
        else:
            self.close()
            raise RuntimeError(f"the helper's socket never appeared: {self.log.read_text()}")
        # 0666, not gnocchi's 0660 root:gnocchi: the tests also connect as a
        # stranger, to show the helper's own uid check refuses it.
        os.chmod(self.path, 0o666)

    def send(self, *messages: bytes, user: str = "nobody") -> list:
        """Send each message on its own connection as user; their status bytes
        (None where the helper closed without one)."""
        group = {"nobody": "nogroup"}.get(user, user)
        code = (
            "import socket, sys\n"
            "for m in sys.argv[2:]:\n"
            "    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:\n"
            "        s.settimeout(5); s.connect(sys.argv[1]); s.send(bytes.fromhex(m))\n"
            "        r = s.recv(2); print(r[0] if len(r) == 1 else None)\n")
        out = subprocess.run(
            ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups",
             PYTHON, "-c", code, str(self.path), *(m.hex() for m in messages)],
            check=True, capture_output=True, text=True, timeout=60).stdout
        return [None if v == "None" else int(v) for v in out.split()]

    def log_lines(self) -> list[str]:
        return [l for l in self.log.read_text().splitlines() if l.startswith("gnocchi-helper:")]

    def close(self):
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


def stop(proc: subprocess.Popen) -> None:
    """SIGTERM, then SIGKILL after 5 s."""
    proc.terminate()
    try:
        proc.wait(5)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def request(ip: str, port: int, proto: int = 6, *, version=1, family=None, pad=0) -> bytes:
    """A helper request from typed values, as the verifier would build it."""
    a = ipaddress.ip_address(ip)
    packed = a.packed + bytes(16 - len(a.packed))
    return REQUEST.pack(version, a.version if family is None else family, proto, pad, port, packed)

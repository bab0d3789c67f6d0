"""Traffic between test namespaces: TCP and UDP probes, echo services, and
datagrams sent from a client namespace (udp_client.py there)."""

from __future__ import annotations

import socket
import subprocess
import threading
import time
from pathlib import Path

from support.netns import Host, Net, inside
from support.processes import PYTHON

CONNECT_TIMEOUT = 0.5  # below the first SYN retransmit (1 s): one SYN per try
UDP_CLIENT = str(Path(__file__).with_name("udp_client.py"))


def family_of(ip: str) -> int:
    return socket.AF_INET6 if ":" in ip else socket.AF_INET


def tcp_connect(host: Host, ip: str, port: int, source: str | None = None) -> socket.socket | None:
    """A connected socket from host (from its address source), or None if the SYN went
    unanswered."""
    with inside(host):
        s = socket.socket(family_of(ip), socket.SOCK_STREAM)
    if source:
        s.bind((source, 0))
    s.settimeout(CONNECT_TIMEOUT)
    try:
        s.connect((ip, port))
    except TimeoutError:
        s.close()
        return None
    return s


def echoes(sock: socket.socket, data: bytes = b"hello") -> bool:
    """True when the service behind sock (TCP or connected UDP) echoes data."""
    sock.settimeout(CONNECT_TIMEOUT)
    try:
        sock.send(data)
        return sock.recv(100) == data
    except TimeoutError:
        return False


def udp_socket(host: Host, ip: str, port: int) -> socket.socket:
    """A UDP socket in host, connected (one source port = one conntrack flow)."""
    with inside(host):
        s = socket.socket(family_of(ip), socket.SOCK_DGRAM)
    s.connect((ip, port))
    return s


def send_datagrams(
    net: Net, port: int, packets: list[bytes], to: str | None = None, wait: float = 0.0
) -> int:
    """Send packets from the client namespace to the server (or `to`); returns
    how many replies (datagrams or ICMP errors) came back within `wait` s."""
    out = net.client.run(
        [PYTHON, UDP_CLIENT, to or net.server.ip, str(port), str(wait)],
        input="\n".join(p.hex() or "-" for p in packets),
        timeout=60,
    )
    return int(out.stdout.split()[-1])


PACED_SENDER = """
import socket, sys, time
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
for i, line in enumerate(sys.stdin.read().split()):
    s.sendto(bytes.fromhex(line), (sys.argv[1], int(sys.argv[2])))
    if i % 10 == 9:
        time.sleep(0.005)
"""


def send_paced(host: Host, ip: str, port: int, packets: list[bytes], wait: bool = True):
    """Send packets from host at about 2,000 a second (10 every 5 ms): a flood the
    verifier reads whole, so a test can count what it decided. With wait=False
    the sender runs on (returned: the test waits for it)."""
    sender = host.popen(
        [PYTHON, "-c", PACED_SENDER, ip, str(port)], stdin=subprocess.PIPE, text=True
    )
    sender.stdin.write("\n".join(p.hex() for p in packets))
    sender.stdin.close()
    if wait:
        assert sender.wait(timeout=60) == 0
    return sender


class EchoServices:
    """TCP and UDP echo servers on the given ports in host, on all addresses
    (IPv4 and IPv6), each served by a daemon thread until close()."""

    def __init__(self, host: Host, tcp_ports=(), udp_ports=()):
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
            except (TimeoutError, OSError):
                continue
            self._serve(self._echo_stream, conn)

    def _echo_stream(self, conn):
        while not self.stop.is_set():
            try:
                data = conn.recv(100)
            except TimeoutError:
                continue
            except OSError:
                return
            if not data:  # the peer is done: so are we (as ssh's server would be)
                conn.shutdown(socket.SHUT_WR)
                return
            conn.sendall(data)

    def _udp(self, s):
        while not self.stop.is_set():
            try:
                data, peer = s.recvfrom(100)
            except (TimeoutError, OSError):
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

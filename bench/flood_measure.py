"""Not a test: a measurement (issue 9, item 1). The leaked-server-key flood:
packets sealed with the real server key, claiming a configured client, with a
canonical-S signature that does not verify (each costs the verifier a full
Ed25519 check), from one source or from many spoofed ones (198.19.0.0/16),
at a paced rate, against the real verifier, helper and table in namespaces.
Mid-flood, a client on another address knocks once (KNOCKS times, each a
fresh knock); a knock "opens on its first try" when a connection from that
address to port 22 succeeds within 100 ms of sending it.

    /usr/bin/python3 bench/flood_measure.py [--no-limit] [CASE ...]

CASE is SOURCES:RATE (RATE 0: as fast as one Python sender goes), default
the table in docs/firewall.md. Prints one line per case. As root; only
namespaces of its own.
"""
from __future__ import annotations

import argparse
import os
import random
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]  # gnocchi and the tests' scaffold

from nacl.secret import SecretBox  # noqa: E402

from gnocchi.shared import protocol  # noqa: E402
from support import (PYTHON, REPO, Daemon, EchoServices, Helper, Keys, Net, inside, knock,  # noqa: E402
                     load_table, write_config)

FLOOD_SECONDS, WARMUP, KNOCKS, FIRST_TRY = 6.0, 0.5, 9, 0.100
CASES = ["1:2000", "1:10000", "1:0", "4096:1000", "4096:2000", "4096:4000", "4096:8000",
         "4096:16000", "4096:0"]

SENDER = r"""
import socket, struct, sys, time
rate, seconds = float(sys.argv[1]), float(sys.argv[2])
frames = [bytes.fromhex(l) for l in open(sys.argv[3]).read().split()]
dst = sys.argv[4]
s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)
sent, n, start = 0, len(frames), time.monotonic()
while True:
    now = time.monotonic() - start
    if now >= seconds:
        break
    if rate and sent > rate * now:
        time.sleep(0.0005)
        continue
    for _ in range(50):
        try:
            s.sendto(frames[sent % n], (dst, 0))
        except OSError:
            pass
        sent += 1
print(sent, time.monotonic() - start, flush=True)
"""


def checksum(data: bytes) -> int:
    if len(data) % 2:
        data += b"\0"
    total = sum(int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(src: str, dst: str, port: int, payload: bytes) -> bytes:
    """An IPv4 header (IP_HDRINCL) and a UDP header without checksum (allowed in IPv4)."""
    udp = (40000).to_bytes(2, "big") + port.to_bytes(2, "big") + \
        (8 + len(payload)).to_bytes(2, "big") + b"\0\0" + payload
    head = bytes([0x45, 0]) + (20 + len(udp)).to_bytes(2, "big") + os.urandom(2) + \
        b"\x40\0" + bytes([64, 17]) + b"\0\0" + socket.inet_aton(src) + socket.inet_aton(dst)
    head = head[:10] + checksum(head).to_bytes(2, "big") + head[12:]
    return head + udp


def probe(server_key: bytes, claimed: bytes, counter: int) -> bytes:
    sig = os.urandom(protocol.SIG_LEN - 1) + bytes([os.urandom(1)[0] & 0x0F])
    body = (protocol.MAGIC + claimed + sig + counter.to_bytes(protocol.COUNTER_LEN, "big")
            + (7).to_bytes(2, "big") + b"open 22" + os.urandom(9))
    return bytes(SecretBox(server_key).encrypt(body, os.urandom(protocol.NONCE_LEN)))


def opened_within(net: Net, src: str, limit: float) -> float | None:
    """Seconds until a connection from src to port 22 works, trying every 10 ms."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        with inside(net.client):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        with s:
            s.bind((src, 0))
            s.settimeout(0.01)
            try:
                s.connect((net.server.ip, 22))
                return time.monotonic() - start
            except (TimeoutError, socket.timeout, OSError):
                continue
    return None


def udp_counters(net: Net) -> tuple[int, int]:
    """The server namespace's (InDatagrams, RcvbufErrors): what reached a socket, and
    what found its buffer full."""
    lines = [l.split() for l in net.server.run(["cat", "/proc/net/snmp"]).stdout.splitlines()
             if l.startswith("Udp:")]
    row = dict(zip(lines[0][1:], map(int, lines[1][1:])))
    return row["InDatagrams"], row["RcvbufErrors"]


def send_knock(net: Net, k: Keys, src: str, counter: int) -> None:
    with inside(net.client):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.bind((src, 0))
        s.sendto(knock(k, "alice", counter, b"open 22", net.server.ip), (net.server.ip, k.port))


def write_pool(path: Path, datagrams: list[bytes]) -> None:
    """bench/blast.py's pool file: each datagram after its 2-byte length."""
    path.write_bytes(b"".join(len(d).to_bytes(2, "big") + d for d in datagrams))


def run_case(sources: int, rate: float, limited: bool, blast: bool = False) -> str:
    tmp = Path(tempfile.mkdtemp(prefix="gnocchi-flood-"))
    with Net("fm") as net:
        k = Keys(tmp)
        load_table(net.server, tmp, knock_port=k.port if limited else None)
        # Spoofed sources: the server must not drop them by reverse-path filtering.
        net.server.run(["sysctl", "-qw", "net.ipv4.conf.all.rp_filter=0",
                        "net.ipv4.conf.gveth1.rp_filter=0"])
        net.server.run(["ip", "route", "add", "198.19.0.0/16", "dev", "gveth1"])
        knocker, warm = (net.client.ip.rsplit(".", 1)[0] + f".{i}" for i in (3, 4))
        for ip in (knocker, warm):
            net.client.run(["ip", "addr", "add", f"{ip}/24", "dev", "gveth0"])
        helper = Helper(net.server, peer_user="root")
        try:
            with EchoServices(net.server, tcp_ports=(22,)):
                d = Daemon(net, write_config(tmp, k, str(helper.path)),
                           f"{net.server.ip}:{k.port}", stderr=tmp / "daemon.err")
                # One knock before the flood: the helper starts on its first request.
                send_knock(net, k, warm, 1)
                assert opened_within(net, warm, 5.0) is not None, d.text()
                alice = bytes.fromhex(k.public("alice"))
                addresses = ([net.client.ip] if sources == 1 else
                             [f"198.19.{i // 256}.{i % 256}" for i in range(sources)])
                frames = [frame(addresses[i % len(addresses)], net.server.ip, k.port,
                                probe(k.server, alice, 10**12 + i)) for i in range(8192)]
                random.shuffle(frames)
                (tmp / "frames").write_text("\n".join(f.hex() for f in frames))
                before = udp_counters(net)
                if blast:  # bench/blast.py: sendmmsg(2), from the client's own address
                    write_pool(tmp / "pool", [f[28:] for f in frames])
                    argv = [PYTHON, str(REPO / "bench" / "blast.py"), net.client.ip,
                            net.server.ip, str(k.port), str(tmp / "pool"), str(rate),
                            str(FLOOD_SECONDS)]
                else:
                    argv = [PYTHON, "-c", SENDER, str(rate), str(FLOOD_SECONDS),
                            str(tmp / "frames"), net.server.ip]
                sender = net.client.popen(argv, stdout=subprocess.PIPE, text=True)
                time.sleep(WARMUP)
                times = []
                for i in range(KNOCKS):
                    send_knock(net, k, knocker, i + 2)
                    times.append(opened_within(net, knocker, 0.5))
                sent, seconds = sender.communicate(timeout=60)[0].split()
                time.sleep(0.5)  # the verifier reads what is queued
                read, full = (b - a for a, b in zip(before, udp_counters(net)))
                d.stop()
        finally:
            helper.close()
    first = sum(1 for t in times if t is not None and t <= FIRST_TRY)
    shown = ", ".join("-" if t is None else f"{t * 1000:.0f}" for t in times)
    achieved = int(sent) / float(seconds)
    return (f"{'one source' if sources == 1 else f'{sources} sources':>13}"
            f"{' (blast.py)' if blast else ''}  "
            f"asked {('max' if not rate else int(rate)):>6}/s  sent {achieved:7.0f}/s  "
            f"reached the socket {read / float(seconds):6.0f}/s "
            f"(buffer full {full / float(seconds):6.0f}/s)  "
            f"first try <= 100 ms: {first}/{KNOCKS}  (ms to open: {shown})")


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-limit", action="store_true", help="leave set knock_port empty")
    p.add_argument("--blast", action="store_true",
                   help="one source only: send with bench/blast.py (sendmmsg, faster)")
    p.add_argument("cases", nargs="*", default=CASES)
    args = p.parse_args()
    print(f"table: {'NO flood limit' if args.no_limit else 'flood limit on the knock port'}")
    for case in args.cases:
        sources, rate = case.split(":")
        if args.blast and sources != "1":
            p.error("--blast sends from one source only")
        print(run_case(int(sources), float(rate), not args.no_limit, args.blast), flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Not a test: a measurement (issue 9, item 1). The leaked-server-key flood:
packets sealed with the real server key, claiming a configured client, with a
canonical-S signature that does not verify (each costs the verifier a full
Ed25519 check: bench/systems.py's Gnocchi.costly), from one source or from
many spoofed ones (198.19.0.0/16), at a paced rate, against the real
verifier, helper and table, run as the units run them (bench/systems.py) in
the bench's namespaces (bench/lab.py). Mid-flood, the client's own address
knocks once (KNOCKS times, each a fresh knock); a knock "opens on its first
try" when a connection from that address to port 22 succeeds within 100 ms
of sending it.

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

sys.path[:0] = [str(Path(__file__).resolve().parent)]
from lab import Lab, Service
from systems import PY, REPO, Gnocchi

FLOOD_SECONDS, WARMUP, KNOCKS, FIRST_TRY = 6.0, 0.5, 9, 0.100
CASES = [
    "1:2000",
    "1:10000",
    "1:0",
    "4096:1000",
    "4096:2000",
    "4096:4000",
    "4096:8000",
    "4096:16000",
    "4096:0",
]

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
    total = sum(int.from_bytes(data[i : i + 2], "big") for i in range(0, len(data), 2))
    while total >> 16:
        total = (total & 0xFFFF) + (total >> 16)
    return ~total & 0xFFFF


def frame(src: str, dst: str, port: int, payload: bytes) -> bytes:
    """An IPv4 header (IP_HDRINCL) and a UDP header without checksum (allowed in IPv4)."""
    udp = (
        (40000).to_bytes(2, "big")
        + port.to_bytes(2, "big")
        + (8 + len(payload)).to_bytes(2, "big")
        + b"\0\0"
        + payload
    )
    head = (
        bytes([0x45, 0])
        + (20 + len(udp)).to_bytes(2, "big")
        + os.urandom(2)
        + b"\x40\0"
        + bytes([64, 17])
        + b"\0\0"
        + socket.inet_aton(src)
        + socket.inet_aton(dst)
    )
    head = head[:10] + checksum(head).to_bytes(2, "big") + head[12:]
    return head + udp


def opened_within(lab: Lab, src: str, limit: float) -> float | None:
    """Seconds until a connection from src to port 22 works, trying every 10 ms."""
    start = time.monotonic()
    while time.monotonic() - start < limit:
        with lab.client.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
            s.bind((src, 0))
            s.settimeout(0.01)
            try:
                s.connect((lab.server.ip, 22))
                return time.monotonic() - start
            except OSError:  # TimeoutError too
                continue
    return None


def udp_counters(lab: Lab) -> tuple[int, int]:
    """The server namespace's (InDatagrams, RcvbufErrors): what reached a socket, and
    what found its buffer full."""
    row = lab.server.udp_counters()
    return row["InDatagrams"], row["RcvbufErrors"]


def write_pool(path: Path, datagrams: list[bytes]) -> None:
    """bench/blast.py's pool file: each datagram after its 2-byte length."""
    path.write_bytes(b"".join(len(d).to_bytes(2, "big") + d for d in datagrams))


def run_case(sources: int, rate: float, limited: bool, blast: bool = False) -> str:
    lab, g, service = Lab(), None, None
    with tempfile.TemporaryDirectory(prefix="gnocchi-flood-") as work:
        tmp = Path(work)
        os.chmod(tmp, 0o755)  # the verifier (nobody) reads its config below
        try:
            # The lab routes 198.18.0.0/15 (198.19.0.0/16 spoofed sources too)
            # to the link, so the server takes them whatever its rp_filter.
            lab.open()
            g = Gnocchi(lab, tmp)
            g.arm(flood_limit=limited)
            service = Service(lab.server)
            g.start()  # the helper and the verifier, each woken by a first knock
            g.reset()  # the warm-up knock's opening
            flood = lab.flood_ip  # the client's own address knocks mid-flood
            addresses = (
                [flood]
                if sources == 1
                else [f"198.19.{i // 256}.{i % 256}" for i in range(sources)]
            )
            probes = g.costly()
            frames = [
                frame(addresses[i % len(addresses)], lab.server.ip, g.port, probe)
                for i, probe in enumerate(probes)
            ]
            random.shuffle(frames)
            (tmp / "frames").write_text("\n".join(f.hex() for f in frames))
            before = udp_counters(lab)
            if blast:  # bench/blast.py: sendmmsg(2), from one address
                write_pool(tmp / "pool", [f[28:] for f in frames])
                argv = [
                    PY,
                    str(REPO / "bench" / "blast.py"),
                    flood,
                    lab.server.ip,
                    str(g.port),
                    str(tmp / "pool"),
                    str(rate),
                    str(FLOOD_SECONDS),
                ]
            else:
                argv = [
                    PY,
                    "-c",
                    SENDER,
                    str(rate),
                    str(FLOOD_SECONDS),
                    str(tmp / "frames"),
                    lab.server.ip,
                ]
            sender = lab.client.popen(argv, stdout=subprocess.PIPE, text=True)
            time.sleep(WARMUP)
            times = []
            for _ in range(KNOCKS):
                g.send(lab.client.ip, g.fresh_knocks(1)[0])
                times.append(opened_within(lab, lab.client.ip, 0.5))
            sent, seconds = sender.communicate(timeout=60)[0].split()
            time.sleep(0.5)  # the verifier reads what is queued
            read, full = (b - a for a, b in zip(before, udp_counters(lab), strict=True))
        finally:
            if service is not None:
                service.close()
            if g is not None:
                g.stop()
            lab.close()
    first = sum(1 for t in times if t is not None and t <= FIRST_TRY)
    shown = ", ".join("-" if t is None else f"{t * 1000:.0f}" for t in times)
    achieved = int(sent) / float(seconds)
    return (
        f"{'one source' if sources == 1 else f'{sources} sources':>13}"
        f"{' (blast.py)' if blast else ''}  "
        f"asked {('max' if not rate else int(rate)):>6}/s  sent {achieved:7.0f}/s  "
        f"reached the socket {read / float(seconds):6.0f}/s "
        f"(buffer full {full / float(seconds):6.0f}/s)  "
        f"first try <= 100 ms: {first}/{KNOCKS}  (ms to open: {shown})"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--no-limit", action="store_true", help="leave set knock_port empty")
    p.add_argument(
        "--blast",
        action="store_true",
        help="one source only: send with bench/blast.py (sendmmsg, faster)",
    )
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

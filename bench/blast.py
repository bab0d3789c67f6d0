"""A UDP flood at C speed: sendmmsg(2) through ctypes, paced or flat out.

    python3 bench/blast.py SRC_IP DST_IP PORT POOL_FILE PPS MAX_SECONDS
    python3 bench/blast.py spoof:NETWORK DST_IP PORT POOL_FILE PPS MAX_SECONDS

Sends the datagrams of POOL_FILE (each a 2-byte big-endian length and the
bytes, see write_pool) round and round from SRC_IP to DST_IP:PORT, at PPS
datagrams a second (0: as fast as the kernel takes them), until SIGTERM or
MAX_SECONDS, then prints the number sent and the seconds taken. Python's
socket module has no sendmmsg, and one send() a datagram tops out far below
100k a second here; one sendmmsg call hands the kernel a batch of up to 256.

With spoof:NETWORK (e.g. spoof:198.19.0.0/16) each datagram of the pool goes
out through a raw socket with its own source address in NETWORK and its own
source port, written in its IPv4 and UDP headers: a flood from as many
addresses as the pool has datagrams, which no per-source limit can hold back.
The source of datagram i is fixed (not random per send), so the server's
conntrack holds one entry per pool datagram, not one per packet.

Run by bench/compare.py inside the client namespace only.
"""

from __future__ import annotations

import ctypes
import ipaddress
import signal
import socket
import struct
import sys
import time

BATCH = 256


class iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", msghdr), ("msg_len", ctypes.c_uint)]


def write_pool(path, datagrams) -> None:
    with open(path, "wb") as f:
        for d in datagrams:
            f.write(struct.pack("!H", len(d)) + d)


def read_pool(path) -> list[bytes]:
    with open(path, "rb") as f:
        data, out, i = f.read(), [], 0
    while i < len(data):
        (n,) = struct.unpack_from("!H", data, i)
        out.append(data[i + 2 : i + 2 + n])
        i += 2 + n
    return out


def spoofed(pool: list[bytes], network: str, dst: str, port: int) -> list[bytes]:
    """Each datagram behind an IPv4 and a UDP header of its own: source
    address i of network (cycling), source port 1024 + i, UDP checksum 0
    (none, allowed for IPv4). The kernel fills in the IP checksum (raw(7))."""
    net = ipaddress.IPv4Network(network)
    hosts = net.num_addresses - 2
    out = []
    for i, payload in enumerate(pool):
        src = (net[1 + i % hosts]).packed
        udp = struct.pack("!HHHH", 1024 + i % 60000, port, 8 + len(payload), 0)
        ip = struct.pack(
            "!BBHHHBBH4s4s",
            0x45,
            0,
            28 + len(payload),
            0,
            0,
            64,
            socket.IPPROTO_UDP,
            0,
            src,
            socket.inet_aton(dst),
        )
        out.append(ip + udp + payload)
    return out


def main() -> int:
    src, dst, port, pool_file, pps, max_seconds = sys.argv[1:7]
    pps, max_seconds = float(pps), float(max_seconds)
    pool = read_pool(pool_file)
    libc = ctypes.CDLL(None, use_errno=True)
    if src.startswith("spoof:"):
        pool = spoofed(pool, src[len("spoof:") :], dst, int(port))
        s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # IP_HDRINCL
        s.connect((dst, 0))
    else:
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind((src, 0))
        s.connect((dst, int(port)))
    # The pool twice over, so any window of BATCH messages is contiguous.
    n = len(pool)
    buffers = [ctypes.create_string_buffer(d, len(d)) for d in pool]
    iovs = (iovec * n)(
        *[
            iovec(ctypes.cast(b, ctypes.c_void_p), len(d))
            for b, d in zip(buffers, pool, strict=True)
        ]
    )
    msgs = (mmsghdr * (2 * n))()
    for i in range(2 * n):
        msgs[i].msg_hdr.msg_iov = ctypes.pointer(iovs[i % n])
        msgs[i].msg_hdr.msg_iovlen = 1
    stop = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(1))
    batch = BATCH if not pps else max(1, min(BATCH, int(pps / 2000)))  # ~2000 calls/s paced
    size = ctypes.sizeof(mmsghdr)
    base = ctypes.addressof(msgs)
    sent, start = 0, time.monotonic()
    while not stop:
        now = time.monotonic() - start
        if now >= max_seconds:
            break
        if pps and sent > pps * now:
            time.sleep(min(0.001, sent / pps - now))
            continue
        first = sent % n
        r = libc.sendmmsg(s.fileno(), ctypes.c_void_p(base + first * size), batch, 0)
        if r > 0:
            sent += r
        elif ctypes.get_errno() not in (11, 105, 111):  # EAGAIN, ENOBUFS, ECONNREFUSED
            raise OSError(ctypes.get_errno(), "sendmmsg")
    print(sent, time.monotonic() - start, flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

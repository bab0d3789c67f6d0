"""The verifier's hot path on a real socket: a garbage flood, and what the
verifier reads of it per CPU-second.

    /usr/bin/python3 bench/hot_path.py [--pps N] [--seconds S] [--checkout DIR]

As root. Runs in a network namespace of its own (`unshare --net`, only its
loopback up), so nothing else's traffic is counted and nothing is left
behind. A server process runs gnocchi's own `verifier.serve` loop (the
real Verifier, a counter store in a temp dir, journald replaced by a list)
on a socket made as gnocchi.socket makes it (dual-stack [::]:PORT, 256 KiB
receive buffer); bench/blast.py sends random 160..1024-byte datagrams to
127.0.0.1 at N a second (0: flat out) for S seconds. Printed: datagrams
sent, the share the kernel delivered to the socket that the verifier read
(`Udp: InDatagrams` over sent), those the verifier decided (its summary's
DROPPED) per second of its own CPU time (user + system, the serve loop
only), and its VmRSS/VmHWM at the end. HOT_PATH_PROFILE=1 prints the
serve loop's cProfile on stderr. --checkout times another checkout's
gnocchi/ (e.g. `git archive HEAD~3 | tar -x -C /tmp/before`).

Knock protocol v2 (docs/PROTOCOL.md): --keys v1 (the default, and the only
choice for a checkout before v2), v1+v2 (a server moving: both keys), or
v2 (v1 off); --garbage random (160..1024 random bytes: v1 drops them at its
MAC, a v2-only server at MAGIC2's comparison) or magic2 (MAGIC2 and random
bytes, 184..1048: v2's MAC1 drops them, the cost of garbage aimed at v2).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import signal
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSIDE = "GNOCCHI_HOT_PATH_NETNS"


def udp_in() -> int:
    lines = [
        line.split()
        for line in Path("/proc/net/snmp").read_text().splitlines()
        if line.startswith("Udp:")
    ]
    return int(lines[1][lines[0].index("InDatagrams")])


def memory() -> dict:
    fields = dict(line.split(":", 1) for line in Path("/proc/self/status").read_text().splitlines())
    return {k: int(fields[k].split()[0]) / 1024 for k in ("VmRSS", "VmHWM")}


def server(checkout: str, port_out) -> None:
    """The verifier's serve loop until SIGTERM; prints its figures as JSON."""
    sys.path.insert(0, checkout)
    import socket

    from gnocchi.server import config, counters, events, knock_socket, verifier
    from gnocchi.shared import protocol

    work = tempfile.mkdtemp()
    key = os.urandom(32)
    which = os.environ.get("HOT_PATH_KEYS", "v1")
    (Path(work) / "gnocchi.toml").write_text(
        f'state_dir = "{work}"\nhelper_socket = "{work}/h.sock"\n[clients.alice]\n'
        f'public_key = "{os.urandom(32).hex()}"\nallow = ["22"]\n'
    )
    cfg = config.load(f"{work}/gnocchi.toml")
    counters.create(work)
    sent: list[dict] = []
    log = events.EventLog(send=sent.append, interval=3600)
    try:
        from gnocchi.server import keyring
    except ImportError:  # a checkout before knock protocol v2: one key, one socket
        keys, socks = key, None
    else:
        private = os.urandom(32)
        keys = keyring.Keyring(
            None if which == "v2" else key,
            () if which == "v1" else ((protocol.public_key(private), private),),
        )
        if which == "v2":  # its own port: the v2 key's
            key = protocol.public_key(private)
        socks = []
    v = verifier.Verifier(cfg, keys, counters.Store(work).load(), log)
    sock = socket.socket(socket.AF_INET6, socket.SOCK_DGRAM)
    sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024 // 2)  # the kernel doubles it
    sock.bind(("::", protocol.knock_port(key)))
    knock_socket.enable_pktinfo(sock)
    socks = [sock] if socks is not None else sock
    stop: list = []
    signal.signal(signal.SIGTERM, lambda *_: stop.append(True))
    print(protocol.knock_port(key), file=port_out, flush=True)
    before = resource.getrusage(resource.RUSAGE_SELF)
    if os.environ.get("HOT_PATH_PROFILE"):  # where the time goes (cProfile slows it all)
        import cProfile
        import pstats

        profile = cProfile.Profile()
        profile.runcall(verifier.serve, socks, v, log, stop)
        pstats.Stats(profile, stream=sys.stderr).sort_stats("tottime").print_stats(14)
    else:
        verifier.serve(socks, v, log, stop)
    after = resource.getrusage(resource.RUSAGE_SELF)
    log.flush()
    decided = sum(int(e.get("GNOCCHI_DROPPED", 0)) for e in sent)
    user, system = after.ru_utime - before.ru_utime, after.ru_stime - before.ru_stime
    print(
        json.dumps(
            {"decided": decided, "cpu": user + system, "user": user, "system": system, **memory()}
        ),
        flush=True,
    )


MAGIC2 = bytes.fromhex("177fd314bf5dbb67")  # docs/PROTOCOL.md, "Version 2"


def flood(checkout: str, pps: float, seconds: float, garbage: str = "random") -> dict:
    sys.path.insert(0, str(HERE))
    import blast

    with tempfile.TemporaryDirectory() as work:
        pool = Path(work) / "pool"
        if garbage == "magic2":
            blast.write_pool(pool, [MAGIC2 + os.urandom(176 + i * 7919 % 865) for i in range(4096)])
        else:
            blast.write_pool(pool, [os.urandom(160 + i * 7919 % 865) for i in range(4096)])
        read_fd, write_fd = os.pipe()
        serve = subprocess.Popen(
            [sys.executable, "-I", __file__, "--serve", checkout, str(write_fd)],
            pass_fds=[write_fd],
            stdout=subprocess.PIPE,
            text=True,
        )
        os.close(write_fd)
        with os.fdopen(read_fd) as ports:
            port = ports.readline().strip()
        if not port:
            raise SystemExit("the server did not start")
        in0 = udp_in()
        out = subprocess.run(
            [
                sys.executable,
                str(HERE / "blast.py"),
                "127.0.0.1",
                "127.0.0.1",
                port,
                str(pool),
                str(pps),
                str(seconds),
            ],
            capture_output=True,
            text=True,
            timeout=seconds + 30,
            check=True,
        )
        time.sleep(0.5)  # let the verifier drain its receive buffer
        read = udp_in() - in0
        serve.send_signal(signal.SIGTERM)
        result = json.loads(serve.communicate(timeout=30)[0])
    sent, elapsed = out.stdout.split()
    return {"sent": int(sent), "sent_pps": int(sent) / float(elapsed), "read": read, **result}


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--pps", type=float, default=100_000)
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--checkout", default=str(HERE.parent))
    p.add_argument(
        "--keys",
        choices=("v1", "v1+v2", "v2"),
        default="v1",
        help="the server's knock keys (v2: v1 off)",
    )
    p.add_argument("--garbage", choices=("random", "magic2"), default="random")
    p.add_argument("--serve", nargs=2, help=argparse.SUPPRESS)
    args = p.parse_args()
    if args.serve:
        with os.fdopen(int(args.serve[1]), "w") as port_out:
            server(args.serve[0], port_out)
        return 0
    if not os.environ.get(INSIDE):  # a network namespace of our own, gone when we exit
        env = dict(os.environ, **{INSIDE: "1", "HOT_PATH_KEYS": args.keys})
        return subprocess.run(
            [
                "unshare",
                "--net",
                "sh",
                "-c",
                'ip link set lo up && exec "$@"',
                "sh",
                sys.executable,
                *sys.argv,
            ],
            env=env,
        ).returncode
    r = flood(args.checkout, args.pps, args.seconds, args.garbage)
    print(
        f"checkout {args.checkout}, keys {args.keys}, {args.garbage} garbage: flood "
        f"{'flat out' if not args.pps else f'{args.pps:.0f} pps'} for {args.seconds:g} s"
    )
    print(
        f"  sent {r['sent']} ({r['sent_pps']:.0f}/s); read by the verifier "
        f"{100 * r['read'] / r['sent']:.1f} %; decided {r['decided']}"
    )
    print(
        f"  decided per CPU-second: {r['decided'] / r['cpu']:.0f} "
        f"({r['cpu']:.2f} s CPU, {1e6 * r['cpu'] / max(r['decided'], 1):.2f} us each: "
        f"{1e6 * r['user'] / max(r['decided'], 1):.2f} user, "
        f"{1e6 * r['system'] / max(r['decided'], 1):.2f} system)"
    )
    print(f"  verifier VmRSS {r['VmRSS']:.1f} MB, VmHWM {r['VmHWM']:.1f} MB")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""gnocchi-knock from launch to its datagram at a sink, checkouts in turn.

    /usr/bin/python3 bench/client_start.py [--runs N] [CHECKOUT ...]

As root. In a network namespace of its own (`unshare --net`, loopback up): a
sink socket on 127.0.0.1 at the server key's knock port; each sample starts
the client the way packaging/bin/gnocchi-knock does (`python3 -I`, the
checkout first on sys.path, `--request "open 22"` with key files and a
counter directory beside this file, so on this disk) and times Popen to the
datagram's arrival. Checkouts (default: this one) take turns sample by
sample, with two floors beside them: `python3 -I` importing PyNaCl
(nacl.secret, as bench/compare.py's floor) and sending one datagram, and the
same loading only libsodium (nacl._sodium): all a knock imports of PyNaCl.
Prints p50 (min..max) in ms, and the p50 of each run's CPU
time (user + system: steadier than wall time when other work shares the
machine).
"""

from __future__ import annotations

import argparse
import os
import select
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
INSIDE = "GNOCCHI_CLIENT_START_NETNS"
KNOCK = (
    "import sys; sys.path.insert(0, sys.argv.pop(1)); from gnocchi.client.knock import main; "
    "sys.exit(main())"
)
FLOOR = (
    "import sys, socket, {}; socket.socket(socket.AF_INET, "
    "socket.SOCK_DGRAM).sendto(b'x', ('127.0.0.1', int(sys.argv[1])))"
)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--runs", type=int, default=30)
    p.add_argument("checkouts", nargs="*", default=[str(HERE.parent)])
    args = p.parse_args()
    if not os.environ.get(INSIDE):
        env = dict(os.environ, **{INSIDE: "1"})
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
    sys.path.insert(0, args.checkouts[0])
    from gnocchi.shared import keys, protocol

    server_key = keys.new_server_key()  # os.urandom's port is 1024 or lower 1 time in 64
    port = protocol.knock_port(server_key)
    with (
        tempfile.TemporaryDirectory(dir=HERE) as work,
        socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sink,
    ):
        sink.bind(("127.0.0.1", port))
        for name, key in (("server.key", server_key), ("client.key", os.urandom(32))):
            fd = os.open(f"{work}/{name}", os.O_WRONLY | os.O_CREAT, 0o600)
            os.write(fd, key.hex().encode() + b"\n")
            os.close(fd)
        knock_args = [
            "--server-key-file",
            f"{work}/server.key",
            "--client-key-file",
            f"{work}/client.key",
            "--state-dir",
            f"{work}/state",
            "--request",
            "open 22",
            "127.0.0.1",
        ]
        commands = {c: [sys.executable, "-I", "-c", KNOCK, c, *knock_args] for c in args.checkouts}
        for module in ("nacl.secret", "nacl._sodium"):
            commands[f"floor: python3 -I, import {module}, send"] = [
                sys.executable,
                "-I",
                "-c",
                FLOOR.format(module),
                str(port),
            ]
        env = {"PATH": os.environ["PATH"], "HOME": work}
        times: dict[str, list[float]] = {c: [] for c in commands}
        cpu: dict[str, list[float]] = {c: [] for c in commands}
        for _ in range(args.runs):
            for label, argv in commands.items():
                start = time.perf_counter()
                proc = subprocess.Popen(argv, env=env)
                if not select.select([sink], [], [], 10)[0]:
                    raise SystemExit(f"{label}: no datagram within 10 s")
                times[label].append(time.perf_counter() - start)
                sink.recv(2048)
                _, status, usage = os.wait4(proc.pid, 0)
                if status:
                    raise SystemExit(f"{label}: exit status {status}")
                cpu[label].append(usage.ru_utime + usage.ru_stime)
    for label, values in times.items():
        print(
            f"{label:50} {1000 * statistics.median(values):6.1f} ms "
            f"({1000 * min(values):.1f}..{1000 * max(values):.1f}), CPU "
            f"{1000 * statistics.median(cpu[label]):.1f} ms, {len(values)} runs"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())

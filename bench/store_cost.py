"""What one counter commit costs on this machine's disk, and the writes it could be made of.

    /usr/bin/python3 bench/store_cost.py [--dir DIR] [--seconds S] [--rounds R] [--clients N]

DIR (default /var/tmp) must not be a tmpfs: a commit's cost is the disk's
flush. The store holds N clients (default 10); each commit stores the next
counter of one of them, in turn, as the verifier does for each valid knock.
Beside it, one synchronous write of the same text three ways: the file
replaced whole (temporary file, fsync, rename, fsync of the directory: what
every commit did before gnocchi 0.3), pwrite into one of two slots of a
file opened with O_DSYNC (what a commit does now), and pwrite followed by
fdatasync. The cases take turns for R rounds of S seconds each, so a busy
moment of a shared disk falls on all of them; each prints its median rate.
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gnocchi.server import counters
from gnocchi.shared import durable


def rate(seconds, step):
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step(n)
        n += 1
    return n / elapsed


def filesystem(path):
    return subprocess.run(
        ["stat", "-f", "-c", "%T", path], capture_output=True, text=True
    ).stdout.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--seconds", type=float, default=2.0)
    p.add_argument("--rounds", type=int, default=5)
    p.add_argument("--clients", type=int, default=10)
    args = p.parse_args()
    fs = filesystem(args.dir)
    if fs == "tmpfs":
        sys.exit(f"{args.dir} is a tmpfs: give --dir on a real disk")
    print(
        f"{args.dir} ({fs}), {args.clients} clients, "
        f"{args.rounds} rounds of {args.seconds:g} s per case, median:"
    )
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        counters.create(d)
        store = counters.Store(d).load()
        keys = [os.urandom(32) for _ in range(args.clients)]
        base = time.time_ns()
        for key in keys:
            store.commit(key, base)
        text = counters.render(store.counters, store.floor).encode("ascii")
        path = os.path.join(d, "raw")
        durable.replace_file(path, bytes(2 * 4096), 0o600)
        dsync_fd = os.open(path, os.O_WRONLY | os.O_DSYNC)
        plain_fd = os.open(path, os.O_WRONLY)

        def pwrite_fdatasync(i):
            os.pwrite(plain_fd, text, 4096 * (i % 2))
            os.fdatasync(plain_fd)

        cases = {
            "counters.Store.commit": lambda i: store.commit(keys[i % len(keys)], base + 1 + i),
            f"file replaced whole, {len(text)} bytes": lambda i: durable.replace_file(
                os.path.join(d, "whole"), text, 0o600
            ),
            f"pwrite O_DSYNC, two slots, {len(text)} bytes": lambda i: os.pwrite(
                dsync_fd, text, 4096 * (i % 2)
            ),
            f"pwrite + fdatasync, two slots, {len(text)} bytes": pwrite_fdatasync,
        }
        rates = {label: [] for label in cases}
        for _ in range(args.rounds):
            for label, step in cases.items():
                rates[label].append(rate(args.seconds, step))
        for label, measured in rates.items():
            median = statistics.median(measured)
            print(
                f"{label:48} {median:7.0f} /s  {1e6 / median:6.0f} µs each  "
                f"(rounds: {' '.join(f'{r:.0f}' for r in measured)})"
            )


if __name__ == "__main__":
    main()

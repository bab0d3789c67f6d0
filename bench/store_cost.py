"""What one counter commit costs on this machine's disk, and the raw writes it is made of.

    /usr/bin/python3 bench/store_cost.py [--dir DIR] [--seconds S] [--clients N]

DIR (default /var/tmp) must not be a tmpfs: a commit's cost is the disk's
flush. The store holds N clients (default 10); each commit stores the next
counter of one of them, in turn, as the verifier does for each valid knock.
Then, for comparison, one synchronous write of the same size three ways: a
file replaced (temporary file, fsync, rename, fsync of the directory),
pwrite on a file opened with O_DSYNC, and pwrite followed by fdatasync.
Each case runs for a bounded time and prints commits/second.
"""
import argparse
import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gnocchi import counters, durable  # noqa: E402


def rate(label, seconds, step):
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step(n)
        n += 1
    print(f"{label:48} {n / elapsed:8.0f} /s  {elapsed / n * 1e6:7.0f} µs each  "
          f"({n} in {elapsed:.1f} s)")


def filesystem(path):
    return subprocess.run(["stat", "-f", "-c", "%T", path],
                          capture_output=True, text=True).stdout.strip()


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--dir", default="/var/tmp")
    p.add_argument("--seconds", type=float, default=3.0)
    p.add_argument("--clients", type=int, default=10)
    args = p.parse_args()
    fs = filesystem(args.dir)
    if fs == "tmpfs":
        sys.exit(f"{args.dir} is a tmpfs: give --dir on a real disk")
    print(f"{args.dir} ({fs}), {args.clients} clients, {args.seconds:g} s per case")
    with tempfile.TemporaryDirectory(dir=args.dir) as d:
        counters.create(d)
        store = counters.Store(d).load()
        keys = [os.urandom(32) for _ in range(args.clients)]
        base = time.time_ns()
        for key in keys:
            store.commit(key, base)
        rate("store commit (counters.Store.commit)", args.seconds,
             lambda i: store.commit(keys[i % len(keys)], base + 1 + i))
        size = len(counters.render(store.counters, store.floor)) + 64
        data = os.urandom(size)
        path = os.path.join(d, "raw")
        rate(f"replace_file, {size} bytes", args.seconds,
             lambda i: durable.replace_file(path, data, 0o600))
        for label, flags, sync in (("pwrite, O_DSYNC", os.O_DSYNC, None),
                                   ("pwrite + fdatasync", 0, os.fdatasync)):
            fd = os.open(path, os.O_RDWR | flags)
            os.pwrite(fd, bytes(2 * 4096), 0)
            os.fsync(fd)

            def write(i, fd=fd, sync=sync):
                os.pwrite(fd, data, 4096 * (i % 2))
                if sync:
                    sync(fd)
            rate(f"{label}, {size} bytes, two slots", args.seconds, write)
            os.close(fd)


if __name__ == "__main__":
    main()

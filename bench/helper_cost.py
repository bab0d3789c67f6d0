"""How much one request costs the root helper: the real helper (helper/, as
tests/support's Helper starts it) in a network namespace of its own with
nft/gnocchi.nft loaded, asked by the verifier's own client code.

    /usr/bin/python3 bench/helper_cost.py [REQUESTS]     (as root; default 1000)

Each address is knocked twice (a new element, then a re-armed one), 200
addresses at a time, the knocked set flushed in between (it holds 4096).
Prints the round trip a verifier waits for (median, 90th percentile) and the
helper's own CPU time per request (utime + stime from /proc). Nothing runs
outside the namespace but this process's connections to the helper's
AF_UNIX socket.
"""
import ipaddress
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [os.path.join(HERE, ".."), os.path.join(HERE, "..", "tests")]
from gnocchi import helper_client  # noqa: E402
from gnocchi.knock_request import Open  # noqa: E402
from support import Helper, Net, load_table  # noqa: E402

BATCH = 200  # addresses per batch, each knocked twice: 400 elements at most


def cpu_seconds(pid: int) -> float:
    fields = open(f"/proc/{pid}/stat").read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> int:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    with Net("hc") as net, tempfile.TemporaryDirectory(prefix="gnocchi-bench-") as work:
        load_table(net.server, Path(work), udp_ports=(60001,))
        helper = Helper(net.server, peer_user="root")
        try:
            pid = helper.proc.pid
            assert "helper" in open(f"/proc/{pid}/cmdline").read(), "not the helper's pid"
            ssh = [Open(22, "tcp")]
            helper_client.request_open(str(helper.path), ipaddress.ip_address("198.18.99.1"), ssh)
            times, statuses, cpu0 = [], {}, cpu_seconds(pid)
            for i in range(total):
                if i % (2 * BATCH) == 0:
                    net.server.nft("flush", "set", "inet", "gnocchi", "knocked4")
                address = ipaddress.ip_address(int(ipaddress.ip_address("198.18.100.0"))
                                               + (i // (2 * BATCH)) * BATCH + i % BATCH)
                t = time.perf_counter()
                status = helper_client.request_open(str(helper.path), address, ssh)
                times.append(time.perf_counter() - t)
                statuses[status] = statuses.get(status, 0) + 1
            cpu = cpu_seconds(pid) - cpu0
        finally:
            helper.close()
    times.sort()
    print(f"{total} requests {statuses}")
    print(f"round trip   median {statistics.median(times) * 1e3:.3f} ms, "
          f"p90 {times[int(len(times) * 0.9)] * 1e3:.3f} ms")
    print(f"helper CPU   {cpu / total * 1e3:.3f} ms per request ({cpu:.2f} s in all)")
    return 0


if __name__ == "__main__":
    sys.exit(main())

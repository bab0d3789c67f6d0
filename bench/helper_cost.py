"""How much one request costs the root helper: the real helper (helper/, as
gnocchi-helper.service runs it: bench/systems.py's Gnocchi.start_helper) in
the bench's server namespace (bench/lab.py) with nft/gnocchi.nft loaded (tcp
22 and udp 60001 protected), asked by the verifier's own client code.

    /usr/bin/python3 bench/helper_cost.py [REQUESTS]     (as root; default 1000)

Two cases, REQUESTS each: one port (22/tcp), and two (22/tcp and 60001/udp)
in one request. Each address is knocked twice (a new element, then a re-armed
one), 200 addresses at a time, each its own client (so no client passes its
share of openings pending), the knocked set flushed in between (it holds
4096). Prints the round trip a verifier waits for (median, 90th percentile)
and the helper's own CPU time per request (utime + stime from /proc, the
steadier figure on a shared machine). Nothing runs outside the namespaces but
this process's connections to the helper's AF_UNIX socket. Then the
libnftables calls alone, in-process in the namespace (helper/nft.py's Table):
reading a protected set, reading all four sets (what the helper does at most
once a second), the add (add, delete, add).
"""

import ipaddress
import os
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = os.path.dirname(os.path.abspath(__file__))
sys.path[:0] = [HERE, os.path.join(HERE, "..")]
from lab import Lab, cpu_seconds, read
from systems import Gnocchi

from gnocchi.server import helper_client
from gnocchi.shared.knock_request import Open

sys.path.insert(0, os.path.join(HERE, "..", "helper"))
import nft  # helper/nft.py
import request as rq  # helper/request.py
import nftables

BATCH = 200  # addresses per batch, each knocked twice: 800 elements at most


def case(g: Gnocchi, opens, total: int) -> None:
    first = int(ipaddress.ip_address("198.18.100.0"))
    pid = g.helper.pid
    times, statuses, cpu0 = [], {}, cpu_seconds(pid)
    for i in range(total):
        if i % (2 * BATCH) == 0:
            g.reset()  # flush knocked4
        address = ipaddress.ip_address(first + (i // (2 * BATCH)) * BATCH + i % BATCH)
        t = time.perf_counter()
        status = helper_client.request_open(str(g.helper_socket), address, opens, f"c{i % BATCH}")
        times.append(time.perf_counter() - t)
        statuses[status] = statuses.get(status, 0) + 1
    cpu = cpu_seconds(pid) - cpu0
    times.sort()
    print(
        f"{' + '.join(f'{o.port}/{o.proto}' for o in opens):20} {total} requests {statuses}: "
        f"round trip median {statistics.median(times) * 1e3:.3f} ms, "
        f"p90 {times[int(len(times) * 0.9)] * 1e3:.3f} ms; "
        f"helper CPU {cpu / total * 1e3:.3f} ms a request"
    )


def calls(lab: Lab, total: int) -> None:
    """Each libnftables call the helper makes per request, timed in a loop."""
    with lab.server.inside():
        table = nft.Table(nftables.Nftables())
        listing = {"list": {"set": {**nft.TABLE, "name": "protected_tcp"}}}

        def add(i):
            address = ipaddress.ip_address(f"198.18.{100 + i % 4}.{i // 4 % 250 + 1}")
            return table.add(rq.Request(address, (("tcp", 22),), 0, "alice"), 30)

        def read_all(i):
            table.protected = {}  # copies that refuse 22/tcp: look() reads the four sets
            ssh = rq.Request(ipaddress.ip_address("198.18.99.1"), (("tcp", 22),), 0, "alice")
            return table.look(ssh, i * nft.FRESH)

        cases = {
            "read protected_tcp": lambda i: table.apply(listing),
            "read the four sets": read_all,
            "add, delete, add": add,
        }
        for name, call in cases.items():
            table.apply({"flush": {"set": {**nft.TABLE, "name": "knocked4"}}})
            start = time.perf_counter()
            for i in range(total):
                call(i)
            print(f"{name:20} {(time.perf_counter() - start) / total * 1e3:.3f} ms a call")
        table.apply({"flush": {"set": {**nft.TABLE, "name": "knocked4"}}})


def main() -> int:
    total = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    lab, g = Lab(), None
    with tempfile.TemporaryDirectory(prefix="gnocchi-bench-") as work:
        try:
            lab.open()
            g = Gnocchi(lab, Path(work))
            g.arm()  # protects tcp 22; and udp 60001:
            lab.server.run("nft", "add", "element", "inet", "gnocchi", "protected_udp", "{ 60001 }")
            g.start_helper(peer_user="root")  # this process asks
            assert "helper" in read(f"/proc/{g.helper.pid}/cmdline"), "not the helper"
            ssh = [Open(22, "tcp")]
            helper_client.request_open(
                str(g.helper_socket), ipaddress.ip_address("198.18.99.1"), ssh, "warm"
            )
            case(g, ssh, total)
            case(g, [*ssh, Open(60001, "udp")], total)
            g.stop()
            calls(lab, total)
        finally:
            if g is not None:
                g.stop()
            lab.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())

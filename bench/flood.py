"""The real verifier under a garbage flood, over real UDP, between two namespaces.

    /usr/bin/python3 bench/flood.py [SECONDS] [RATE_LIMIT_PPS]     (root)

A client namespace sends random datagrams of knock sizes (160..1024 bytes) to
the verifier's knock port for SECONDS (default 5), as fast as one Python
sender goes or capped at RATE_LIMIT_PPS; then the verifier reports what it
counted. Prints packets sent, packets the verifier decided on (from its
dropped-summary entries), its CPU time, and how many log entries the flood
cost. Bounded in time and count; everything is removed afterwards. Traffic
stays between namespaces made here (198.18.0.0/15).
"""
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from gnocchi import keys, protocol  # noqa: E402
from support import PYTHON, Net, events  # noqa: E402

SENDER = r"""
import os, socket, sys, time
host, port, seconds, cap = sys.argv[1], int(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4])
pool = [os.urandom(160 + i % 865) for i in range(512)]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.connect((host, port))
n, start = 0, time.monotonic()
while (t := time.monotonic() - start) < seconds:
    if cap and n > cap * t:
        time.sleep(0.001); continue
    try:
        s.send(pool[n % 512]); n += 1
    except OSError:
        pass
print(n)
"""


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 5.0
    cap = float(sys.argv[2]) if len(sys.argv) > 2 else 0.0
    with tempfile.TemporaryDirectory() as d, Net("fl") as net:
        d = Path(d)
        key = keys.new_server_key()  # its knock port is above 1024
        keys.write_secret(d / "server.key", key)
        port = protocol.knock_port(key)
        (d / "state").mkdir()
        (d / "gnocchi.toml").write_text(
            f'server_key_file = "{d}/server.key"\nstate_dir = "{d}/state"\n'
            f'helper_socket = "{d}/helper.sock"\n')
        verifier = net.server.popen(
            [PYTHON, "-m", "gnocchi", "serve", "--config", str(d / "gnocchi.toml"),
             "--listen", f"{net.server.ip}:{port}", "--summary-interval", "1"],
            cwd=ROOT, stderr=subprocess.PIPE, text=True)
        time.sleep(1.0)
        sent = int(net.client.run([PYTHON, "-c", SENDER, net.server.ip, str(port), str(seconds),
                                   str(cap)], timeout=seconds + 30).stdout)
        time.sleep(2.5)  # the last summary
        cpu = Path(f"/proc/{verifier.pid}/stat").read_text().split()
        # utime + stime in clock ticks; `ip netns exec` execs, so the pid is the verifier's
        cpu_s = (int(cpu[13]) + int(cpu[14])) / os.sysconf("SC_CLK_TCK")
        verifier.terminate()
        _, err = verifier.communicate(timeout=10)
    entries = events(err)
    decided = sum(int(e.get("GNOCCHI_DROPPED", 0)) for e in entries)
    print(f"sent {sent} garbage datagrams in {seconds:g} s ({sent / seconds:.0f}/s)")
    print(f"verifier decided on {decided} ({decided / max(sent, 1):.1%}; the rest were lost "
          f"in the kernel's socket buffer), using {cpu_s:.2f} s of CPU "
          f"({decided / max(cpu_s, 1e-9):.0f} decisions per CPU-second)")
    print(f"log entries for the whole flood: {len(entries)} "
          f"({sum(e['GNOCCHI_EVENT'] == 'dropped-summary' for e in entries)} summaries)")


if __name__ == "__main__":
    main()

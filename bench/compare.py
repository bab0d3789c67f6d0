"""gnocchi beside fwknopd on this machine, side by side: one command.

    /usr/bin/python3 bench/compare.py [--reps N] [--phases LIST] [--client-checkout DIR]
                                      [--protocol 2]

Run as root from a checkout; installs what it needs from Debian (fwknop-server,
fwknop-client, iptables, ...). Builds two network namespaces (bench/lab.py),
runs gnocchi (socket-activated verifier as nobody, root helper, nft/gnocchi.nft)
and fwknopd 2.6.10 (UDP server mode, iptables backend, packaged defaults; and
again with RULES_CHECK_THRESHOLD 0) against the same protected TCP port 22,
one armed at a time, alternating the order from one repetition to the next,
and prints one Markdown table: medians with min..max, the gnocchi/fwknopd
ratio, issue 9's target and whether gnocchi meets it.

Phases (--phases, comma-separated; default all):
  client     client launch -> knock datagram received (sink in the client namespace)
  connect    knock -> TCP connect works: a raw packet sent by the bench; the real client;
             and gnocchi-knock --proxy launch -> connected (ssh's ProxyCommand)
  sustained  valid knocks decided per second, closed loop, spread over 240 clients and
             240 source addresses (the store on this disk)
  floods     random garbage at 100k pps and flat out, MAC-valid packets with bad
             signatures flat out, each from one source and from 8,192 spoofed sources:
             datagrams read per CPU-second, share read and lost, and knocks sent
             mid-flood from another address (opened on the first try, tries, latency)
  cold       gnocchi's first knock through socket activation (verifier not running)
With --protocol 2, gnocchi runs knock protocol v2 only (docs/PROTOCOL.md): its
knocks are sealed to the server public key, its garbage starts with MAGIC2 (so
MAC1 drops it), and its costly flood is sealed to the public key, which needs
no secret (an X25519 and an Ed25519 check each): run it once with and once
without to put v2 beside v1.
Resident memory is read after the floods (or at the end). Bounded: about 5
minutes on 2 cores; every loop has a count and a deadline. Everything is
removed afterwards, also on Ctrl-C or failure (namespaces, processes in them,
the work directory).
"""

from __future__ import annotations

import argparse
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections import Counter, defaultdict
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import blast
from lab import (
    SPOOFED,
    Lab,
    Prober,
    RulesetWatch,
    Service,
    cpu_seconds,
    fs_type,
    memory_kib,
    read,
    summary,
)

PACKAGES = [
    "fwknop-server",
    "fwknop-client",
    "iptables",
    "nftables",
    "iproute2",
    "systemd",
    "util-linux",
    "python3-nacl",
    "python3-nftables",
    "python3-systemd",
]
PHASES = ("client", "connect", "sustained", "floods", "cold")
PY = "/usr/bin/python3"
TRY_SECONDS = 0.5  # a mid-flood knock not open by then is sent again (fresh)
TRIES = 3  # as many as `gnocchi-knock --proxy` sends by default
FLOOD_SECONDS = 2.5
MIN_CPU_SECONDS = 0.1  # read per CPU-second only above this (CPU time counts in 10 ms ticks)
# (kind, datagrams a second or 0 for flat out, from many spoofed sources?)
FLOODS = (
    ("garbage", 100_000, False),
    ("garbage", 100_000, True),
    ("garbage", 0, False),
    ("garbage", 0, True),
    ("costly", 0, False),
    ("costly", 0, True),
)
WINDOW = 32  # sustained: knocks outstanding at most (far below a full queue)
SUSTAINED_SECONDS = 2.5
SUSTAINED_FWKNOPD = 400  # fwknopd decides ~150 a second here; its client makes them
FLOOR = (
    "import socket, sys, nacl.bindings\n"
    "socket.socket(socket.AF_INET, socket.SOCK_DGRAM)"
    ".sendto(b'x', (sys.argv[1], int(sys.argv[2])))"
)


def note(text: str) -> None:
    """A line on stderr beside the progress: what the table cannot say."""
    print(f"        {text}", file=sys.stderr, flush=True)


def ensure_packages() -> None:
    """apt-get install what is missing (nothing when all is there)."""
    status = subprocess.run(
        ["dpkg-query", "-W", "-f", "${db:Status-Abbrev} ${Package}\n", *PACKAGES],
        capture_output=True,
        text=True,
    ).stdout
    have = {line.split()[-1] for line in status.splitlines() if line.startswith("ii")}
    missing = [p for p in PACKAGES if p not in have]
    if missing:
        print(f"installing {' '.join(missing)}", file=sys.stderr)
        env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
        subprocess.run(["apt-get", "update", "-qq"], check=True, env=env)
        subprocess.run(
            ["apt-get", "install", "-y", "-qq", *missing],
            check=True,
            env=env,
            stdout=subprocess.DEVNULL,
        )


def work_directory() -> Path:
    """A fresh directory on a real disk: the counter store's fsyncs must cost
    what they cost in production, not a tmpfs's nothing."""
    for base in (tempfile.gettempdir(), "/var/tmp", str(Path(__file__).resolve().parent)):
        if fs_type(base) not in ("tmpfs", "ramfs"):
            d = Path(tempfile.mkdtemp(prefix="gnocchi-bench-", dir=base))
            os.chmod(d, 0o755)
            return d
    raise SystemExit("compare.py: no directory on a real disk for the counter store")


class Bench:
    def __init__(
        self, lab: Lab, work: Path, reps: int, client_checkouts: list[Path], protocol: int = 1
    ):
        from systems import Fwknopd, Gnocchi  # imports gnocchi from this checkout

        self.lab, self.work, self.reps = lab, work, reps
        self.client_checkouts = client_checkouts
        self.g = Gnocchi(lab, work, v2=protocol == 2)
        self.f = Fwknopd(lab, work)
        self.f0 = Fwknopd(lab, work, rules_check_threshold=0)
        self.fwknopd = None  # the one running: they share port and chain
        self.results = defaultdict(lambda: defaultdict(list))  # metric -> system -> values
        self.memory: dict[str, tuple[int, int]] = {}
        self.service = Service(lab.server)
        self.watch = RulesetWatch(lab.server)
        self.prober = Prober(lab, self.watch)
        self.out = lab.client.socket()
        self.out.bind((lab.client.ip, 0))
        self.sources = []  # the sustained row's senders, one per source address
        for ip in lab.sources:
            self.sources.append(lab.client.socket())
            self.sources[-1].bind((ip, 0))
        self.g.start()

    def close(self) -> None:
        for system in (self.g, self.f, self.f0):
            system.stop()
        self.service.close()
        self.watch.close()
        self.out.close()
        for sock in self.sources:
            sock.close()

    # -- plumbing

    def use(self, system) -> None:
        if system is self.g or system is self.fwknopd:
            return
        if self.fwknopd is not None:
            self.memory[self.fwknopd.name] = memory_kib(self.fwknopd.proc.pid)
            self.fwknopd.stop()
        system.start()
        self.fwknopd = system

    @contextmanager
    def armed(self, system):
        self.use(system)
        system.arm()
        try:
            system.reset()
            if not self.prober.closed():
                raise RuntimeError(f"{system.name}: TCP port 22 answers while armed")
            yield
        finally:
            system.disarm()

    def order(self, rep: int, systems: list) -> list:
        """ABC, CBA, BCA, ...: each system first, last and between in turn."""
        rotated = systems[rep % len(systems) :] + systems[: rep % len(systems)]
        return rotated[::-1] if rep % 2 else rotated

    def launch(self, argv, env=None) -> subprocess.Popen:
        """A process in the client namespace, forked from a thread that is
        already there: no `ip netns exec` in the measured time."""
        with self.lab.client.inside():
            return subprocess.Popen(
                argv,
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )

    def send(self, system, packet: bytes) -> None:
        self.out.sendto(packet, (self.lab.server.ip, system.port))

    def record(self, metric: str, system, value) -> None:
        self.results[metric][system.name].append(value)

    # -- phases

    def phase_client(self) -> None:
        """Launch -> the knock datagram at a sink on the client's own host.
        The clients take turns, sample by sample, so load from elsewhere on
        the machine falls on all of them alike."""
        clients = [
            ("gnocchi", self.g, self.g.client_argv(self.lab.sink_ip)),
            ("fwknopd", self.f, self.f.client_argv(self.lab.sink_ip)),
        ]
        for checkout in self.client_checkouts:
            clients.append(
                (f"gnocchi {checkout}", self.g, self.g.client_argv(self.lab.sink_ip, checkout))
            )
        # What any Python client with PyNaCl pays before its own code runs.
        clients.append(
            ("floor", self.g, [PY, "-I", "-c", FLOOR, self.lab.sink_ip, str(self.g.port)])
        )
        sinks = {}
        try:
            for _, system, _ in clients:
                if system.port not in sinks:
                    sinks[system.port] = self.lab.client.socket()
                    sinks[system.port].bind((self.lab.sink_ip, system.port))
                    sinks[system.port].settimeout(5)
            for i in range(1 + 10 * self.reps):  # the first round warms the caches
                for name, system, argv in clients:
                    t0 = time.monotonic()
                    proc = self.launch(argv, system.env())
                    try:
                        sinks[system.port].recv(2048)
                    except TimeoutError:
                        proc.kill()
                    elapsed = time.monotonic() - t0
                    _, err = proc.communicate(timeout=10)
                    if proc.returncode:
                        raise RuntimeError(f"{name} client failed: {err.decode()}")
                    if i:
                        self.results["client_start"][name].append(elapsed * 1000)
        finally:
            for sink in sinks.values():
                sink.close()

    def fresh_gnocchi(self, many_clients=False) -> None:
        """A new helper and a new verifier: the verifier's per-client and
        per-address buckets start afresh, so knocks of an earlier repetition
        limit no later one (the connect phase sends 8 sealed knocks, and 16 from the
        real client, 8 more for each --client-checkout, over the seconds the
        fwknopd trials between them take: within a burst of 20 and one a second)."""
        self.g.start_helper()
        self.g.start_verifier(many_clients)
        self.g.wake()

    def phase_connect(self) -> None:
        n = 8
        for rep in range(self.reps):
            self.fresh_gnocchi()
            for system in self.order(rep, [self.g, self.f, self.f0]):
                with self.armed(system):
                    packets = system.fresh_knocks(n)
                    for packet in packets:
                        system.reset()
                        self.watch.drain()
                        t0 = time.monotonic()
                        self.send(system, packet)
                        self.record("connect_raw", system, self._ms(self.prober.until_open(t0, 3)))
                    for _ in range(n):
                        system.reset()
                        self.watch.drain()
                        t0 = time.monotonic()
                        proc = self.launch(system.client_argv(self.lab.server.ip), system.env())
                        self.record(
                            "connect_client", system, self._ms(self.prober.until_open(t0, 5))
                        )
                        _, err = proc.communicate(timeout=10)
                        if proc.returncode:
                            raise RuntimeError(f"{system.name} client failed: {err.decode()}")
                    if system is self.g:
                        self._proxy_logins(n)

    def _proxy_logins(self, n: int) -> None:
        """`gnocchi-knock --proxy` as ssh runs it, launch -> connected: the proxy
        exits when the service (accept, close) has closed the connection it
        made, a fraction of a millisecond after it connected. Each checkout's
        client in turn, sample by sample; a login that needed a second knock
        (or none came up) is counted apart."""
        from systems import REPO

        clients = [("gnocchi", REPO)] + [(f"gnocchi {c}", c) for c in self.client_checkouts]
        for _ in range(n):
            for name, checkout in clients:
                self.g.reset()
                t0 = time.monotonic()
                proc = self.launch(self.g.proxy_argv(self.lab.server.ip, checkout), self.g.env())
                _, err = proc.communicate(timeout=20)
                elapsed = (time.monotonic() - t0) * 1000
                knocks = err.decode().count("knocked ")
                ok = proc.returncode == 0
                self.results["connect_proxy"][name].append(elapsed if ok else None)
                self.results["connect_proxy_knocks"][name].append(knocks if ok else None)

    def phase_sustained(self) -> None:
        """Closed loop: at most WINDOW knocks outstanding (sent, not yet in the
        daemon's log), so no queue overflows; valid knocks decided per second,
        each a fresh counter (gnocchi: a durable commit on this disk). Knock i
        comes from source address i % 240 and, for gnocchi, client i % 240 of
        a config with 240 more clients: at most 16 knocks each, so none meets
        the verifier's per-client or per-address limit (a fresh verifier each
        repetition, so its buckets start full)."""
        from systems import MANY_CLIENTS, SPREAD_MAX

        try:
            for rep in range(self.reps):
                for system in self.order(rep, [self.g, self.f, self.f0]):
                    if system is self.g:
                        self.fresh_gnocchi(many_clients=True)
                        packets = self.g.many_knocks(MANY_CLIENTS * SPREAD_MAX)
                    else:
                        packets = system.fresh_knocks(SUSTAINED_FWKNOPD)
                    with self.armed(system):
                        cpu0 = sum(map(cpu_seconds, system.pids().values()))
                        decided0 = system.decided()
                        said0 = Counter(self.g.helper_log.counts)
                        rate, opened, undecided = self._closed_loop(system, packets)
                        cpu = sum(map(cpu_seconds, system.pids().values())) - cpu0
                        decided = system.decided() - decided0
                    self.record("sustained", system, rate)
                    self.record("sustained_cpu", system, 1000 * cpu / max(decided, 1))
                    self.record("sustained_undecided", system, undecided)
                    if opened is not None:
                        self.record("sustained_opened", system, opened)
                    if system is self.g and opened is not None and opened < 100:
                        said = Counter(self.g.helper_log.counts) - said0
                        del said["answered"]
                        note(f"sustained: not all opened; the helper answered {dict(said)}")
        finally:
            self.fresh_gnocchi()  # the usual two-client config again

    def _closed_loop(self, system, packets, window=WINDOW, seconds=SUSTAINED_SECONDS):
        """(decided per second, % of decided that opened or None, sent but never decided)."""
        d0, o0 = system.decided(), system.opened()
        sent, t0 = 0, time.monotonic()
        while time.monotonic() - t0 < seconds and sent < len(packets):
            while sent - (system.decided() - d0) < window and sent < len(packets):
                self.sources[sent % len(self.sources)].sendto(
                    packets[sent], (self.lab.server.ip, system.port)
                )
                sent += 1
            if not system.log.wait_for("decided", d0 + sent - window + 1, 1.0):
                break  # nothing decided for a second: the rest were lost (reported)
        system.log.wait_for("decided", d0 + sent, 3)  # the ones in flight
        decided = system.decided() - d0
        if o0 is not None:  # gnocchi: the helper's log is followed apart from the verifier's
            system.helper_log.wait_for("OK", o0 + decided, 0.5)
        elapsed = system.log.last.get("decided", t0) - t0
        opened = None if o0 is None else 100.0 * (system.opened() - o0) / max(decided, 1)
        return decided / elapsed if elapsed > 0 else 0.0, opened, sent - decided

    def phase_floods(self) -> None:
        for kind, pps, spoofed in FLOODS:
            pools = {}
            for system in (self.g, self.f, self.f0):
                pools[system.name] = self.work / f"pool-{system.name.replace(' ', '-')}-{kind}"
                if not pools[system.name].exists():
                    blast.write_pool(pools[system.name], getattr(system, kind)())
            for rep in range(self.reps):
                self.fresh_gnocchi()
                for system in self.order(rep, [self.g, self.f, self.f0]):
                    with self.armed(system):
                        self._flood(
                            system,
                            flood_key(kind, pps, spoofed),
                            pps,
                            f"spoof:{SPOOFED}" if spoofed else self.lab.flood_ip,
                            pools[system.name],
                        )
        self.read_memory()  # after the floods: VmHWM holds their peak

    def _flood(self, system, key: str, pps: int, source: str, pool: Path) -> None:
        packets = system.fresh_knocks(TRIES * 3)  # made before the flood, not during it
        pids = system.pids()
        pid = pids.get("verifier", pids.get("fwknopd"))
        udp0, cpu0 = self.lab.server.udp_counters(), cpu_seconds(pid)
        flood = subprocess.Popen(
            self.lab.client.argv(
                [
                    PY,
                    str(Path(blast.__file__).resolve()),
                    source,
                    self.lab.server.ip,
                    str(system.port),
                    str(pool),
                    str(pps),
                    str(FLOOD_SECONDS + TRIES * 3 * TRY_SECONDS + 2),
                ]
            ),
            stdout=subprocess.PIPE,
            text=True,
        )
        started = time.monotonic()
        try:
            time.sleep(0.5)  # the flood at full strength
            for k in range(3):
                self.record(
                    f"{key}:knock",
                    system,
                    self._knock_until_open(system, packets[k * TRIES : (k + 1) * TRIES]),
                )
                time.sleep(0.2)
            time.sleep(max(0.0, started + FLOOD_SECONDS - time.monotonic()))
        finally:
            flood.send_signal(signal.SIGTERM)
            out, _ = flood.communicate(timeout=10)
        sent, seconds = int(out.split()[0]), float(out.split()[1])
        time.sleep(0.5)  # the queue drains
        udp1, cpu1 = self.lab.server.udp_counters(), cpu_seconds(pid)
        read = udp1["InDatagrams"] - udp0["InDatagrams"]
        lost = udp1["RcvbufErrors"] - udp0["RcvbufErrors"]  # the socket's queue was full
        self.record(f"{key}:sent_pps", system, sent / seconds)
        self.record(f"{key}:share", system, 100.0 * min(read, sent) / max(sent, 1))
        self.record(f"{key}:lost", system, 100.0 * min(lost, sent) / max(sent, 1))
        # CPU time comes in clock ticks (10 ms): a daemon the table kept the
        # flood from has too few of them to divide by.
        cpu = cpu1 - cpu0
        self.record(f"{key}:per_cpu_s", system, read / cpu if cpu >= MIN_CPU_SECONDS else None)

    def _knock_until_open(self, system, packets) -> tuple[int | None, float | None]:
        """(tries, seconds from the first knock) until a connect worked; (None, None)
        if TRIES fresh knocks, TRY_SECONDS apart, all failed."""
        system.reset()
        first = None
        for tries, packet in enumerate(packets, 1):
            self.watch.drain()
            t = time.monotonic()
            first = first or t
            self.send(system, packet)
            if self.prober.until_open(t, TRY_SECONDS) is not None:
                return tries, time.monotonic() - first
        return None, None

    def phase_cold(self) -> None:
        """The verifier not running; socket activation starts it on the knock."""
        self.fresh_gnocchi()
        for _ in range(3 * self.reps):
            self.g.start_verifier()
            packet = self.g.fresh_knocks(1)[0]
            with self.armed(self.g):
                self.watch.drain()
                t0 = time.monotonic()
                self.send(self.g, packet)
                self.record("cold", self.g, self._ms(self.prober.until_open(t0, 15)))
        self.g.log.wait_for("started", 1, 5)

    def read_memory(self) -> None:
        for role, pid in self.g.pids().items():
            self.memory[f"gnocchi {role}"] = memory_kib(pid)
        if self.fwknopd is not None:
            self.memory[self.fwknopd.name] = memory_kib(self.fwknopd.proc.pid)

    @staticmethod
    def _ms(seconds):
        return None if seconds is None else seconds * 1000


# ---- the table --------------------------------------------------------------------------


def fmt(values, digits=1, scale=1.0, suffix="", missing="never") -> str:
    """median (min..max); values that are None (a connect that never worked,
    too little CPU to divide by) are counted with the word `missing`."""
    s = summary(values)
    if s is None:
        return "—" if not values else f"{len(values)} of {len(values)} {missing}"
    med, lo, hi = (v * scale for v in s)
    failed = sum(v is None for v in values)
    text = f"{med:,.{digits}f}{suffix} ({lo:,.{digits}f}..{hi:,.{digits}f})"
    return text + (f", {failed} of {len(values)} {missing}" if failed else "")


def ratio(a, b) -> str:
    sa, sb = summary(a), summary(b)
    if not sa or not sb or not sb[0]:
        return "—"
    return f"{sa[0] / sb[0]:.2g}"


def rows(bench: Bench):
    from systems import MANY_CLIENTS, POOL

    r = bench.results
    G, F, F0 = "gnocchi", "fwknopd", "fwknopd RCT0"

    def row(
        label, metric, target=None, met=None, digits=1, names=(G, F, F0), suffix="", missing="never"
    ):
        cells = [fmt(r[metric].get(n, []), digits, suffix=suffix, missing=missing) for n in names]
        g, f, f0 = (r[metric].get(n, []) for n in names)
        judged = met is not None and summary(g)
        verdict = ("yes" if met(summary(g)[0]) else "no") if judged else "—"
        return [label, *cells, ratio(g, f), ratio(g, f0), target or "—", verdict]

    out = [
        row(
            "client launch → knock on the wire, ms",
            "client_start",
            "≤ 35",
            lambda v: v <= 35,
            names=(G, F, "-"),
        ),
        *[
            row(f"  same, {name}", "client_start", "≤ 35", lambda v: v <= 35, names=(name, F, "-"))
            for name in r["client_start"]
            if name.startswith("gnocchi ")
        ],
        row(
            "  floor: python3 -I importing PyNaCl, sending one datagram",
            "client_start",
            names=("floor", "-", "-"),
        ),
        above_floor(r["client_start"]),
        row(
            "knock → TCP connect works, raw packet, ms",
            "connect_raw",
            "p50 ≤ 1.5",
            lambda v: v <= 1.5,
            digits=2,
        ),
        [
            "  p90, ms",
            *[p90(r["connect_raw"].get(n, [])) for n in (G, F, F0)],
            "—",
            "—",
            "p90 ≤ 2.5",
            verdict(r["connect_raw"].get(G, []), 90, lambda v: v <= 2.5),
        ],
        row(
            "knock → TCP connect works, real client, ms",
            "connect_client",
            "≤ 35",
            lambda v: v <= 35,
        ),
        *[
            line
            for name in r["connect_proxy"]
            for line in (
                row(
                    "`gnocchi-knock --proxy` launch → connected"
                    f"{', ' + name[8:] if name != G else ''}, ms",
                    "connect_proxy",
                    "no 1 s SYN retransmit",
                    lambda v: v < 1000,
                    names=(name, "-", "-"),
                    missing="failed",
                ),
                row(
                    "  knocks spent per login",
                    "connect_proxy_knocks",
                    "1",
                    lambda v: v == 1,
                    digits=0,
                    names=(name, "-", "-"),
                    missing="failed",
                ),
            )
        ],
        row(
            f"valid knocks decided/s, sustained ({MANY_CLIENTS} clients, {len(bench.sources)} "
            "addresses)",
            "sustained",
            "≥ 2,000",
            lambda v: v >= 2000,
            digits=0,
        ),
        row("  of which opened, %", "sustained_opened"),
        row("  CPU per decided knock, ms (gnocchi: verifier + helper)", "sustained_cpu", digits=2),
        row(
            "  sent but never decided (over a limit, or lost)",
            "sustained_undecided",
            "0",
            lambda v: v == 0,
            digits=0,
        ),
    ]
    for kind, pps, spoofed in FLOODS:
        key = flood_key(kind, pps, spoofed)
        what = {
            "garbage": "random garbage",
            "costly": "MAC-valid, bad signature (fwknopd: bad HMAC)",
        }[kind]
        rate = f"{pps // 1000}k pps" if pps else "flat out"
        source = f"{POOL:,} spoofed sources" if spoofed else "one source"
        out.append(row(f"{what}, {rate}, {source}: sent pps", f"{key}:sent_pps", digits=0))
        out.append(row("  share read, %", f"{key}:share"))
        paced_garbage = kind == "garbage" and pps
        out.append(
            row(
                "  lost at the full socket queue, %",
                f"{key}:lost",
                "0 (all that reaches it read)" if paced_garbage else None,
                (lambda v: v <= 0.1) if paced_garbage else None,
            )
        )
        out.append(
            row(
                "  datagrams read per CPU-second",
                f"{key}:per_cpu_s",
                "≥ 400,000" if kind == "garbage" else None,
                (lambda v: v >= 400_000) if kind == "garbage" else None,
                digits=0,
                missing=f"under {MIN_CPU_SECONDS * 1000:.0f} ms of CPU",
            )
        )
        out.append(knock_row(r[f"{key}:knock"], (G, F, F0), judged=not pps))
    out.append(
        row("cold start: first knock → connect, socket activation, ms", "cold", names=(G, "-", "-"))
    )

    def mb(name):
        if name not in bench.memory:
            return "—"
        rss, peak = bench.memory[name]
        return f"{rss / 1024:.1f} (peak {peak / 1024:.1f})"

    rss = bench.memory.get("gnocchi verifier")
    out.append(
        [
            "resident memory, MB: verifier / fwknopd",
            mb("gnocchi verifier"),
            mb(F),
            mb(F0),
            _ratio_mem(bench, "gnocchi verifier", F),
            _ratio_mem(bench, "gnocchi verifier", F0),
            "≤ 16",
            "—" if not rss else ("yes" if rss[0] <= 16 * 1024 else "no"),
        ]
    )
    helper = bench.memory.get("gnocchi helper")
    out.append(
        [
            "resident memory, MB: helper",
            mb("gnocchi helper"),
            *["—"] * 4,
            "≤ 12",
            "—" if not helper else ("yes" if helper[0] <= 12 * 1024 else "no"),
        ]
    )
    return out


def percentile(values, pct) -> float | None:
    values = sorted(v for v in values if v is not None)
    return values[min(len(values) - 1, len(values) * pct // 100)] if values else None


def p90(values) -> str:
    v = percentile(values, 90)
    return "—" if v is None else f"{v:,.2f}"


def verdict(values, pct, met) -> str:
    v = percentile(values, pct)
    return "—" if v is None else ("yes" if met(v) else "no")


def above_floor(client_start: dict) -> list:
    """gnocchi-knock's own start (imports, arguments, counter state): its median launch →
    knock less the floor's, in the same run."""
    own, floor = summary(client_start.get("gnocchi", [])), summary(client_start.get("floor", []))
    cost = None if not own or not floor else own[0] - floor[0]
    shown = "—" if cost is None else f"{cost:.1f}"
    met = "—" if cost is None else ("yes" if cost <= 5 else "no")
    return ["  gnocchi-knock's own cost above the floor, ms", shown, *["—"] * 4, "≤ 5", met]


def _ratio_mem(bench, a, b):
    if a in bench.memory and b in bench.memory:
        return f"{bench.memory[a][0] / bench.memory[b][0]:.2g}"
    return "—"


def flood_key(kind: str, pps: int, spoofed: bool) -> str:
    return (f"{kind}@{pps // 1000}k" if pps else f"{kind}@max") + ("/spoofed" if spoofed else "")


def knock_row(results: dict, names, judged: bool) -> list:
    """Knocks sent mid-flood: opened on the first try within 100 ms, of all;
    then the tries and latency of those that opened at all. The target is
    for floods at the maximum rate (judged)."""
    cells, good = [], None
    for name in names:
        values = results.get(name, [])
        if not values:
            cells.append("—")
            continue
        first = sum(1 for tries, t in values if tries == 1 and t <= 0.1)
        opened = [(tries, t) for tries, t in values if tries]
        text = f"{first}/{len(values)} first try ≤ 100 ms; opened {len(opened)}/{len(values)}"
        if opened:
            text += (
                f", tries ≤ {max(t for t, _ in opened)}, {fmt([t for _, t in opened], 0, 1000)} ms"
            )
        cells.append(text)
        if name == names[0]:
            good = first == len(values)
    if not judged:
        return ["  knocks sent mid-flood from another address", *cells, "—", "—", "—", "—"]
    return [
        "  knocks sent mid-flood from another address",
        *cells,
        "—",
        "—",
        "all first try ≤ 100 ms",
        "—" if good is None else ("yes" if good else "no"),
    ]


def machine() -> str:
    cpu = next(
        (
            line.split(":", 1)[1].strip()
            for line in read("/proc/cpuinfo").splitlines()
            if line.startswith("model name")
        ),
        platform.processor(),
    )
    return f"{os.cpu_count()} CPUs ({cpu}), Linux {platform.release()}"


def render(bench: Bench, seconds: float, work_fs: str, load: str) -> str:
    head = ["figure", "gnocchi", "fwknopd", "fwknopd RCT0", "g/f", "g/f RCT0", "target", "met?"]
    lines = [
        f"machine: {machine()}; counter store on {work_fs}; {bench.reps} repetitions "
        f"in {seconds:.0f} s; load average before: {load}; gnocchi: knock protocol "
        f"v{2 if bench.g.v2 else 1}",
        "",
        "| " + " | ".join(head) + " |",
        "|" + "---|" * len(head),
    ]
    lines += ["| " + " | ".join(map(str, r)) + " |" for r in rows(bench)]
    return "\n".join(lines)


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--reps", type=int, default=3, help="repetitions of each phase (default 3)")
    p.add_argument(
        "--phases", default=",".join(PHASES), help=f"comma-separated subset of {','.join(PHASES)}"
    )
    p.add_argument(
        "--protocol",
        type=int,
        choices=(1, 2),
        default=1,
        help="gnocchi's knock protocol (2: v2 only, sealed to a public key)",
    )
    p.add_argument(
        "--client-checkout",
        type=Path,
        metavar="DIR",
        action="append",
        default=[],
        help="also time DIR's gnocchi-knock in the client phase, in turn with this "
        "checkout's (before/after); may be repeated",
    )
    args = p.parse_args()
    phases = args.phases.split(",")
    if unknown := set(phases) - set(PHASES):
        p.error(f"unknown phases: {', '.join(sorted(unknown))}")
    if not 1 <= args.reps <= 10:
        p.error("--reps must be 1..10")
    if os.geteuid() != 0:
        p.error("run as root: it creates network namespaces")
    ensure_packages()
    # Ctrl-C, SIGTERM and SIGHUP unwind through every finally below.
    for signum in (signal.SIGINT, signal.SIGTERM, signal.SIGHUP):
        signal.signal(signum, signal.default_int_handler)
    started = time.monotonic()
    load = " ".join(read("/proc/loadavg").split()[:3])  # others' load makes noise
    work = work_directory()
    lab = Lab()
    bench = None
    try:
        lab.open()
        bench = Bench(lab, work, args.reps, args.client_checkout, args.protocol)
        for phase in PHASES:
            if phase in phases:
                print(f"[{time.monotonic() - started:5.0f} s] {phase}", file=sys.stderr, flush=True)
                getattr(bench, f"phase_{phase}")()
        if "gnocchi verifier" not in bench.memory:  # no floods phase
            bench.read_memory()
        print(render(bench, time.monotonic() - started, fs_type(str(work)), load))
    except KeyboardInterrupt:
        print("compare.py: interrupted; cleaning up", file=sys.stderr)
        return 130
    finally:
        if bench is not None:
            try:
                bench.close()
            except Exception as e:  # cleanup below must still run
                print(f"compare.py: while stopping daemons: {e}", file=sys.stderr)
        lab.close()
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

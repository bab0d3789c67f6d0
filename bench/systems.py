"""The two systems under test, behind one small interface the comparison drives:

    start() / stop()       the daemons
    arm() / disarm()       its firewall gates TCP port 22 (one system at a time)
    fresh_knocks(n)        n valid, single-use knock packets for the client's address
    many_knocks(n)         n valid knocks spread over many clients (the sustained row)
    client_argv(dest)      the real client sending one knock to dest
    garbage() / costly()   flood pools: random bytes; the costliest packets that open nothing
    pids()                 the processes whose CPU and memory count
    log                    counts of the decisions each daemon logged

gnocchi runs as deployed: the root helper socket-activated on its SEQPACKET
socket, the verifier as an unprivileged user, socket-activated on a UDP socket
made as gnocchi.socket makes it, the counter store on this machine's disk.
fwknopd runs as Debian packages it (/etc/fwknop/fwknopd.conf untouched) with
an override file for what the bench changes: the UDP server instead of pcap,
its run directory, and optionally RULES_CHECK_THRESHOLD 0.
"""

from __future__ import annotations

import base64
import compileall
import json
import os
import pwd
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from pathlib import Path

from lab import Lab, run

REPO = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))
from gnocchi.server import counters, verifier
from gnocchi.shared import keys, protocol, seal  # it seals knocks itself
from nacl.secret import SecretBox

PY = "/usr/bin/python3"
TABLE_FILE = REPO / "nft" / "gnocchi.nft"
KNOCK_PORT_SET = re.compile(r"^\s*set knock_port\s*\{", re.M)
PORT = 22  # the protected TCP service
# Flood pools hold more datagrams than the verifier remembers as decided
# (verifier.RECENT): a datagram seen again is dropped cheaply as a repeat, so a
# smaller pool, sent round and round, would cost it less than a real flood.
POOL = 8192
# The sustained row: knocks spread over this many clients (and, in compare.py,
# source addresses), at most SPREAD_MAX each, so no knock meets the verifier's
# per-client limit (20 at once) or per-address limit (40 at once).
MANY_CLIENTS = 240
SPREAD_MAX = 16
# systemd's socket activation, for a socket the bench made: the descriptor
# becomes fd 3 and LISTEN_PID names the process that execs the daemon.
ACTIVATE = (
    'fd=$1; shift; [ "$fd" = 3 ] || eval "exec 3<&$fd $fd<&-"; LISTEN_FDS=1 LISTEN_PID=$$ exec "$@"'
)
# gnocchi-knock as the package installs it (packaging/bin/gnocchi-knock):
# `python3 -I`, the modules' directory put first on sys.path.
LAUNCHER = (
    "import sys; sys.path.insert(0, {!r}); from gnocchi.client.knock import main; sys.exit(main())"
)
SERVE_LAUNCHER = (
    "import sys; sys.path.insert(0, {!r}); from gnocchi.admin.__main__ import main; "
    "sys.exit(main())"
)  # packaging/bin/gnocchi
assert getattr(verifier, "RECENT", 0) < POOL, "bench: make POOL larger than verifier.RECENT"
ED25519_L = 2**252 + 27742317777372353535851937790883648493


class LogTail:
    """Follows a daemon's log file on a thread: counts what matters, keeps the
    end. A file, not a pipe: a daemon logging a line per packet under a flood
    must never wait for the bench to read (as it would not wait for syslog
    or the journal much either)."""

    def __init__(self, path: Path, classify):
        self.counts: Counter[str] = Counter()
        self.last: dict[str, float] = {}  # key -> time.monotonic() of its last count
        self.lines: list[str] = []
        self.classify = classify
        self.changed = threading.Condition()
        self.done = threading.Event()
        self.file = open(path, encoding="utf-8", errors="replace")  # noqa: SIM115 (close())
        self.thread = threading.Thread(target=self._follow, daemon=True)
        self.thread.start()

    def _follow(self):
        partial = ""
        while not self.done.is_set():
            chunk = self.file.read(1 << 16)
            if not chunk:
                time.sleep(0.002)
                continue
            *whole, partial = (partial + chunk).split("\n")
            with self.changed:
                for line in whole:
                    for key, n in self.classify(line):
                        self.counts[key] += n
                        self.last[key] = time.monotonic()
                self.lines = (self.lines + whole)[-40:]
                self.changed.notify_all()

    def wait_for(self, key: str, at_least: int, timeout: float) -> bool:
        with self.changed:
            return self.changed.wait_for(lambda: self.counts[key] >= at_least, timeout)

    def tail(self) -> str:
        return "\n".join(self.lines[-15:])

    def close(self) -> None:
        self.done.set()
        self.thread.join()
        self.file.close()


def log_file(directory: Path, name: str) -> Path:
    """A new, empty log file for one run of a daemon."""
    for i in range(1000):
        path = directory / f"{name}-{i}.log"
        if not path.exists():
            path.touch()
            return path
    raise RuntimeError("too many log files")


def stop(proc: subprocess.Popen | None, log: LogTail | None = None, timeout=5.0) -> None:
    """SIGTERM (SIGKILL after timeout), then stop following its log."""
    if proc is not None and proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    if log is not None:
        log.close()


def random_garbage(count=POOL) -> list[bytes]:
    """Random datagrams of knock sizes (160..1024 bytes): what anyone can send."""
    return [
        os.urandom(protocol.MIN_PACKET + secrets.randbelow(protocol.MAX_BODY + 1))
        for _ in range(count)
    ]


# ---- gnocchi ----------------------------------------------------------------------------


def _gnocchi_event(line: str):
    if not line.startswith("{"):
        return ()
    entry = json.loads(line)
    event = entry.get("GNOCCHI_EVENT", "")
    out = [(event, 1)]
    if event == "dropped-summary":
        out.append(("dropped", int(entry.get("GNOCCHI_DROPPED", 0))))
    if event in ("accepted", "helper-failed", "refused"):
        out.append(("decided", 1))
    return out


def _helper_event(line: str):
    m = re.match(r"gnocchi-helper: (\w+):", line)
    return [(m.group(1), 1), ("answered", 1)] if m else ()


class Gnocchi:
    name = "gnocchi"

    def __init__(self, lab: Lab, work: Path, v2: bool = False):
        """v2: knock protocol v2 only (docs/PROTOCOL.md): a server private key, `v1 =
        false`, knocks sealed to its public key, the knock port the public key's."""
        self.lab, self.work, self.v2 = lab, work / "gnocchi", v2
        self.work.mkdir()
        os.chmod(self.work, 0o755)  # the verifier (nobody) reads its config here
        self.key = keys.new_server_key()
        self.port = protocol.knock_port(self.key)
        keys.write_secret(self.work / "server.key", self.key)
        if v2:
            private = keys.new_private_key()
            keys.write_secret(self.work / "private.key", private)
            self.key = protocol.public_key(private)  # what knocks are sealed to
            self.port = protocol.knock_port(self.key)
        # Two clients: the bench's own sealed packets and the real client
        # each keep their own counter.
        self.seed = keys.new_client_seed()
        self.public = keys.public_of(self.seed)
        self.counter = time.time_ns()
        keys.write_secret(self.work / "client.key", keys.new_client_seed())
        self.client_public = keys.public_of(keys.load_secret(self.work / "client.key"))
        nobody = pwd.getpwnam("nobody")
        state = self.work / "state"
        state.mkdir()
        counters.create(str(state), nobody.pw_uid, nobody.pw_gid)  # as `gnocchi setup` makes it
        for path in (state, self.work / "server.key", *([self.work / "private.key"] * v2)):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        self.helper_socket = self.work / "helper.sock"
        (self.work / "home").mkdir()
        config = (
            f'server_key_file = "{self.work}/server.key"\n'
            + (f'v1 = false\nprivate_key_file = "{self.work}/private.key"\n' if v2 else "")
            + f'state_dir = "{state}"\n'
            f'helper_socket = "{self.helper_socket}"\n'
            f'[clients.bench]\npublic_key = "{self.public.hex()}"\nallow = ["{PORT}/tcp"]\n'
            f'[clients.user]\npublic_key = "{self.client_public.hex()}"\n'
            f'allow = ["{PORT}/tcp"]\n'
        )
        (self.work / "gnocchi.toml").write_text(config)
        # The sustained row's config: MANY_CLIENTS more, each knocking a few times.
        self.many = [keys.new_client_seed() for _ in range(MANY_CLIENTS)]
        (self.work / "gnocchi-many.toml").write_text(
            config
            + "".join(
                f'[clients.s{i}]\npublic_key = "{keys.public_of(seed).hex()}"\n'
                f'allow = ["{PORT}/tcp"]\n'
                for i, seed in enumerate(self.many)
            )
        )
        # nobody may not read the checkout (a clone under /root): its own copy.
        shutil.copytree(
            REPO / "gnocchi", self.work / "gnocchi", ignore=shutil.ignore_patterns("__pycache__")
        )
        # Byte-compiled, as the package's postinst does (dh_python3): nobody could not
        # write the .pyc, and compiling the sources at every start costs 1.5 MB resident.
        compileall.compile_dir(self.work / "gnocchi", quiet=1)
        self.knock_socket = self._knock_socket()
        self.verifier = self.helper = None
        self.log = self.helper_log = None

    def _knock_socket(self) -> socket.socket:
        """As units/gnocchi.socket makes it: ListenDatagram=PORT with
        BindIPv6Only=both (one dual-stack socket), ReceiveBuffer=256K."""
        s = self.lab.server.socket(socket.AF_INET6, socket.SOCK_DGRAM)
        s.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)
        s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 256 * 1024)
        s.bind(("::", self.port))
        return s

    # -- daemons

    def start(self) -> None:
        self.start_helper()
        self.start_verifier()
        self.wake()

    def start_helper(self, peer_user: str = "nobody") -> None:
        """The helper as gnocchi-helper.service runs it; it serves peer_user
        (the verifier's user here; root when the bench itself asks)."""
        stop(self.helper, self.helper_log)
        self.helper_socket.unlink(missing_ok=True)
        path = log_file(self.work, "helper")
        with open(path, "w") as log:
            # `python3 -I helper` as gnocchi-helper.service runs it
            self.helper = self.lab.server.popen(
                [
                    "systemd-socket-activate",
                    "--seqpacket",
                    "-l",
                    str(self.helper_socket),
                    PY,
                    "-I",
                    str(REPO / "helper"),
                    "--peer-user",
                    peer_user,
                    "--open-seconds",
                    "30",
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.helper_log = LogTail(path, _helper_event)
        for _ in range(100):
            if self.helper_socket.exists():
                break
            time.sleep(0.02)
        else:
            raise RuntimeError(f"the helper's socket never appeared:\n{self.helper_log.tail()}")
        # SocketMode=0660, SocketGroup=gnocchi (here nogroup: the verifier runs as nobody)
        os.chown(self.helper_socket, 0, pwd.getpwnam("nobody").pw_gid)
        os.chmod(self.helper_socket, 0o660)

    def start_verifier(self, many_clients=False) -> None:
        """Socket activation: the verifier starts when the first datagram arrives.
        A new verifier also starts with empty rate-limit buckets."""
        stop(self.verifier, self.log)
        config = self.work / ("gnocchi-many.toml" if many_clients else "gnocchi.toml")
        fd = self.knock_socket.fileno()
        path = log_file(self.work, "verifier")
        with open(path, "w") as log:
            self.verifier = self.lab.server.popen(
                [
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    "sh",
                    "-c",
                    ACTIVATE,
                    "sh",
                    str(fd),
                    "systemd-socket-activate",
                    "--datagram",
                    PY,
                    "-I",
                    "-c",
                    SERVE_LAUNCHER.format(str(self.work)),
                    "serve",
                    "--config",
                    str(config),
                    "--summary-interval",
                    "1",
                ],
                cwd=self.work,
                pass_fds=(fd,),
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.log = LogTail(path, _gnocchi_event)

    def wake(self) -> None:
        """One datagram, so socket activation starts the verifier; and one
        knock, so the helper is running too. Not measured."""
        self.send(self.lab.client.ip, os.urandom(200))
        if not self.log.wait_for("started", 1, 15):
            raise RuntimeError(f"the verifier did not start:\n{self.log.tail()}")
        answered, decided = self.helper_log.counts["answered"], self.log.counts["decided"]
        self.send(self.lab.client.ip, self.fresh_knocks(1)[0])
        # Both ends logged it (the table may be unarmed: the helper then says
        # NFT_FAILED), so no count a trial starts from still moves for it.
        if not (
            self.helper_log.wait_for("answered", answered + 1, 15)
            and self.log.wait_for("decided", decided + 1, 5)
        ):
            raise RuntimeError(
                f"the helper did not answer a first knock:\n{self.log.tail()}\n"
                f"{self.helper_log.tail()}"
            )

    def stop(self) -> None:
        stop(self.verifier, self.log)
        stop(self.helper, self.helper_log)
        self.verifier = self.helper = self.log = self.helper_log = None

    def pids(self) -> dict[str, int]:
        return {"verifier": self.verifier.pid, "helper": self.helper.pid}

    # -- firewall

    def arm(self, flood_limit: bool = True) -> None:
        # The file replaces the table whole, so no knock of an earlier run is left.
        # A table with a per-source limit on the knock port names that port in
        # set knock_port, which `gnocchi table load` fills from the server key
        # in the same transaction: so does this (unless told not to: no limit).
        text = TABLE_FILE.read_text()
        if flood_limit and KNOCK_PORT_SET.search(text):
            text += f"\nadd element inet gnocchi knock_port {{ {self.port} }}\n"
        self.lab.server.run("nft", "-f", "-", input=text)

    def disarm(self) -> None:
        self.lab.server.run("nft", "delete", "table", "inet", "gnocchi", check=False)

    def reset(self) -> None:
        """No opening left from an earlier knock (one a trial did not use)."""
        self.lab.server.run("nft", "flush", "set", "inet", "gnocchi", "knocked4")

    # -- packets

    def send(self, source: str, packet: bytes) -> None:
        s = self.lab.client.socket()
        with s:
            s.bind((source, 0))
            s.sendto(packet, (self.lab.server.ip, self.port))

    def build(self, seed: bytes, counter: int, server_ip: bytes) -> bytes:
        build = seal.build_packet2 if self.v2 else seal.build_packet
        return build(self.key, seed, counter, b"open %d" % PORT, server_ip)

    def fresh_knocks(self, n: int) -> list[bytes]:
        server_ip = socket.inet_aton(self.lab.server.ip)
        out = []
        for _ in range(n):
            self.counter += 1
            out.append(self.build(self.seed, self.counter, server_ip))
        return out

    def many_knocks(self, n: int) -> list[bytes]:
        """n valid knocks for the many-clients config, knock i from client
        i % MANY_CLIENTS, each client at most SPREAD_MAX times."""
        if n > MANY_CLIENTS * SPREAD_MAX:
            raise ValueError(f"at most {MANY_CLIENTS * SPREAD_MAX} knocks within the limits")
        server_ip = socket.inet_aton(self.lab.server.ip)
        out = []
        for i in range(n):
            self.counter += 1
            out.append(self.build(self.many[i % MANY_CLIENTS], self.counter, server_ip))
        return out

    def env(self) -> dict:
        """The real client's: a HOME of its own, so no profile of this machine's user."""
        env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
        return dict(env, HOME=str(self.work / "home"))

    def server_args(self) -> list[str]:
        """The server's key as a client of this protocol holds it."""
        if self.v2:
            return ["--server-public-key", self.key.hex()]
        return ["--server-key-file", str(self.work / "server.key")]

    def knock_argv(self, checkout: Path = REPO) -> list[str]:
        """gnocchi-knock with this server's keys, state and request; the target follows."""
        return [
            PY,
            "-I",
            "-c",
            LAUNCHER.format(str(checkout)),
            *self.server_args(),
            "--client-key-file",
            str(self.work / "client.key"),
            "--state-dir",
            str(self.work / "client-state"),
            "--sign-ip",
            self.lab.server.ip,
            "--request",
            f"open {PORT}",
        ]

    def client_argv(self, dest: str, checkout: Path = REPO) -> list[str]:
        return [*self.knock_argv(checkout), dest]

    def proxy_argv(self, dest: str, checkout: Path = REPO) -> list[str]:
        """`gnocchi-knock --proxy DEST 22`, as ssh's ProxyCommand runs it."""
        return [*self.knock_argv(checkout), "-v", "--proxy", dest, str(PORT)]

    def garbage(self) -> list[bytes]:
        if self.v2:  # aimed at v2: MAGIC2, then random bytes, which MAC1 drops
            return [
                protocol.MAGIC2 + g[len(protocol.MAGIC2) :] + os.urandom(24)
                for g in random_garbage()
            ]
        return random_garbage()

    def costly(self) -> list[bytes]:
        """Sealed with the real server key (every client holds it), claiming
        a configured client with a fresh counter, carrying a well-formed
        signature with a canonical S that does not verify: each costs the
        verifier the MAC check and a full Ed25519 verification."""
        if self.v2:
            return self.costly2()
        box, out = SecretBox(self.key), []
        for _ in range(POOL):
            r = os.urandom(32)
            s = (secrets.randbelow(ED25519_L)).to_bytes(32, "little")
            counter = (protocol.MAX_COUNTER - secrets.randbelow(1 << 64)).to_bytes(
                protocol.COUNTER_LEN, "big"
            )
            data = b"open %d" % PORT
            body_len = seal.random_body_length(len(data))
            plaintext = (
                protocol.MAGIC
                + self.public
                + r
                + s
                + counter
                + len(data).to_bytes(2, "big")
                + data
                + os.urandom(body_len - len(data))
            )
            out.append(bytes(box.encrypt(plaintext, os.urandom(protocol.NONCE_LEN))))
        return out

    def costly2(self) -> list[bytes]:
        """v2's costliest: sealed to the server public key (no secret needed: every
        client has it), MAC1 right, claiming a configured client with a fresh
        counter and a signature that does not verify: X25519 and Ed25519 each."""
        from nacl.public import PublicKey, SealedBox

        box, out = SealedBox(PublicKey(self.key)), []
        for _ in range(POOL):
            r = os.urandom(32)
            s = (secrets.randbelow(ED25519_L)).to_bytes(32, "little")
            counter = (protocol.MAX_COUNTER - secrets.randbelow(1 << 64)).to_bytes(
                protocol.COUNTER_LEN, "big"
            )
            data = b"open %d" % PORT
            body_len = seal.random_body_length(len(data))
            sealed = box.encrypt(
                self.public
                + r
                + s
                + counter
                + len(data).to_bytes(2, "big")
                + data
                + os.urandom(body_len - len(data))
            )
            out.append(
                protocol.MAGIC2
                + protocol.blake2b(sealed, protocol.MAC1_LEN, protocol.MAC1_PERSON, key=self.key)
                + sealed
            )
        return out

    def decided(self) -> int:
        """Valid knocks the verifier has decided (opened, or the helper refused)."""
        return self.log.counts["decided"]

    def opened(self) -> int:
        return self.helper_log.counts["OK"]


# ---- fwknopd ----------------------------------------------------------------------------

FWKNOP_PORT = 62201  # fwknopd's default UDPSERV_PORT


def _fwknopd_event(line: str):
    if "Kicking off UDP server" in line:
        return [("ready", 1)]
    if line.startswith("Added access rule"):
        return [("added", 1)]
    if "Replay detected" in line:
        return [("replay", 1)]
    if "SPA Packet from IP" in line:
        # Said for every packet from a configured source (valid or not),
        # before its HMAC; a valid one whose rule already exists (one rule a
        # second of expiry) says nothing more at the packaged verbosity.
        return [("spa", 1), ("decided", 1)]
    return [("other", 1)]


class Fwknopd:
    def __init__(self, lab: Lab, work: Path, rules_check_threshold: int | None = None):
        self.lab = lab
        self.rct = rules_check_threshold
        self.name = "fwknopd" if rules_check_threshold is None else "fwknopd RCT0"
        self.work = work / ("fwknopd" if rules_check_threshold is None else "fwknopd-rct0")
        self.work.mkdir()
        (self.work / "run").mkdir()
        (self.work / "home").mkdir()
        self.port = FWKNOP_PORT
        out = run("fwknopd", "--key-gen").stdout
        self.key = re.search(r"^KEY_BASE64:\s*(\S+)", out, re.M).group(1)
        self.hmac = re.search(r"^HMAC_KEY_BASE64:\s*(\S+)", out, re.M).group(1)
        self._write(
            self.work / "access.conf",
            # The bench's range only; the packaged stanza says ANY.
            f"SOURCE              198.18.0.0/15\n"
            f"OPEN_PORTS          tcp/{PORT}\n"
            f"KEY_BASE64          {self.key}\n"
            f"HMAC_KEY_BASE64     {self.hmac}\n",
        )
        override = (
            f"ENABLE_UDP_SERVER   Y;\n"
            f"PCAP_INTF           gb1;\n"
            f"FWKNOP_RUN_DIR      {self.work / 'run'};\n"
        )
        if rules_check_threshold is not None:
            override += f"RULES_CHECK_THRESHOLD {rules_check_threshold};\n"
        self._write(self.work / "override.conf", override)
        self.proc = None
        self.log = None
        self.gates = False

    @staticmethod
    def _write(path: Path, text: str) -> None:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)  # fwknopd insists
        with os.fdopen(fd, "w") as f:
            f.write(text)

    def start(self) -> None:
        run_dir = self.work / "run"
        path = log_file(self.work, "fwknopd")
        with open(path, "w") as log:
            # -f: in the foreground, its log lines go to stderr instead of syslog
            self.proc = self.lab.server.popen(
                [
                    "fwknopd",
                    "-f",
                    "-c",
                    "/etc/fwknop/fwknopd.conf",
                    "-O",
                    str(self.work / "override.conf"),
                    "-a",
                    str(self.work / "access.conf"),
                    "-d",
                    str(run_dir / "digest.cache"),
                    "-p",
                    str(run_dir / "fwknopd.pid"),
                ],
                stdout=subprocess.DEVNULL,
                stderr=log,
            )
        self.log = LogTail(path, _fwknopd_event)
        if not self.log.wait_for("ready", 1, 15):
            raise RuntimeError(f"fwknopd did not start:\n{self.log.tail()}")
        time.sleep(0.1)  # "Kicking off" is said just before the bind
        self.send(self.lab.client.ip, self.fresh_knocks(1)[0])
        if not self.log.wait_for("added", 1, 10):
            raise RuntimeError(f"fwknopd opened nothing for a first knock:\n{self.log.tail()}")

    def stop(self) -> None:
        stop(self.proc, self.log)  # it flushes its chains as it exits (FLUSH_IPT_AT_EXIT)
        self.proc = self.log = None

    def pids(self) -> dict[str, int]:
        return {"fwknopd": self.proc.pid}

    # -- firewall: fwknopd's own chain jumped to first, then the admin's rules

    def arm(self) -> None:
        srv = self.lab.server
        if not self.gates:
            srv.run(
                "iptables",
                "-A",
                "INPUT",
                "-m",
                "conntrack",
                "--ctstate",
                "ESTABLISHED,RELATED",
                "-j",
                "ACCEPT",
            )
            self.gates = True
        srv.run("iptables", "-A", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP")

    def disarm(self) -> None:
        self.lab.server.run(
            "iptables", "-D", "INPUT", "-p", "tcp", "--dport", str(PORT), "-j", "DROP", check=False
        )

    def reset(self) -> None:
        """No opening left from an earlier knock: an fwknopd rule admits
        every connection from the address until it expires (30 s)."""
        self.lab.server.run("iptables", "-F", "FWKNOP_INPUT")

    # -- packets

    def send(self, source: str, packet: bytes) -> None:
        s = self.lab.client.socket()
        with s:
            s.bind((source, 0))
            s.sendto(packet, (self.lab.server.ip, self.port))

    def _client(self, dest: str) -> list[str]:
        return [
            "fwknop",
            "-A",
            f"tcp/{PORT}",
            "-a",
            self.lab.client.ip,
            "-D",
            dest,
            "--use-hmac",
            "--key-base64-rijndael",
            self.key,
            "--key-base64-hmac",
            self.hmac,
        ]

    def fresh_knocks(self, n: int) -> list[bytes]:
        """n SPA packets from the real client (-T: built, not sent), each
        single use; made just before use (fwknopd refuses those over 120 s old)."""
        saved = self.work / "packets"
        saved.unlink(missing_ok=True)
        client = " ".join(map(_quote, self._client(self.lab.server.ip)))
        self.lab.client.run(
            "sh",
            "-c",
            f"for i in $(seq {n}); do {client} -T -B {saved} -b >/dev/null || exit 1; done",
            env=self.env(),
        )
        packets = [line.encode() for line in saved.read_text().split()]
        assert len(packets) == n, (len(packets), n)
        return packets

    def env(self) -> dict:
        return dict(os.environ, HOME=str(self.work / "home"))  # its ~/.fwknoprc, ~/.fwknop.run

    def client_argv(self, dest: str, checkout=None) -> list[str]:
        return self._client(dest)

    def garbage(self) -> list[bytes]:
        return random_garbage()

    def costly(self) -> list[bytes]:
        """Shaped like SPA packets (base64 text of their length) so each
        passes fwknopd's cheap checks and costs an HMAC-SHA256 and its log
        lines. A packet with a valid HMAC needs the client's keys, which
        open the port by themselves: there is no costlier packet that opens
        nothing."""
        out = []
        for _ in range(POOL):
            n = 200 + secrets.randbelow(60)
            out.append(base64.b64encode(os.urandom(n)).rstrip(b"=")[:n])
        return out

    def decided(self) -> int:
        """SPA packets it began to decide (the bench sends it only valid ones then)."""
        return self.log.counts["decided"]

    def opened(self) -> int | None:
        """Not comparable: one rule admits every connection from the address
        for 30 s, and a valid knock whose rule exists adds none."""
        return None


def _quote(s: str) -> str:
    return "'" + s.replace("'", "'\\''") + "'"

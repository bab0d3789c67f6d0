"""Helpers and fixtures for the verifier tests (conftest.py re-exports the fixtures): keys, configs, a recording helper socket, the real daemon.

The daemon runs as a real process, handed its UDP socket by
systemd-socket-activate inside the server namespace of a tests/netns.py Net,
and packets come from the client namespace. Until the real helper is used
here, HelperRecorder stands in for it: a real SOCK_SEQPACKET server that
records each request and answers a chosen status byte.
"""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "tests"))

from gnocchi import counters, keys, protocol  # noqa: E402
from netns import Net  # noqa: E402

PYTHON = sys.executable  # tests/run's venv sees the system's nacl/nftables/systemd
UDP_CLIENT = str(Path(__file__).with_name("udp_client.py"))


class Keys:
    def __init__(self, directory: Path):
        self.dir = directory
        self.server = keys.new_server_key()
        self.server_file = directory / "server.key"
        keys.write_secret(self.server_file, self.server)
        self.port = protocol.knock_port(self.server)
        self.seeds = {name: os.urandom(32) for name in ("alice", "bob", "mallory")}

    def public(self, name: str) -> str:
        return keys.public_of(self.seeds[name]).hex()


@pytest.fixture
def k(tmp_path) -> Keys:
    return Keys(tmp_path)


def write_config(tmp_path: Path, k: Keys, helper_socket: str, extra: str = "",
                 clients: str | None = None) -> Path:
    """A config with alice (22/tcp, 60001/udp, action show) and bob (443, default open 443)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    counters.create(str(state))  # as `gnocchi setup` does
    if clients is None:
        clients = f"""
[clients.alice]
public_key = "{k.public('alice')}"
allow = ["22/tcp", "60001/udp"]
actions = ["show"]

[clients.bob]
public_key = "{k.public('bob')}"
allow = ["443"]
default = "open 443"

[actions.show]
argv = ["{PYTHON}", "{Path(__file__).with_name('show_action.py')}", "{tmp_path / 'action.out'}"]
timeout = 5
"""
    path = tmp_path / "gnocchi.toml"
    path.write_text(f"""
server_key_file = "{k.server_file}"
state_dir = "{state}"
helper_socket = "{helper_socket}"
{extra}
{clients}
""")
    return path


class HelperRecorder:
    """A stand-in helper socket: records every message, answers `status`."""

    def __init__(self, path: Path, status: int = 0):
        self.path = str(path)
        self.status = status
        self.messages: list[bytes] = []
        self.sock = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        self.sock.bind(self.path)
        self.sock.listen(16)
        self.sock.settimeout(0.2)
        self._stop = False
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self):
        while not self._stop:
            try:
                conn, _ = self.sock.accept()
            except (socket.timeout, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    self.messages.append(conn.recv(64))
                    conn.send(bytes([self.status]))
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


@pytest.fixture
def helper(tmp_path):
    recorder = HelperRecorder(tmp_path / "helper.sock")
    yield recorder
    recorder.close()


@pytest.fixture
def net():
    with Net("v") as n:
        yield n


class Daemon:
    """`systemd-socket-activate -d -l ADDR gnocchi serve ...` in the server namespace."""

    def __init__(self, net: Net, config: Path, listen: str, *args: str, stderr: Path,
                 env: tuple[str, ...] = ()):
        self.stderr_path = stderr
        self.stderr = open(stderr, "wb")
        argv = ["systemd-socket-activate", "-d", "-l", listen, "-E", f"PYTHONPATH={REPO}",
                *(f"-E{e}" for e in env),
                PYTHON, "-m", "gnocchi", "serve", "--config", str(config), *args]
        self.proc = net.server.popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr)
        self.wait_for(lambda text: "Listening on" in text, what="the activated socket")

    def text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        out = []
        for line in self.text().splitlines():
            if line.startswith("{"):
                out.append(json.loads(line))
        return out

    def of(self, event: str) -> list[dict]:
        return [e for e in self.events() if e.get("GNOCCHI_EVENT") == event]

    def wait_for(self, predicate, what: str, timeout: float = 10.0):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            text = self.text()
            if predicate(text):
                return
            if self.proc.poll() is not None and not predicate(self.text()):
                raise AssertionError(f"daemon exited ({self.proc.returncode}) before {what}:\n"
                                     f"{self.text()}")
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()}")

    def wait_events(self, event: str, count: int, timeout: float = 10.0) -> list[dict]:
        self.wait_for(lambda _: len(self.of(event)) >= count,
                      what=f"{count} {event} events", timeout=timeout)
        return self.of(event)

    def stop(self) -> int:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(timeout=5)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.stderr.close()
        return self.proc.returncode


@pytest.fixture
def daemons():
    started: list[Daemon] = []

    def start(*args, **kw) -> Daemon:
        d = Daemon(*args, **kw)
        started.append(d)
        return d

    yield start
    for d in started:
        d.stop()


def send(net: Net, port: int, packets: list[bytes], to: str | None = None,
         wait: float = 0.0) -> int:
    """Send packets from the client namespace; returns how many replies came back in `wait` s."""
    host = to or net.server.ip
    out = net.client.run([PYTHON, UDP_CLIENT, host, str(port), str(wait)],
                         input="\n".join(p.hex() or "-" for p in packets), timeout=60)
    return int(out.stdout.split()[-1])


def knock(k: Keys, client: str, counter: int, data: bytes, server_ip: str,
          server_key: bytes | None = None) -> bytes:
    return protocol.build_packet(server_key or k.server, k.seeds[client], counter, data,
                                 socket.inet_aton(server_ip))


def request_bytes(version=1, family=4, proto=6, port=22, address=b"") -> bytes:
    """The contract's 22-byte helper request, written out independently of helper_client."""
    return bytes([version, family, proto, 0]) + port.to_bytes(2, "big") + address.ljust(16, b"\0")

"""The verifier in tests: keys, a config, knocks, and the real daemon.

The daemon runs as a real process, handed its UDP socket by
systemd-socket-activate inside the server namespace of a Net, and packets
come from the client namespace. Its helper is either the real one
(support.helper.Helper) or HelperRecorder, which records each request and
answers a chosen status byte.
"""
from __future__ import annotations

import os
import socket
import subprocess
import time
from pathlib import Path

from nacl._sodium import ffi

from gnocchi.server import counters
from gnocchi.shared import keys, protocol
from support.netns import Net
from support.processes import PYTHON, REPO, events, stop

SHOW_ACTION = Path(__file__).with_name("show_action.py")


def handle(verifier, packet: bytes, source, dest) -> None:
    """One datagram's bytes through the verifier as serve() takes it: up to the seal
    (protocol.unseal, a drop counted on failure), then Verifier.handle."""
    box = ffi.from_buffer(bytes(protocol.BOXZERO_LEN) + packet[protocol.NONCE_LEN:])
    opened = ffi.new("unsigned char[]", len(box))
    unsealed = protocol.unseal(len(packet), packet[:protocol.NONCE_LEN], box, opened,
                               verifier.key)
    if isinstance(unsealed, str):
        verifier.log.drop(unsealed)
        return
    verifier.handle(packet[:protocol.NONCE_LEN + protocol.MAC_LEN], unsealed, source, dest)


class Keys:
    """A fresh server key (in a file) and client seeds for alice, bob and mallory."""

    def __init__(self, directory: Path):
        self.dir = directory
        self.server = keys.new_server_key()
        self.server_file = directory / "server.key"
        keys.write_secret(self.server_file, self.server)
        self.port = protocol.knock_port(self.server)
        self.seeds = {name: os.urandom(32) for name in ("alice", "bob", "mallory")}

    def public(self, name: str) -> str:
        return keys.public_of(self.seeds[name]).hex()


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
argv = ["{PYTHON}", "{SHOW_ACTION}", "{tmp_path / 'action.out'}"]
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


def knock(k: Keys, client: str, counter: int, data: bytes, server_ip: str,
          server_key: bytes | None = None) -> bytes:
    return protocol.build_packet(server_key or k.server, k.seeds[client], counter, data,
                                 socket.inet_aton(server_ip))


class Daemon:
    """`systemd-socket-activate -d -l ADDR gnocchi serve ...` in the server namespace."""

    def __init__(self, net: Net, config: Path, listen: str, *args: str, stderr: Path,
                 env: tuple[str, ...] = ()):
        self.stderr_path = stderr
        self.stderr = open(stderr, "wb")
        argv = ["systemd-socket-activate", "-d", "-l", listen, "-E", f"PYTHONPATH={REPO}",
                *(f"-E{e}" for e in env),
                PYTHON, "-m", "gnocchi.admin", "serve", "--config", str(config), *args]
        self.proc = net.server.popen(argv, cwd=REPO, stdout=subprocess.DEVNULL,
                                     stderr=self.stderr)
        self.wait_for(lambda text: "Listening on" in text, what="the activated socket")

    def text(self) -> str:
        return self.stderr_path.read_text(errors="replace")

    def events(self) -> list[dict]:
        return events(self.text())

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
        status = stop(self.proc)
        self.stderr.close()
        return status

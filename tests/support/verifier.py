"""The verifier in tests: keys, a config, knocks, and the real daemon.

The daemon runs as a real process, handed its UDP socket by
systemd-socket-activate inside the server namespace of a Net, and packets
come from the client namespace. Its helper is either the real one
(support.helper.Helper) or HelperRecorder, which records each request and
answers a chosen status byte.
"""

from __future__ import annotations

import functools
import os
import socket
import subprocess
import time
from pathlib import Path

from nacl._sodium import ffi

from gnocchi.server import counters
from gnocchi.shared import keys, protocol, seal
from support.netns import Net
from support.processes import PYTHON, REPO, events, stop

SHOW_ACTION = Path(__file__).with_name("show_action.py")


def handle(verifier, packet: bytes, source, dest) -> None:
    """One datagram's bytes through the verifier as serve() takes it: up to the seal
    (protocol.unseal, a drop counted on failure), then Verifier.handle, then
    Verifier.settle (a batch of one)."""
    box = ffi.from_buffer(bytes(protocol.BOXZERO_LEN) + packet[protocol.NONCE_LEN :])
    opened = ffi.new("unsigned char[]", len(box))
    unsealed = protocol.unseal(
        len(packet), packet[: protocol.NONCE_LEN], box, opened, verifier.keys.v1, verifier.keys.v2
    )
    if isinstance(unsealed, str):
        verifier.log.drop(unsealed)
        return
    verifier.handle(packet[: protocol.NONCE_LEN + protocol.MAC_LEN], unsealed, source, dest)
    verifier.settle()


class Keys:
    """A fresh server key (in a file) and client seeds for alice, bob and mallory;
    with same_port, the server key and a v2 private key of one knock port (drawn
    once per test session: that takes seconds), else a v2 key of its own port."""

    def __init__(self, directory: Path, same_port: bool = False):
        self.dir = directory
        if same_port:
            self.server, self.private = same_port_keys()
        else:
            self.server, self.private = keys.new_server_key(), keys.new_private_key()
        self.server_file = directory / "server.key"
        keys.write_secret(self.server_file, self.server)
        self.private_file = directory / "private.key"
        keys.write_secret(self.private_file, self.private)
        self.port = protocol.knock_port(self.server)
        self.public2 = protocol.public_key(self.private)
        self.port2 = protocol.knock_port(self.public2)
        self.seeds = {name: os.urandom(32) for name in ("alice", "bob", "mallory")}

    def public(self, name: str) -> str:
        return keys.public_of(self.seeds[name]).hex()


@functools.cache
def same_port_keys() -> tuple[bytes, bytes]:
    """(v1 server key, v2 private key) of one knock port, as `gnocchi keygen --private
    --same-port-as` draws them."""
    server = keys.new_server_key()
    return server, keys.new_private_key(protocol.knock_port(server))


def write_config(
    tmp_path: Path, k: Keys, helper_socket: str, extra: str = "", clients: str | None = None
) -> Path:
    """A config with alice (22/tcp, 60001/udp, action show) and bob (443, default open 443)."""
    state = tmp_path / "state"
    state.mkdir(exist_ok=True)
    counters.create(str(state))  # as `gnocchi setup` does
    if clients is None:
        clients = f"""
[clients.alice]
public_key = "{k.public("alice")}"
allow = ["22/tcp", "60001/udp"]
actions = ["show"]

[clients.bob]
public_key = "{k.public("bob")}"
allow = ["443"]
default = "open 443"

[actions.show]
argv = ["{PYTHON}", "{SHOW_ACTION}", "{tmp_path / "action.out"}"]
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


def knock(
    k: Keys, client: str, counter: int, data: bytes, server_ip: str, server_key: bytes | None = None
) -> bytes:
    return seal.build_packet(
        server_key or k.server, k.seeds[client], counter, data, socket.inet_aton(server_ip)
    )


def knock2(
    k: Keys, client: str, counter: int, data: bytes, server_ip: str, public: bytes | None = None
) -> bytes:
    """A v2 knock to k's v2 key (or public), for server_ip (IPv4 or IPv6)."""
    family = socket.AF_INET6 if ":" in server_ip else socket.AF_INET
    return seal.build_packet2(
        public or k.public2, k.seeds[client], counter, data, socket.inet_pton(family, server_ip)
    )


class Daemon:
    """`systemd-socket-activate -d -l ADDR [-l ADDR2] gnocchi serve ...` in the server
    namespace."""

    def __init__(
        self,
        net: Net,
        config: Path,
        listen: str | list[str],
        *args: str,
        stderr: Path,
        env: tuple[str, ...] = (),
    ):
        self.stderr_path = stderr
        listens = [listen] if isinstance(listen, str) else listen  # one per knock port
        argv = [
            "systemd-socket-activate",
            "-d",
            *(a for one in listens for a in ("-l", one)),
            "-E",
            f"PYTHONPATH={REPO}",
            *(f"-E{e}" for e in env),
            PYTHON,
            "-m",
            "gnocchi.admin",
            "serve",
            "--config",
            str(config),
            *args,
        ]
        with open(stderr, "wb") as err:  # the daemon keeps its own copy
            self.proc = net.server.popen(argv, cwd=REPO, stdout=subprocess.DEVNULL, stderr=err)
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
                raise AssertionError(
                    f"daemon exited ({self.proc.returncode}) before {what}:\n{self.text()}"
                )
            time.sleep(0.05)
        raise AssertionError(f"timed out waiting for {what}:\n{self.text()}")

    def wait_events(self, event: str, count: int, timeout: float = 10.0) -> list[dict]:
        self.wait_for(
            lambda _: len(self.of(event)) >= count, what=f"{count} {event} events", timeout=timeout
        )
        return self.of(event)

    def stop(self) -> int:
        return stop(self.proc)

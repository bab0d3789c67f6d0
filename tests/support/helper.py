"""The root helper in tests: its request format written out a third time
(independent of gnocchi/server/helper_client.py and helper/request.py, which
tests/test_contract.py pins to the same bytes), the real helper started as
systemd starts it, a stand-in that records what a verifier sends, and, for
the unprivileged tests of the helper's decision only, its __main__ module
and a libnftables stand-in."""

from __future__ import annotations

import importlib.util
import ipaddress
import os
import shutil
import socket
import struct
import subprocess
import tempfile
import threading
import time
from pathlib import Path

from support.netns import Host
from support.processes import PYTHON, REPO, stop

# docs/contracts.md: a header (version, family, count, name length, address,
# deadline in ms), then `count` entries (proto, port), then the client's name
HEADER = struct.Struct("!BBBB16sQ")
ENTRY = struct.Struct("!BH")
STATUS = {
    name: i
    for i, name in enumerate(
        (
            "OK",
            "BAD_PEER",
            "BAD_LENGTH",
            "BAD_VERSION",
            "BAD_ADDRESS",
            "NOT_PROTECTED",
            "BAD_PROTO",
            "TOO_MANY",
            "NFT_FAILED",
            "EXPIRED",
            "BAD_COUNT",
            "BAD_DUPLICATE",
            "BAD_NAME",
        )
    )
}
NO_DEADLINE = (1 << 64) - 1  # the tests' requests wait as long as they like


def request(
    ip: str,
    port: int,
    proto: int = 6,
    *,
    more=(),
    client="alice",
    version=4,
    family=None,
    count=None,
    size=None,
    deadline_ms=NO_DEADLINE,
) -> bytes:
    """A helper request from typed values, as the verifier would build it: port
    and proto, then the (port, proto) pairs in `more`, for client; the other
    keywords (size: the name length the header says) make the malformed ones."""
    a = ipaddress.ip_address(ip)
    entries = [(port, proto), *more]
    name = client.encode() if isinstance(client, str) else client
    packed = a.packed + bytes(16 - len(a.packed))
    head = HEADER.pack(
        version,
        a.version if family is None else family,
        len(entries) if count is None else count,
        len(name) if size is None else size,
        packed,
        deadline_ms,
    )
    return head + b"".join(ENTRY.pack(number, p) for p, number in entries) + name


def requested_ports(message: bytes) -> list[tuple[int, int]]:
    """The (port, proto) pairs a well-formed request asks for."""
    end = HEADER.size + ENTRY.size * message[2]
    return [(p, number) for number, p in ENTRY.iter_unpack(message[HEADER.size : end])]


class Helper:
    """The real root helper (helper/ in the checkout) in host's namespace,
    handed its socket by systemd-socket-activate exactly as systemd would."""

    def __init__(self, host: Host, peer_user="nobody", open_seconds=30):
        # Its own directory: pytest's tmp_path is root-only, and the peer
        # (another user) must reach the socket.
        self.dir = Path(tempfile.mkdtemp(prefix="gnocchi-helper-"))
        os.chmod(self.dir, 0o755)
        self.path = self.dir / "helper.sock"
        self.log = self.dir / "helper.log"
        with open(self.log, "w") as log:
            self.proc = host.popen(
                [
                    "systemd-socket-activate",
                    "--seqpacket",
                    "-l",
                    str(self.path),
                    PYTHON,
                    str(REPO / "helper"),
                    "--peer-user",
                    peer_user,
                    "--open-seconds",
                    str(open_seconds),
                ],
                stdout=log,
                stderr=log,
            )
        for _ in range(100):  # up to 5 s
            if self.path.exists():
                break
            time.sleep(0.05)
        else:
            self.close()
            raise RuntimeError(f"the helper's socket never appeared: {self.log.read_text()}")
        # 0666, not gnocchi's 0660 root:gnocchi: the tests also connect as a
        # stranger, to show the helper's own uid check refuses it.
        os.chmod(self.path, 0o666)

    def send(self, *messages: bytes, user: str = "nobody") -> list:
        """Send each message on its own connection as user; their status bytes
        (None where the helper closed without one)."""
        group = {"nobody": "nogroup"}.get(user, user)
        code = (
            "import socket, sys\n"
            "for m in sys.argv[2:]:\n"
            "    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:\n"
            "        s.settimeout(5); s.connect(sys.argv[1]); s.send(bytes.fromhex(m))\n"
            "        r = s.recv(2); print(r[0] if len(r) == 1 else None)\n"
        )
        out = subprocess.run(
            [
                "setpriv",
                f"--reuid={user}",
                f"--regid={group}",
                "--clear-groups",
                PYTHON,
                "-c",
                code,
                str(self.path),
                *(m.hex() for m in messages),
            ],
            check=True,
            capture_output=True,
            text=True,
            timeout=60,
        ).stdout
        return [None if v == "None" else int(v) for v in out.split()]

    def log_lines(self) -> list[str]:
        return [
            line for line in self.log.read_text().splitlines() if line.startswith("gnocchi-helper:")
        ]

    def close(self):
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class HelperRecorder:
    """A stand-in helper socket for the verifier's tests: a real SOCK_SEQPACKET
    server that records every message and answers `status`."""

    def __init__(self, path: Path, status: int = 0):
        self.path = str(path)
        self.status = status
        # Each request as received, but for its deadline (the clock's, so no
        # test could write it down): that is kept apart, in deadlines, and the
        # message says NO_DEADLINE, as request() does by default.
        self.messages: list[bytes] = []
        self.deadlines: list[int] = []
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
            except (TimeoutError, OSError):
                continue
            with conn:
                conn.settimeout(2)
                try:
                    message = conn.recv(256)
                    if len(message) >= HEADER.size:  # the deadline: the header's last 8 bytes
                        self.deadlines.append(int.from_bytes(message[20:28], "big"))
                        message = message[:20] + NO_DEADLINE.to_bytes(8, "big") + message[28:]
                    self.messages.append(message)
                    conn.send(bytes([self.status]))
                except OSError:
                    pass

    def close(self):
        self._stop = True
        self.thread.join(timeout=2)
        self.sock.close()


def helper_main():
    """helper/__main__.py as a module, to call decide() in-process. It imports
    its siblings as `nft` and `request`, as when it runs: tests/conftest.py
    puts helper/ on sys.path, so they are the modules the tests import too."""
    spec = importlib.util.spec_from_file_location("helper_main", REPO / "helper" / "__main__.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


class FakeNftables:
    """Stands in for nftables.Nftables() in the helper's unprivileged unit
    tests only (tests/unit/test_helper_*.py): json_cmd answers as libnftables
    does for a table whose protected sets hold `protected` and whose knocked
    sets hold `pending` (elements as nft -j lists them), or fails where told,
    and records every command. Everywhere else the tests use the real library
    and kernel, in a namespace (tests/integration/test_helper_requests.py)."""

    def __init__(self, protected=(22,), fail_list: str = "", fail_add: str = "", pending=()):
        self.protected = list(protected)
        self.pending = list(pending)
        self.fail_list, self.fail_add = fail_list, fail_add
        self.sent: list[dict] = []

    def json_cmd(self, command: dict) -> tuple:
        self.sent.append(command)
        commands = command["nftables"][1:]  # after the metainfo
        if commands and "list" in commands[0]:
            if self.fail_list:
                return -1, "", self.fail_list
            listed = [{"metainfo": {"json_schema_version": 1}}]
            if len(commands) > 1:  # as libnftables 1.0.6: one set a call
                return -1, "", "Error: No such file or directory; did you mean set ..."
            for c in commands:
                ref = c["list"]["set"]
                if ref["name"].startswith("knocked"):
                    family = 4 if ref["name"] == "knocked4" else 6
                    elem = [
                        e
                        for e in self.pending
                        if ipaddress.ip_address(
                            e.get("elem", {"val": e})["val"]["concat"][0]
                        ).version
                        == family
                    ]
                else:
                    elem = self.protected
                listed.append({"set": dict(ref, type="inet_service", handle=1, elem=elem)})
            return 0, {"nftables": listed}, ""
        return (1, "", self.fail_add) if self.fail_add else (0, "", "")

    def commands(self) -> list[list[str]]:
        """What was sent, each call as its commands' verbs (["add", "delete", "add"], ["list",
        "list"], ...)."""
        return [[verb for c in call["nftables"][1:] for verb in c] for call in self.sent]

    def listed(self) -> list[str]:
        """The sets listed, in order."""
        return [
            c["list"]["set"]["name"]
            for call in self.sent
            for c in call["nftables"][1:]
            if "list" in c
        ]

"""The root helper in tests: its request format written out a third time
(independent of gnocchi/helper_client.py and helper/request.py, which
tests/test_contract.py pins to the same bytes), the real helper started as
systemd starts it, and a stand-in that records what a verifier sends."""
from __future__ import annotations

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

REQUEST = struct.Struct("!BBBBH16s")  # docs/contracts.md: version, family, proto, pad, port, address
STATUS = {name: i for i, name in enumerate((
    "OK", "BAD_PEER", "BAD_LENGTH", "BAD_VERSION", "BAD_ADDRESS",
    "NOT_PROTECTED", "BAD_PROTO", "RATE_LIMITED", "NFT_FAILED"))}


def request(ip: str, port: int, proto: int = 6, *, version=1, family=None, pad=0) -> bytes:
    """A helper request from typed values, as the verifier would build it;
    the keywords make the malformed ones."""
    a = ipaddress.ip_address(ip)
    packed = a.packed + bytes(16 - len(a.packed))
    return REQUEST.pack(version, a.version if family is None else family, proto, pad, port, packed)


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
                ["systemd-socket-activate", "--seqpacket", "-l", str(self.path),
                 PYTHON, str(REPO / "helper"), "--peer-user", peer_user,
                 "--open-seconds", str(open_seconds)],
                stdout=log, stderr=log)
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
            "        r = s.recv(2); print(r[0] if len(r) == 1 else None)\n")
        out = subprocess.run(
            ["setpriv", f"--reuid={user}", f"--regid={group}", "--clear-groups",
             PYTHON, "-c", code, str(self.path), *(m.hex() for m in messages)],
            check=True, capture_output=True, text=True, timeout=60).stdout
        return [None if v == "None" else int(v) for v in out.split()]

    def log_lines(self) -> list[str]:
        return [l for l in self.log.read_text().splitlines() if l.startswith("gnocchi-helper:")]

    def close(self):
        stop(self.proc)
        shutil.rmtree(self.dir, ignore_errors=True)


class HelperRecorder:
    """A stand-in helper socket for the verifier's tests: a real SOCK_SEQPACKET
    server that records every message and answers `status`."""

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

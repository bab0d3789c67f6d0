"""`run NAME`: run a configured action (docs/server.md, "Actions").

Runs in gnocchi-action@.service, under the runner (action_runner.py), never
in the verifier. Trusts the config for the program and its arguments;
trusts nothing from the knock, whose only inputs are the payload (on stdin,
never in argv) and the client's configured name and source address (in the
environment). No shell, no PATH search, no inherited file descriptors, a
fixed environment, cwd /. The action runs in its own process group, which
is killed at its timeout; it is done when its own process exits, and
whatever it leaves running then (even in a new session) is killed with the
unit's cgroup when the runner exits. Output is read up to OUTPUT_LIMIT
bytes and the rest discarded, so the runner's memory is bounded.
"""

from __future__ import annotations

import os
import selectors
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from gnocchi.server import config

TYPE_CHECKING = False  # mypy reads it as True; importing typing for it costs 0.35 MB
if TYPE_CHECKING:
    import subprocess

OUTPUT_LIMIT = 2048
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Outcome:
    returncode: int | None  # None: it did not finish (timeout) or could not start
    output: bytes  # the first OUTPUT_LIMIT bytes of stdout and stderr
    problem: str = ""  # "" if it exited 0, else what went wrong, in words
    timed_out: bool = False  # killed at its timeout (returncode None without it: not started)

    @property
    def ok(self) -> bool:
        return not self.problem


def run(
    action: config.Action,
    client_name: str,
    source_ip: str,
    payload: bytes,
    clock: Callable[[], float] = time.monotonic,
) -> Outcome:
    # Imported here: the verifier imports this module for Outcome alone, and
    # subprocess (with threading and locale) would cost it 0.6 MB resident.
    import subprocess

    env = dict(
        ENV, GNOCCHI_CLIENT=client_name, GNOCCHI_SOURCE_IP=source_ip, GNOCCHI_ACTION=action.name
    )
    try:
        proc = subprocess.Popen(
            list(action.argv),
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            env=env,
            cwd="/",
            close_fds=True,
            start_new_session=True,
        )
    except OSError as e:
        return Outcome(None, b"", f"cannot start {action.argv[0]}: {e.strerror or e}")
    deadline = clock() + action.timeout
    assert proc.stdin is not None and proc.stdout is not None  # both PIPE
    try:
        # The payload is at most 864 bytes, below any pipe's capacity: this cannot block.
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the action did not want its stdin
    output, exited = _read_bounded(proc, deadline, clock)
    returncode = proc.returncode if exited else None
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group: on timeout, or what it left running
    except ProcessLookupError:
        pass
    if returncode is None:
        proc.wait()
        return Outcome(None, output, f"killed after its timeout of {action.timeout:g} s", True)
    if returncode < 0:
        return Outcome(returncode, output, f"killed by signal {-returncode}")
    if returncode != 0:
        return Outcome(returncode, output, f"exited with status {returncode}")
    return Outcome(0, output)


def _read_bounded(
    proc: subprocess.Popen[bytes], deadline: float, clock: Callable[[], float]
) -> tuple[bytes, bool]:
    """Output until the action's own process exits (True) or the deadline: a
    child it left holding the pipe (a `setsid` daemon) cannot keep it going."""
    kept = bytearray()
    exited_in_time = False
    assert proc.stdout is not None  # PIPE
    out = proc.stdout.fileno()
    exited = os.pidfd_open(proc.pid)
    try:
        with selectors.DefaultSelector() as sel:
            sel.register(out, selectors.EVENT_READ)
            sel.register(exited, selectors.EVENT_READ)
            while clock() < deadline:
                ready = {key.fd for key, _ in sel.select(timeout=max(0.0, deadline - clock()))}
                if out in ready:
                    chunk = os.read(out, 65536)
                    kept += chunk[: OUTPUT_LIMIT - len(kept)]
                    if not chunk:
                        sel.unregister(out)  # EOF; wait for the exit alone
                if exited in ready:
                    proc.wait()
                    kept += _drain(out)[: OUTPUT_LIMIT - len(kept)]
                    exited_in_time = True
                    break
    finally:
        os.close(exited)
        proc.stdout.close()
    return bytes(kept), exited_in_time


def _drain(fd: int) -> bytes:
    """What the pipe already holds (written before the exit), without waiting."""
    os.set_blocking(fd, False)
    data = bytearray()
    for _ in range(4):  # bounded: a child may still be writing
        try:
            chunk = os.read(fd, 65536)
        except BlockingIOError:
            break
        if not chunk:
            break
        data += chunk
    return bytes(data)

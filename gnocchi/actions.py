"""`run NAME`: run a configured action (docs/server.md, "Actions").

Trusts the config for the program and its arguments; trusts nothing from the
knock, whose only inputs are the payload (on stdin, never in argv) and the
client's configured name and source address (in the environment). No shell,
no PATH search, no inherited file descriptors, a fixed environment, cwd /.
The action runs as the verifier's own user in the verifier's sandbox, in its
own process group, and is killed (with its children) at its timeout; whatever it leaves running
when it exits is killed too. Output
is read up to OUTPUT_LIMIT bytes for the log and the rest discarded, so an
action costs the verifier bounded time and memory. Actions are serialised:
the verifier waits for each, at most its timeout.
"""
from __future__ import annotations

import os
import selectors
import signal
import subprocess
import time
from dataclasses import dataclass
from typing import Optional

OUTPUT_LIMIT = 2048
ENV = {"PATH": "/usr/local/bin:/usr/bin:/bin", "LANG": "C.UTF-8"}


@dataclass(frozen=True)
class Outcome:
    returncode: Optional[int]  # None: it did not finish (timeout) or could not start
    output: bytes              # the first OUTPUT_LIMIT bytes of stdout and stderr
    problem: str = ""          # "" if it exited 0, else what went wrong, in words

    @property
    def ok(self) -> bool:
        return not self.problem


def run(action, client_name: str, source_ip: str, payload: bytes,
        clock=time.monotonic) -> Outcome:
    env = dict(ENV, GNOCCHI_CLIENT=client_name, GNOCCHI_SOURCE_IP=source_ip,
               GNOCCHI_ACTION=action.name)
    try:
        proc = subprocess.Popen(list(action.argv), stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, env=env, cwd="/", close_fds=True,
                                start_new_session=True)
    except OSError as e:
        return Outcome(None, b"", f"cannot start {action.argv[0]}: {e.strerror or e}")
    deadline = clock() + action.timeout
    try:
        # The payload is at most 864 bytes, below any pipe's capacity: this cannot block.
        proc.stdin.write(payload)
        proc.stdin.close()
    except BrokenPipeError:
        pass  # the action did not want its stdin
    output = _read_bounded(proc, deadline, clock)
    try:
        returncode = proc.wait(timeout=max(0.0, deadline - clock()))
    except subprocess.TimeoutExpired:
        returncode = None
    try:
        os.killpg(proc.pid, signal.SIGKILL)  # the group: on timeout, or what it left running
    except ProcessLookupError:
        pass
    if returncode is None:
        proc.wait()
        return Outcome(None, output, f"killed after its timeout of {action.timeout:g} s")
    if returncode != 0:
        return Outcome(returncode, output, f"exited with status {returncode}")
    return Outcome(0, output)


def _read_bounded(proc, deadline: float, clock) -> bytes:
    kept = bytearray()
    with selectors.DefaultSelector() as sel:
        sel.register(proc.stdout, selectors.EVENT_READ)
        while clock() < deadline:
            if not sel.select(timeout=max(0.0, deadline - clock())):
                continue
            chunk = os.read(proc.stdout.fileno(), 65536)
            if not chunk:
                break  # EOF: the action (and anything it started) closed its output
            kept += chunk[:OUTPUT_LIMIT - len(kept)]
    proc.stdout.close()
    return bytes(kept)


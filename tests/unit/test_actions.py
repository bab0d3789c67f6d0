"""gnocchi.server.actions: the payload on stdin, a fixed environment, bounded
output, a timeout that kills the group."""

import os
import subprocess
import time

from gnocchi.server import actions
from gnocchi.server.config import Action
from support import PYTHON


def test_action_gets_payload_and_only_its_environment():
    script = (
        "import os, sys; d = sys.stdin.read(); "
        "print(d, os.environ['GNOCCHI_CLIENT'], len(os.environ))"
    )
    out = actions.run(Action("t", (PYTHON, "-c", script), 10), "alice", "198.18.3.1", b"hi")
    assert out.ok and out.returncode == 0
    assert out.output == f"hi alice {len(actions.ENV) + 3}\n".encode()


def test_action_timeout_kills_it_and_its_children():
    # A duration no other process uses, so pgrep below sees only this child.
    marker = f"30.{os.getpid()}{time.monotonic_ns() % 100000}"
    script = (
        f"import subprocess, time; subprocess.Popen(['sleep', '{marker}']); "
        "print('x', flush=True); time.sleep(30)"
    )
    out = actions.run(Action("t", (PYTHON, "-c", script), 0.5), "a", "198.18.3.1", b"")
    assert out.returncode is None and "killed after its timeout of 0.5 s" in out.problem
    assert out.output == b"x\n"
    leftover = subprocess.run(["pgrep", "-f", f"^sleep {marker}$"], capture_output=True, text=True)
    assert leftover.stdout == ""  # the child went with the group


def test_action_output_is_bounded_and_failures_are_named():
    out = actions.run(Action("t", ("/usr/bin/yes",), 0.3), "a", "198.18.3.1", b"")
    assert len(out.output) == actions.OUTPUT_LIMIT and not out.ok
    out = actions.run(Action("t", ("/bin/false",), 5), "a", "198.18.3.1", b"")
    assert out.problem == "exited with status 1"
    out = actions.run(Action("t", ("/nonexistent/prog",), 5), "a", "198.18.3.1", b"")
    assert out.problem.startswith("cannot start /nonexistent/prog")

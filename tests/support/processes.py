"""Processes the tests start: the checkout's CLI, stopping, and the JSON
events a verifier writes on stderr outside systemd (gnocchi/server/events.py);
and root_only, for a test that only root can set up."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
PYTHON = "/usr/bin/python3"  # the distribution's interpreter and its nacl/nftables/systemd


def root_only(why: str) -> pytest.MarkDecorator:
    """Skip the test, saying why, unless it runs as root (the fast loop runs as anyone)."""
    return pytest.mark.skipif(os.geteuid() != 0, reason=f"needs root: {why}")


def gnocchi_cli(*args, check: bool = False, timeout: float = 30) -> subprocess.CompletedProcess:
    """`python3 -m gnocchi.admin ARGS` from the checkout, as a user runs it."""
    return subprocess.run(
        [PYTHON, "-m", "gnocchi.admin", *map(str, args)],
        cwd=REPO,
        check=check,
        capture_output=True,
        text=True,
        timeout=timeout,
    )


def stop(proc: subprocess.Popen) -> int:
    """SIGTERM, then SIGKILL after 5 s; the exit status."""
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(5)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
    return proc.returncode


def events(text: str) -> list[dict]:
    """The JSON event lines in a verifier's stderr, in order."""
    return [json.loads(line) for line in text.splitlines() if line.startswith("{")]

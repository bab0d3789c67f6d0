"""The README's demo command runs the whole flow and shows what it claims."""

import os
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="the demo creates network namespaces")


def test_demo_shows_one_connection_per_knock_and_the_audit_trail():
    run = subprocess.run(
        ["bash", str(ROOT / "demo" / "run")],
        capture_output=True,
        text=True,
        timeout=120,
        stdin=subprocess.DEVNULL,
    )
    out = run.stdout
    assert run.returncode == 0, run.stdout + run.stderr
    names = re.search(r"network namespaces (gnocchi-demo-\d+)-client, ", out).group(1)
    work = re.search(r'server_key_file = "(/tmp/gnocchi-demo\.[^/]+)/', out).group(1)
    assert "Before a knock: port 22 is closed" in out
    assert "connection 1: connected" in out
    assert "connection 2: no answer" in out
    assert "connection 3: no answer" in out
    assert "connection 1: still connected" in out
    assert "GNOCCHI_EVENT=accepted" in out and "GNOCCHI_EVENT=refused" in out
    assert "GNOCCHI_HELPER_STATUS=OK" in out
    # Everything it made is gone: namespaces and the processes inside them.
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert names not in netns
    procs = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert names not in procs and work not in procs

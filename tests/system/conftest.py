"""Fixtures for the system tests: the .debs.

They are built once per session with packaging/build-deb (exactly the
documented build), into a temporary directory; `deb` is gnocchi-server's,
with gnocchi-client's and the transitional gnocchi-knock's beside it.
GNOCCHI_DEB=/path/to/gnocchi-server_VERSION_all.deb tests already-built
packages instead (the others in the same directory).
"""

import os
import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="session")
def deb(tmp_path_factory) -> Path:
    if os.environ.get("GNOCCHI_DEB"):
        return Path(os.environ["GNOCCHI_DEB"])
    out = tmp_path_factory.mktemp("deb")
    proc = subprocess.run(
        [str(REPO / "packaging" / "build-deb"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"packaging/build-deb failed:\n{proc.stdout}\n{proc.stderr}")
    return Path(proc.stdout.strip().splitlines()[-1])

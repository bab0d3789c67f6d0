"""The verifier and the root helper load no module they never run: each one
costs resident memory for as long as the daemon runs.

Each starts as its unit starts it (`python3 -I`, the launcher's sys.path), with
a command line it parses and then refuses at once (a config that does not exist;
no socket from systemd): so every module-level import and the argument parsing
run. `-X importtime` lists every module it loaded. Measured with VmRSS (python3
3.11, Debian 12): subprocess with threading and locale 0.6 MB; shutil (argparse
imports it to ask the terminal's width, with bz2, lzma, zlib, fnmatch) 0.5 MB;
typing 0.35 MB. Nothing here is timed.
"""

import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
# The verifier never runs an action (the runner does: gnocchi-action@.service).
NOT_FOR_THE_VERIFIER = ("subprocess", "threading", "shutil")
# The helper's types need no typing module.
NOT_FOR_THE_HELPER = ("subprocess", "threading", "typing", "dataclasses")
LAUNCHER = (
    "import sys; sys.path.insert(0, {!r}); from gnocchi.admin.__main__ import main; "
    "sys.exit(main())"
)  # packaging/bin/gnocchi


def loaded(argv: list[str]) -> set[str]:
    result = subprocess.run(
        [sys.executable, "-I", "-X", "importtime", *argv],
        capture_output=True,
        text=True,
        timeout=60,
        env={},
    )
    assert result.returncode != 0, "it was meant to refuse its start"
    lines = [line for line in result.stderr.splitlines() if line.startswith("import time:")]
    return {line.split("|")[-1].strip() for line in lines[1:]}


def test_the_verifier_loads_no_module_it_never_runs(tmp_path):
    modules = loaded(
        ["-c", LAUNCHER.format(str(REPO)), "serve", "--config", str(tmp_path / "missing.toml")]
    )
    assert "gnocchi.server.knock_socket" in modules and "argparse" in modules
    assert sorted(modules.intersection(NOT_FOR_THE_VERIFIER)) == []


def test_the_helper_loads_no_module_it_never_runs():
    modules = loaded([str(REPO / "helper"), "--peer-user", "root"])
    assert {"nft", "request", "nftables", "argparse"} <= modules
    assert sorted(modules.intersection(NOT_FOR_THE_HELPER)) == []

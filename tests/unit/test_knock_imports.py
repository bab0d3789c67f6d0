"""gnocchi-knock loads only what a knock needs: nothing of the server side.

The client runs in a subprocess as the installed launcher runs it (`python3
-I`, the modules' directory first on sys.path), sends a real knock to a UDP
socket on 127.0.0.1, and then lists every module it loaded (those the bare
interpreter had already loaded are not its doing). A server-side import on the
client's path (the verifier, its config, the counter store, the audit log, the
helper's client, libnftables, systemd), or one of the modules that once made
the client slow to start, shows up here on any machine, fast or slow: this
test times nothing.
"""

import os
import select
import subprocess
import sys
from pathlib import Path

import pytest

from support.client import LOOPBACK, knock_catcher, write_key

REPO = Path(__file__).resolve().parents[2]
# The client's folders (gnocchi/__init__.py): a module of server/ or admin/ is
# server-side.
CLIENT_PACKAGES = ("gnocchi.client", "gnocchi.shared")
SERVER_LIBRARIES = ("nftables", "systemd")
# What a knock never uses, each about a millisecond or more of the client's
# start (bench/client_start.py): secrets (for one random number: os.urandom
# does) brings hmac and hashlib, which loads OpenSSL; dataclasses (named
# tuples do) brings inspect and ast; PyNaCl's own modules import every
# binding, and nacl.encoding typing (protocol calls libsodium through
# nacl._sodium); argparse imports shutil for the terminal width unless told
# it; getaddrinfo encodes a host with the IDNA codec, an IP address too.
NOT_FOR_A_KNOCK = (
    "secrets",
    "hmac",
    "hashlib",
    "_hashlib",
    "dataclasses",
    "inspect",
    "nacl.bindings",
    "nacl.encoding",
    "nacl.signing",
    "nacl.secret",
    "nacl.public",
    "nacl.hash",
    "shutil",
    "encodings.idna",
)
# Only a profile file needs these: tomllib imports typing, and the profile's
# key files are Path objects (pathlib brings urllib.parse and ipaddress); a
# knock with flags alone reads no file and its paths are strings.
NOT_FOR_A_KNOCK_WITH_FLAGS = ("typing", "pathlib", "urllib.parse", "ipaddress")
PROBE = (
    "import sys\n"
    "bare = set(sys.modules)\n"
    "sys.path.insert(0, sys.argv.pop(1))\n"
    "from gnocchi.client.knock import main\n"
    "rc = main(sys.argv[1:])\n"
    "print('\\n'.join(sorted(set(sys.modules) - bare)))\n"
    "sys.exit(rc)\n"
)


@pytest.fixture
def knock(tmp_path):
    """Runs one knock with the given extra arguments; returns the modules it loaded."""
    udp, server_key = knock_catcher()
    home = tmp_path / "home"
    home.mkdir()
    env = {k: v for k, v in os.environ.items() if not k.startswith(("XDG_", "PYTHON"))}
    env["HOME"] = str(home)
    keys = [
        "--server-key-file",
        str(write_key(tmp_path / "server.key", server_key)),
        "--client-key-file",
        str(write_key(tmp_path / "client.key", os.urandom(32))),
        "--state-dir",
        str(tmp_path / "state"),
    ]

    def run(*args: str) -> set[str]:
        result = subprocess.run(
            [sys.executable, "-I", "-c", PROBE, str(REPO), *keys, *args],
            env=env,
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 0, result.stderr
        assert select.select([udp], [], [], 5)[0], "no knock arrived"
        udp.recv(2048)
        return set(result.stdout.split())

    try:
        yield run, home
    finally:
        udp.close()


def server_side(modules: set[str]) -> list[str]:
    return sorted(
        m
        for m in modules
        if (m.startswith("gnocchi.") and not m.startswith(CLIENT_PACKAGES))
        or m.split(".")[0] in SERVER_LIBRARIES
    )


def test_a_knock_with_flags_loads_no_server_module_and_no_toml_parser(knock):
    run, _ = knock
    modules = run("--request", "open 22", LOOPBACK)
    assert "gnocchi.client.knock" in modules and "gnocchi.shared.protocol" in modules
    assert server_side(modules) == []
    assert "tomllib" not in modules  # no profile file: nothing to parse
    assert sorted(modules.intersection(NOT_FOR_A_KNOCK + NOT_FOR_A_KNOCK_WITH_FLAGS)) == []


def test_a_knock_through_a_profile_loads_no_server_module(knock):
    run, home = knock
    config = home / ".config" / "gnocchi"
    config.mkdir(parents=True)
    (config / "knock.toml").write_text(
        f'[profiles.here]\nhost = "{LOOPBACK}"\nsign_ip = "{LOOPBACK}"\nrequest = "open 22"\n'
    )
    modules = run("here")
    assert "tomllib" in modules  # the profile was read
    assert server_side(modules) == []
    assert sorted(modules.intersection(NOT_FOR_A_KNOCK)) == []

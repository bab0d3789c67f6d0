"""The client on its own: `gnocchi-knock --keygen` makes the client key without
the server's `gnocchi` command, and the client's import path works where the
fcntl module does not exist. Both run gnocchi-knock as a subprocess of the
checkout, with HOME and XDG_* pointing into tmp_path."""

import os
import re
import stat
import subprocess
import sys
from pathlib import Path

from nacl import bindings as sodium

from support.client import LOOPBACK, knock_catcher, write_key

REPO = Path(__file__).resolve().parents[2]
# Stands in for a platform without the fcntl module: everything the client
# imports must work without it (macOS and the BSDs have fcntl, but the client's
# path is held to POSIX os alone, so no Linux-only module sneaks in).
NO_FCNTL = (
    "import sys\n"
    "sys.modules['fcntl'] = None  # import fcntl now raises ImportError\n"
    "from gnocchi.client.knock import main\n"
    "sys.exit(main())\n"
)


def env_for(home: Path, **extra) -> dict:
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env.update(HOME=str(home), **extra)
    return env


def knock_cli(*args, env, code=None):
    argv = [sys.executable] + (["-c", code] if code else ["-m", "gnocchi.client.knock"])
    return subprocess.run(
        argv + [*map(str, args)], cwd=REPO, env=env, capture_output=True, text=True, timeout=30
    )


def test_keygen_on_a_fresh_account_makes_the_directories_and_prints_the_public_key(tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    result = knock_cli("--keygen", env=env_for(home))
    assert result.returncode == 0, result.stderr
    key = home / ".config" / "gnocchi" / "client.key"
    seed = bytes.fromhex(key.read_text())
    public, _ = sodium.crypto_sign_seed_keypair(seed)
    assert result.stdout == public.hex() + "\n"
    assert "gnocchi add-client NAME PUBKEY" in result.stderr
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    for directory in (home / ".config", home / ".config" / "gnocchi"):
        assert stat.S_IMODE(directory.stat().st_mode) == 0o700, directory


def test_keygen_follows_xdg_config_home_and_takes_a_path(tmp_path):
    result = knock_cli("--keygen", env=env_for(tmp_path, XDG_CONFIG_HOME=str(tmp_path / "cfg")))
    assert result.returncode == 0, result.stderr
    assert (tmp_path / "cfg" / "gnocchi" / "client.key").exists()
    result = knock_cli("--keygen", tmp_path / "elsewhere" / "k", env=env_for(tmp_path))
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", result.stdout)


def test_keygen_never_overwrites(tmp_path):
    key = tmp_path / "client.key"
    key.write_text("precious\n")
    result = knock_cli("--keygen", key, env=env_for(tmp_path))
    assert result.returncode == 1 and result.stdout == ""
    assert f"{key}: already exists" in result.stderr
    assert key.read_text() == "precious\n"


def test_the_client_knocks_without_the_fcntl_module(tmp_path):
    """A stand-in for macOS/BSD portability: with `import fcntl` failing, gnocchi-knock
    still knocks (the counter lock falls back to os.lockf), counters still rise."""
    udp, server_key = knock_catcher()
    try:
        seed = os.urandom(32)
        args = [
            "--server-key-file",
            write_key(tmp_path / "server.key", server_key),
            "--client-key-file",
            write_key(tmp_path / "client.key", seed),
            "--state-dir",
            tmp_path / "state",
            LOOPBACK,
        ]
        counters = []
        for _ in range(2):
            result = knock_cli(*args, env=env_for(tmp_path), code=NO_FCNTL)
            assert result.returncode == 0, result.stderr
            packet = udp.recv(2048)
            plain = sodium.crypto_secretbox_open(packet[24:], packet[:24], server_key)
            public, _ = sodium.crypto_sign_seed_keypair(seed)
            assert plain[8:40] == public
            counters.append(int.from_bytes(plain[104:118], "big"))
        assert counters[1] > counters[0]
        hides = NO_FCNTL.replace(
            "from gnocchi.client.knock", "import fcntl\nfrom gnocchi.client.knock"
        )
        proof = knock_cli("--keygen", tmp_path / "k2", env=env_for(tmp_path), code=hides)
        assert "ImportError" in proof.stderr or "ModuleNotFoundError" in proof.stderr, (
            "the stand-in really hides fcntl"
        )
    finally:
        udp.close()


def test_pubkey_prints_the_public_key_again_and_names_a_missing_key(tmp_path):
    """A client that lost the printed public key gets it back; --keygen would refuse the
    existing file, and the server's `gnocchi pubkey` is not on a client."""
    home = tmp_path / "home"
    home.mkdir()
    made = knock_cli("--keygen", env=env_for(home))
    assert made.returncode == 0, made.stderr
    again = knock_cli("--pubkey", env=env_for(home))
    assert again.returncode == 0 and again.stdout == made.stdout, again.stderr
    other = knock_cli("--keygen", tmp_path / "other.key", env=env_for(home))
    assert knock_cli("--pubkey", tmp_path / "other.key", env=env_for(home)).stdout == other.stdout
    missing = knock_cli("--pubkey", tmp_path / "nope.key", env=env_for(home))
    assert missing.returncode == 1 and missing.stdout == ""
    assert (
        f"{tmp_path / 'nope.key'}: no such secret key file; fix: check the path; a client "
        "makes its key with `gnocchi-knock --keygen`"
    ) in missing.stderr

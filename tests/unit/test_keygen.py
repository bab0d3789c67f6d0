"""`python3 -m gnocchi.admin keygen|pubkey|port` as a user runs them: subprocesses,
asserting exit code, stdout and stderr."""

import os
import re
import stat
import subprocess

from nacl.encoding import RawEncoder
from nacl.hash import blake2b
from nacl.signing import SigningKey

from support import gnocchi_cli


def port_of(key: bytes) -> int:
    h = blake2b(key, digest_size=32, encoder=RawEncoder)  # PROTOCOL.md, "Knock port"
    return h[30] * 256 + h[31]


def test_keygen_server_prints_the_port_of_the_key_it_wrote(tmp_path):
    result = gnocchi_cli("keygen", "--server", tmp_path / "server.key")
    assert result.returncode == 0, result.stderr
    text = (tmp_path / "server.key").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text)
    assert stat.S_IMODE(os.stat(tmp_path / "server.key").st_mode) == 0o600
    port = port_of(bytes.fromhex(text))
    assert result.stdout == f"{port}\n" and port > 1024
    ported = gnocchi_cli("port", tmp_path / "server.key")
    assert ported.stdout == f"{port}\n"
    # The fingerprint, for comparing with gnocchi-knock -v, on stderr: scripts read stdout.
    assert re.fullmatch(r"server key fingerprint [0-9a-f]{4}(-[0-9a-f]{4}){3}\n", result.stderr)
    assert ported.stderr == result.stderr


def test_keygen_client_prints_the_public_key(tmp_path):
    result = gnocchi_cli("keygen", "--client", tmp_path / "client.key")
    assert result.returncode == 0, result.stderr
    seed = bytes.fromhex((tmp_path / "client.key").read_text())
    public = bytes(SigningKey(seed).verify_key).hex()
    assert result.stdout == public + "\n"
    assert gnocchi_cli("pubkey", tmp_path / "client.key").stdout == public + "\n"


def test_keygen_draws_different_keys(tmp_path):
    for name in "ab":
        assert gnocchi_cli("keygen", "--client", tmp_path / name).returncode == 0
    assert (tmp_path / "a").read_text() != (tmp_path / "b").read_text()


def test_keygen_refuses_to_overwrite(tmp_path):
    (tmp_path / "server.key").write_text("precious\n")
    result = gnocchi_cli("keygen", "--server", tmp_path / "server.key")
    assert result.returncode == 1 and result.stdout == ""
    assert f"{tmp_path / 'server.key'}: already exists" in result.stderr
    assert (tmp_path / "server.key").read_text() == "precious\n"


def test_keygen_client_makes_missing_directories_0700(tmp_path):
    """The Quick start's first command on a fresh account: ~/.config/gnocchi is missing."""
    os.chmod(tmp_path, 0o755)
    result = gnocchi_cli("keygen", "--client", tmp_path / "no" / "such" / "k")
    assert result.returncode == 0, result.stderr
    assert re.fullmatch(r"[0-9a-f]{64}\n", result.stdout)
    for directory in (tmp_path / "no", tmp_path / "no" / "such"):
        assert stat.S_IMODE(os.stat(directory).st_mode) == 0o700, directory
    assert stat.S_IMODE(os.stat(tmp_path).st_mode) == 0o755, "an existing directory is left alone"


def test_keygen_server_into_a_missing_directory(tmp_path):
    result = gnocchi_cli("keygen", "--server", tmp_path / "no" / "such" / "dir" / "k")
    assert result.returncode == 1
    assert "cannot create" in result.stderr and str(tmp_path / "no") in result.stderr


def test_keygen_needs_exactly_one_kind(tmp_path):
    assert gnocchi_cli("keygen").returncode == 2
    both = gnocchi_cli("keygen", "--server", tmp_path / "a", "--client", tmp_path / "b")
    assert both.returncode == 2
    assert not (tmp_path / "a").exists()


def test_pubkey_of_a_tr_made_key(tmp_path):
    path = tmp_path / "client.key"
    subprocess.run(
        ["sh", "-c", f"umask 077; tr </dev/urandom -dc 0-9a-f | head -c 64 > {path}"], check=True
    )
    result = gnocchi_cli("pubkey", path)
    assert result.returncode == 0, result.stderr
    seed = bytes.fromhex(path.read_text())
    assert result.stdout == bytes(SigningKey(seed).verify_key).hex() + "\n"


def test_errors_name_the_file_and_exit_1(tmp_path):
    loose = tmp_path / "loose.key"
    loose.write_text("ab" * 32 + "\n")
    loose.chmod(0o644)
    short = tmp_path / "short.key"
    short.write_text("ab" * 31 + "\n")
    short.chmod(0o600)
    cases = [
        (
            ("pubkey", loose),
            f"gnocchi pubkey: {loose}: secret key is open to group or others "
            f"(mode 0644); fix: chmod 600 {loose}",
        ),
        (("port", short), f"gnocchi port: {short}: holds 62 hex characters"),
        (("port", tmp_path / "none"), f"gnocchi port: {tmp_path / 'none'}: no such"),
    ]
    for args, message in cases:
        result = gnocchi_cli(*args)
        assert result.returncode == 1, args
        assert result.stdout == ""
        assert result.stderr.startswith(message), result.stderr
        assert result.stderr.count("\n") == 1, "one line, no traceback"


def test_port_refuses_a_key_with_a_low_port(tmp_path):
    low = next(k for k in (i.to_bytes(32, "big") for i in range(100000)) if port_of(k) <= 1024)
    path = tmp_path / "low.key"
    path.write_text(low.hex() + "\n")
    path.chmod(0o600)
    result = gnocchi_cli("port", path)
    assert result.returncode == 1
    assert f"knock port {port_of(low)} is 1024 or lower" in result.stderr

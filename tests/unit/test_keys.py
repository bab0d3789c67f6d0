"""gnocchi.shared.keys: the key file format of PROTOCOL.md, permissions, and errors that
name the file and the fix."""

import os
import stat
import subprocess

import pytest

from gnocchi.shared import keys
from gnocchi.shared.protocol import knock_port
from support import root_only

HEX = "0123456789abcdef" * 4


def put(path, content: bytes, mode=0o600):
    path.write_bytes(content)
    os.chmod(path, mode)
    return path


def test_write_secret_creates_0600_hex_and_newline(tmp_path):
    key = os.urandom(32)
    old = os.umask(0)  # even with a permissive umask
    try:
        keys.write_secret(tmp_path / "k", key)
    finally:
        os.umask(old)
    assert stat.S_IMODE(os.stat(tmp_path / "k").st_mode) == 0o600
    assert (tmp_path / "k").read_text() == key.hex() + "\n"
    assert keys.load_secret(tmp_path / "k") == key


def test_write_secret_never_overwrites(tmp_path):
    put(tmp_path / "k", b"old")
    with pytest.raises(keys.KeyFileError, match="already exists") as e:
        keys.write_secret(tmp_path / "k", os.urandom(32))
    assert str(tmp_path / "k") in str(e.value)
    assert (tmp_path / "k").read_bytes() == b"old"


def test_write_secret_refuses_a_symlink_even_to_nowhere(tmp_path):
    os.symlink(tmp_path / "target", tmp_path / "link")
    with pytest.raises(keys.KeyFileError):
        keys.write_secret(tmp_path / "link", os.urandom(32))
    assert not (tmp_path / "target").exists()


@pytest.mark.parametrize(
    "content", [HEX.encode(), HEX.encode() + b"\n", HEX.upper().encode() + b"\n"]
)
def test_accepted_forms(tmp_path, content):
    assert keys.load_secret(put(tmp_path / "k", content)) == bytes.fromhex(HEX)


def test_the_tr_head_recipe_makes_a_key_file(tmp_path):
    """PROTOCOL.md: `tr </dev/urandom -dc 0-9a-f | head -c 64` (with or without `; echo`)."""
    for name, recipe in (
        ("bare", "tr </dev/urandom -dc 0-9a-f | head -c 64"),
        ("echo", "tr </dev/urandom -dc 0-9a-f | head -c 64; echo"),
    ):
        path = tmp_path / name
        subprocess.run(["sh", "-c", f"umask 077; ({recipe}) > {path}"], check=True)
        assert len(keys.load_secret(path)) == 32


@pytest.mark.parametrize(
    "content, words",
    [
        (b"", "holds 0 hex characters"),
        (HEX[:62].encode() + b"\n", "holds 62 hex characters"),
        (HEX.encode() + b"0\n", "more after the 64 hex"),
        (HEX.encode() + b"\n\n", "more after the 64 hex"),
        (HEX.encode() + b" \n", "more after the 64 hex"),
        (HEX.encode() + b"\r\n", "more after the 64 hex"),
        (b" " + HEX.encode(), "character 1 is ' '"),
        (HEX[:10].encode() + b"g" + HEX[11:].encode(), "character 11 is 'g'"),
        (b"-----BEGIN OPENSSH PRIVATE KEY-----\n" * 4, "not a hex digit"),
    ],
)
def test_bad_content_names_the_file_and_problem(tmp_path, content, words):
    path = put(tmp_path / "bad.key", content)
    with pytest.raises(keys.KeyFileError) as e:
        keys.load_secret(path)
    assert str(e.value).startswith(f"{path}: ")
    assert words in str(e.value)


@pytest.mark.parametrize("mode", [0o640, 0o604, 0o644, 0o660, 0o666, 0o620])
def test_loose_secret_is_refused_with_the_chmod_fix(tmp_path, mode):
    path = put(tmp_path / "k", HEX.encode() + b"\n", mode)
    with pytest.raises(keys.KeyFileError) as e:
        keys.load_secret(path)
    assert f"mode {mode:04o}" in str(e.value)
    assert f"chmod 600 {path}" in str(e.value)


def test_read_only_owner_mode_is_fine(tmp_path):
    assert keys.load_secret(put(tmp_path / "k", HEX.encode(), 0o400)) == bytes.fromhex(HEX)


def test_secret_is_not_read_through_a_symlink(tmp_path):
    put(tmp_path / "real", HEX.encode())
    os.symlink(tmp_path / "real", tmp_path / "link")
    with pytest.raises(keys.KeyFileError, match="symbolic link"):
        keys.load_secret(tmp_path / "link")


def test_missing_and_directory(tmp_path):
    with pytest.raises(keys.KeyFileError, match="no such secret key file") as e:
        keys.load_secret(tmp_path / "nope")
    assert "gnocchi keygen" in str(e.value)
    with pytest.raises(keys.KeyFileError, match="not a regular file"):
        keys.load_secret(tmp_path)


def test_a_fifo_is_refused_without_hanging(tmp_path):
    os.mkfifo(tmp_path / "fifo", 0o600)
    with pytest.raises(keys.KeyFileError, match="not a regular file"):
        keys.load_secret(tmp_path / "fifo")


@root_only("the key is read as another user (setpriv)")
def test_unreadable_file_for_another_user(tmp_path):
    path = put(tmp_path / "k", HEX.encode(), 0o600)
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            "/usr/bin/python3",
            "-c",
            f"from gnocchi.shared import keys; keys.load_secret({str(path)!r})",
        ],
        capture_output=True,
        text=True,
        cwd=os.path.dirname(keys.__file__) + "/../..",
    )
    assert result.returncode != 0
    assert f"{path}: permission denied" in result.stderr


def test_load_server_key_refuses_low_ports(tmp_path):
    # about one key in 64 has a port <= 1024: a deterministic search finds one at once
    low = next(k for k in (i.to_bytes(32, "big") for i in range(100000)) if knock_port(k) <= 1024)
    path = put(tmp_path / "low", low.hex().encode())
    with pytest.raises(keys.KeyFileError, match="1024 or lower") as e:
        keys.load_server_key(path)
    assert "gnocchi keygen --server" in str(e.value)


def test_new_server_key_port_is_above_1024():
    assert all(knock_port(keys.new_server_key()) > 1024 for _ in range(200))


def test_parse_public_hex():
    assert keys.parse_public_hex(HEX, "x") == bytes.fromhex(HEX)
    for bad in (HEX + "\n", HEX[:-1], " " + HEX[1:], HEX[:-1] + "z", 42, "ab cd" * 13):
        with pytest.raises(ValueError, match=r"^clients\.alice\.public_key: expected"):
            keys.parse_public_hex(bad, "clients.alice.public_key")


def test_public_of_matches_the_vectors():
    import json
    from pathlib import Path

    vectors = json.loads((Path(__file__).parent.parent / "vectors" / "knock-v1.json").read_text())
    for client in vectors["clients"].values():
        assert keys.public_of(bytes.fromhex(client["seed"])).hex() == client["public_key"]


def test_a_server_keys_fingerprint_is_short_stable_and_its_own():
    a, b = bytes(range(32)), bytes(range(1, 33))
    assert keys.fingerprint(a) == keys.fingerprint(a)
    assert keys.fingerprint(a) != keys.fingerprint(b)
    assert len(keys.fingerprint(a)) == 19 and keys.fingerprint(a).count("-") == 3


def test_public_key_problem_names_what_a_pasted_key_most_likely_is():
    """1. a real public key passes; 2. the server key is named for certain; 3. a configured
    client's private key is named for certain, whether or not it happens to be a point;
    4. bytes that are no point of the curve's group are called a likely secret (or typo)."""
    server, alice_seed = keys.new_server_key(), os.urandom(32)
    alice = keys.public_of(alice_seed)
    known = {alice: "alice"}
    assert keys.public_key_problem(alice, (server,), known) is None
    assert "this server's own secret key" in keys.public_key_problem(server, (server,), known)
    assert keys.public_key_problem(alice_seed, (server,), known) == (
        "it is a PRIVATE key: the one whose public key is client alice's"
    )
    not_a_point = next(
        k for k in iter(lambda: os.urandom(32), None) if keys.public_key_problem(k) is not None
    )
    assert "not an Ed25519 public key" in keys.public_key_problem(not_a_point, (server,), known)


def test_a_random_secret_passes_as_a_public_key_about_one_time_in_sixteen():
    """What the messages claim and no more: the curve check alone catches ~15 in 16 private
    keys pasted as public keys, never all (docs/server.md says so)."""
    passed = sum(keys.public_key_problem(os.urandom(32)) is None for _ in range(4000))
    assert 4000 / 16 * 0.6 < passed < 4000 / 16 * 1.4, passed

"""The last good copy of the config (gnocchi/admin/last_good.py) and `gnocchi reload`, the
command the docs give after an edit, on a config in tmp_path (no systemd here: nothing is
reloaded). The booted-systemd side is tests/system/test_arming.py."""

import os
import shutil
import stat

import pytest
from nacl.signing import SigningKey

from gnocchi.admin import last_good
from gnocchi.server import config, counters
from gnocchi.shared import keys
from support import REPO, gnocchi_cli


@pytest.fixture
def path(tmp_path):
    keys.write_secret(tmp_path / "server.key", keys.new_server_key())
    alice = bytes(SigningKey.generate().verify_key).hex()
    path = tmp_path / "gnocchi.toml"
    path.write_text(
        f'server_key_file = "{tmp_path / "server.key"}"\n'
        f'state_dir = "{tmp_path / "state"}"\n\n'
        f'[clients.alice]\npublic_key = "{alice}"\nallow = ["22"]\n'
    )
    return path


def test_a_config_that_loads_is_kept_byte_for_byte_readable_by_the_action_user(path):
    recorded, said = last_good.record(str(path))
    copy = path.parent / "gnocchi.last-good.toml"
    assert recorded and said == f"kept as the last good config: {copy}"
    assert copy.read_bytes() == path.read_bytes()
    assert stat.S_IMODE(copy.stat().st_mode) == 0o644
    assert last_good.record(str(path)) == (True, f"{copy} is the same")


def test_a_broken_config_is_never_kept(path):
    last_good.record(str(path))
    good = (path.parent / "gnocchi.last-good.toml").read_bytes()
    path.write_text(path.read_text() + "alow = 1\n")
    recorded, said = last_good.record(str(path))
    assert not recorded and "clients.alice.alow: unknown key" in said
    assert (path.parent / "gnocchi.last-good.toml").read_bytes() == good
    assert not (path.parent / "gnocchi.last-good.toml.tmp").exists()


def test_a_config_others_may_write_is_never_kept(path):
    os.chmod(path, 0o666)
    recorded, said = last_good.record(str(path))
    assert not recorded and "writable by group or others" in said
    assert not (path.parent / "gnocchi.last-good.toml").exists()


def test_describe_says_which_config_runs(path):
    broken, line = last_good.describe(str(path))
    assert broken is None and line == f"config: {path} (no last good copy kept yet)"
    last_good.record(str(path))
    broken, line = last_good.describe(str(path))
    assert broken is None and line.startswith(f"config: {path} (= the last good copy, kept ")
    path.write_text(path.read_text().replace('"22"', '"22", "2222"'))
    assert "edited since gnocchi last applied it" in last_good.describe(str(path))[1]
    path.write_text(path.read_text() + "sorces = []\n")
    broken, line = last_good.describe(str(path))
    assert broken.startswith(f"CONFIG BROKEN: {path}: clients.alice.sorces: unknown key")
    assert line.startswith(f"config: the last good copy {path.parent / 'gnocchi.last-good.toml'}")


# ---- drop-ins: the copy is one file, the config with each drop-in appended -------------


def add_drop_in(path, name: str, mode: int = 0o644) -> str:
    """A client NAME in clients.d beside path; its public key."""
    key = bytes(SigningKey.generate().verify_key).hex()
    directory = path.parent / "clients.d"
    directory.mkdir(exist_ok=True)
    (directory / f"{name}.toml").write_text(
        f'[clients.{name}]\npublic_key = "{key}"\nallow = ["22"]\n'
    )
    (directory / f"{name}.toml").chmod(mode)
    return key


def test_the_copy_of_a_config_with_drop_ins_is_one_file_that_runs_the_same_clients(path):
    add_drop_in(path, "bob")
    add_drop_in(path, "carol")
    recorded, _ = last_good.record(str(path))
    copy = path.parent / "gnocchi.last-good.toml"
    assert recorded
    assert copy.read_bytes() == path.read_bytes() + b"".join(
        (path.parent / "clients.d" / f"{n}.toml").read_bytes() for n in ("bob", "carol")
    )
    alone = config.load(str(copy), drop_ins=False)
    assert [c.name for c in alone.clients] == ["alice", "bob", "carol"]
    assert alone.clients == config.load(str(path)).clients
    assert last_good.record(str(path)) == (True, f"{copy} is the same")
    broken, line = last_good.describe(str(path))
    assert broken is None and line.startswith(
        f"config: {path} and 2 drop-ins in {path.parent / 'clients.d'} (= the last good copy"
    )
    # A changed drop-in is a changed config.
    add_drop_in(path, "dave")
    assert "edited since gnocchi last applied it" in last_good.describe(str(path))[1]


@pytest.mark.parametrize("breakage", ["typo", "loose mode", "duplicate key"])
def test_a_broken_drop_in_is_never_kept_and_never_changes_what_runs(path, breakage):
    add_drop_in(path, "bob")
    assert last_good.record(str(path))[0]
    copy = path.parent / "gnocchi.last-good.toml"
    kept = copy.read_bytes()
    carol = path.parent / "clients.d" / "carol.toml"
    if breakage == "typo":
        add_drop_in(path, "carol")
        carol.write_text(carol.read_text() + "alow = [2222]\n")
        expected = f"{carol}: clients.carol.alow: unknown key"
    elif breakage == "loose mode":
        add_drop_in(path, "carol", mode=0o666)
        expected = f"{carol}: {carol} is writable by group or others"
    else:  # carol holds bob's key: a pasted wrong key must not become a second bob
        bob = (path.parent / "clients.d" / "bob.toml").read_text()
        carol.write_text(bob.replace("[clients.bob]", "[clients.carol]"))
        carol.chmod(0o644)
        expected = f"{carol}: clients.carol.public_key: is also clients.bob's key"
    recorded, said = last_good.record(str(path))
    assert not recorded and expected in said, said
    assert copy.read_bytes() == kept
    told = []
    running = config.load_running(str(path), lambda *a, **f: told.append(f))
    assert running.path == str(copy) and [c.name for c in running.clients] == ["alice", "bob"]
    assert told[0]["reason"].args[0].startswith(expected)


# ---- gnocchi reload ------------------------------------------------------------------


def reload(path):
    rules = path.parent / "rules.nft"
    shutil.copy(REPO / "nft" / "gnocchi.nft", rules)
    units = path.parent / "units" / "gnocchi.socket.d"
    units.mkdir(parents=True, exist_ok=True)
    port = gnocchi_cli("port", path.parent / "server.key").stdout.strip()
    (units / "port.conf").write_text(f"[Socket]\nListenDatagram=\nListenDatagram={port}\n")
    return gnocchi_cli(
        "reload", "--config", path, "--table", rules, "--unit-dir", path.parent / "units"
    )


def test_reload_refuses_a_broken_config_naming_file_and_key_and_changes_nothing(path):
    if shutil.which("nft") is None or shutil.which("unshare") is None:
        pytest.skip("needs nft and unshare")
    (path.parent / "state").mkdir()
    counters.create(str(path.parent / "state"))  # as `gnocchi setup` does
    result = reload(path)
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"gnocchi reload: ok: {path}: 1 client;")
    kept = (path.parent / "gnocchi.last-good.toml").read_bytes()
    assert kept == path.read_bytes()
    path.write_text(path.read_text() + 'sorces = ["198.51.100.0/24"]\n')
    result = reload(path)
    assert result.returncode == 1 and result.stdout == ""
    assert f"{path}: clients.alice.sorces: unknown key" in result.stderr
    assert "gnocchi goes on with the last good config" in result.stderr
    assert "REFUSED: 1 problem; nothing was changed" in result.stderr
    assert (path.parent / "gnocchi.last-good.toml").read_bytes() == kept
    assert config.load_running(str(path)).path == str(path.parent / "gnocchi.last-good.toml")

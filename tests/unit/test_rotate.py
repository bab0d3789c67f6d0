"""`gnocchi rotate-key` as an admin runs it (subprocesses; --unit-dir instead of a
running systemd): the next key, the config edited only where the rotation's keys
go, both keys' ports and credentials in the units, the clients' lines, status,
and --finish. gnocchi-knock with a profile that carries the next key knocks with it.
"""

import datetime
import os
import shlex
import stat

import pytest

from gnocchi.admin import rotate, status
from gnocchi.server import config, keyring
from gnocchi.shared import keys, onboarding, protocol
from test_check import Server, gnocchi


@pytest.fixture
def s(tmp_path) -> Server:
    s = Server(tmp_path)
    assert gnocchi("keygen", "--private", tmp_path / "private.key").returncode == 0
    s.write_config(extra=f'private_key_file = "{tmp_path / "private.key"}"\n# a comment\n')
    assert gnocchi("setup", "--config", s.config, "--unit-dir", s.units).returncode == 0
    return s


def rotate_key(s: Server, *args):
    return gnocchi(
        "rotate-key", "--config", s.config, "--unit-dir", s.units, "--host", "srv.example", *args
    )


def test_a_rotation_adds_a_next_key_beside_the_current_one(s):
    before = s.config.read_text()
    current = keys.load_private_key(s.tmp / "private.key")[0]
    out = rotate_key(s, "--overlap", "7")
    assert out.returncode == 0, out.stderr
    cfg = config.load(str(s.config))
    nxt = keys.load_private_key(cfg.next_private_key_file)[0]
    assert stat.S_IMODE(os.stat(cfg.next_private_key_file).st_mode) == 0o600
    left = cfg.rotation_ends - datetime.datetime.now(datetime.UTC)
    assert datetime.timedelta(days=6, hours=23) < left <= datetime.timedelta(days=7)
    # Only the rotation's two lines were added, before the first table.
    added = [line for line in s.config.read_text().splitlines() if line not in before.splitlines()]
    assert [line.split(" =")[0] for line in added] == ["next_private_key_file", "rotation_ends"]
    ports = [s.port, protocol.knock_port(current), protocol.knock_port(nxt)]
    assert (
        (s.units / "gnocchi.socket.d" / "port.conf")
        .read_text()
        .endswith("ListenDatagram=\n" + "".join(f"ListenDatagram={p}\n" for p in ports))
    )
    assert (
        f"LoadCredential=next.key:{cfg.next_private_key_file}\n"
        in (s.units / "gnocchi.service.d" / "keys.conf").read_text()
    )
    assert s.check().returncode == 0
    line = shlex.split(out.stdout.splitlines()[1])[2]
    parsed = onboarding.parse(line)
    assert (parsed.public, parsed.next_public) == (current, nxt)
    assert keyring.load(cfg).retiring == (current, cfg.rotation_ends)


def test_one_rotation_at_a_time_and_no_early_finish_without_force(s):
    assert rotate_key(s).returncode == 0
    again = rotate_key(s)
    assert again.returncode == 1 and "a rotation is under way already" in again.stderr
    early = rotate_key(s, "--finish")
    assert early.returncode == 1 and "shuts out every client still on the old key" in early.stderr


def test_finish_makes_the_next_key_the_key_and_deletes_the_old_one(s):
    assert rotate_key(s).returncode == 0
    nxt = config.load(str(s.config)).next_private_key_file
    before = s.config.read_text()
    out = rotate_key(s, "--finish", "--force")
    assert out.returncode == 0, out.stderr
    cfg = config.load(str(s.config))
    assert (cfg.private_key_file, cfg.next_private_key_file, cfg.rotation_ends) == (nxt, None, None)
    assert not (s.tmp / "private.key").exists()
    assert "# a comment" in s.config.read_text()
    assert len(s.config.read_text().splitlines()) == len(before.splitlines()) - 2
    public = keys.load_private_key(nxt)[0]
    assert (
        (s.units / "gnocchi.socket.d" / "port.conf")
        .read_text()
        .endswith(f"ListenDatagram={s.port}\nListenDatagram={protocol.knock_port(public)}\n")
    )
    assert onboarding.parse(shlex.split(out.stdout.splitlines()[1])[2]).next_public is None
    assert s.check().returncode == 0


def test_a_server_without_a_v2_key_has_nothing_to_rotate(s):
    s.write_config()
    out = rotate_key(s)
    assert out.returncode == 1 and "no private_key_file, so no v2 key to rotate" in out.stderr


def test_half_a_rotation_in_the_config_is_refused_by_the_loader(s):
    s.write_config(
        extra=f'private_key_file = "{s.tmp / "private.key"}"\nrotation_ends = 2030-01-01\n'
    )
    refused = s.check()
    assert refused.returncode == 1
    assert "next_private_key_file: a rotation needs private_key_file" in refused.stderr


def test_status_says_until_when_both_keys_open_and_when_the_old_one_is_refused(s):
    assert rotate_key(s).returncode == 0
    cfg = config.load(str(s.config))
    during = status.rotation_line(str(s.config), cfg.rotation_ends - datetime.timedelta(days=2))
    assert during.startswith("gnocchi: ROTATION: the next key") and "(2 days 0 h left)" in during
    after = status.rotation_line(str(s.config), cfg.rotation_ends)
    assert after.startswith("gnocchi: ROTATION OVERLAP OVER since")


def test_the_config_edit_puts_top_level_keys_before_the_first_table():
    text = "a = 1\n[clients.x]\nb = 2\n"
    assert (
        rotate.edited(text, {"rotation_ends": "2030-01-01T00:00:00+00:00"})
        == "a = 1\nrotation_ends = 2030-01-01T00:00:00+00:00\n[clients.x]\nb = 2\n"
    )
    assert (
        rotate.edited("a = 1", {"private_key_file": '"/k"'}) == 'a = 1\nprivate_key_file = "/k"\n'
    )
    assert (
        rotate.edited(
            'private_key_file = "/old"\n[t]\nprivate_key_file = "x"\n',
            {"private_key_file": '"/new"', "rotation_ends": None},
        )
        == 'private_key_file = "/new"\n[t]\nprivate_key_file = "x"\n'
    )

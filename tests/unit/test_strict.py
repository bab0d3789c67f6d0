"""gnocchi/server/strict.py: StrictModes for the verifier's config, key and state."""

import os
import pwd
import pytest

from gnocchi.server import strict
from support import root_only

needs_root = root_only("chown to another user")


def test_a_file_only_root_can_change_passes(tmp_path):
    # tmp_path sits below /tmp: root-owned and sticky, which is safe.
    f = tmp_path / "gnocchi.toml"
    f.write_text("")
    os.chmod(f, 0o644)
    strict.check(str(f))


@pytest.mark.parametrize("mode", [0o666, 0o664, 0o646])
def test_a_file_others_can_write_is_refused_with_the_chmod(tmp_path, mode):
    f = tmp_path / "gnocchi.toml"
    f.write_text("")
    os.chmod(f, mode)
    with pytest.raises(strict.StrictModeError) as e:
        strict.check(str(f))
    assert f"writable by group or others (mode {mode:04o})" in str(e.value)
    assert f"fix: chmod go-w {f}" in str(e.value)


def test_a_directory_above_that_others_can_write_is_named(tmp_path):
    d = tmp_path / "etc"
    d.mkdir()
    f = d / "server.key"
    f.write_text("")
    os.chmod(d, 0o777)
    with pytest.raises(strict.StrictModeError) as e:
        strict.check(str(f))
    assert str(e.value).startswith(f"{d} is writable") and f"chmod go-w {d}" in str(e.value)


@needs_root
def test_a_file_owned_by_another_user_is_refused_with_the_chown(tmp_path):
    nobody = pwd.getpwnam("nobody")
    f = tmp_path / "gnocchi.toml"
    f.write_text("")
    os.chown(f, nobody.pw_uid, nobody.pw_gid)
    with pytest.raises(strict.StrictModeError) as e:
        strict.check(str(f))
    assert f"owned by uid {nobody.pw_uid}" in str(e.value)
    assert f"fix: chown root {f}" in str(e.value)


@needs_root
def test_a_sticky_directory_passes_only_when_root_owns_it(tmp_path):
    d = tmp_path / "shared"
    d.mkdir()
    os.chmod(d, 0o1777)
    (d / "f").write_text("")
    strict.check(str(d / "f"))
    os.chown(d, pwd.getpwnam("nobody").pw_uid, -1)
    with pytest.raises(strict.StrictModeError):
        strict.check(str(d / "f"))

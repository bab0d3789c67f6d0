"""gnocchi.server.counters: the durable store round-trips, and a corrupt one
names the file and the way back."""

import contextlib
import os
import subprocess
import sys

import pytest

from gnocchi.server import counters
from support import root_only

KEY_A = "0abb31e99e8341f0a2195b9db07a819684e80e6cfbfe8626ab010828ac14f27f"
KEY_B = "1" * 64
A, B = bytes.fromhex(KEY_A), bytes.fromhex(KEY_B)
NOBODY = 65534


def test_store_round_trip(tmp_path):
    assert counters.create(str(tmp_path)) and not counters.create(str(tmp_path))
    store = counters.Store(str(tmp_path)).load()
    assert store.last(A) == 0
    store.commit(A, 5)
    store.commit(B, 2**112 - 1)
    store.commit(A, 6)
    again = counters.Store(str(tmp_path)).load()
    assert (again.last(A), again.last(B)) == (6, 2**112 - 1)
    assert oct(os.stat(tmp_path / "counters").st_mode & 0o777) == "0o600"
    assert not (tmp_path / "counters.tmp").exists()


@pytest.mark.parametrize(
    "text, why",
    [
        ("", "first line is not"),
        ("# gnocchi counters v1\n" + KEY_A + " 5", "truncated"),
        ("# gnocchi counters v1\n" + KEY_A + " 05\n", "line 2"),
        ("# gnocchi counters v1\n" + KEY_A.upper() + " 5\n", "line 2"),
        ("# gnocchi counters v1\n" + KEY_A + " 5\n" + KEY_A + " 6\n", "line 3 repeats"),
        ("# gnocchi counters v1\n" + KEY_A + f" {2**112}\n", "line 2"),
        ("# gnocchi counters v1\n\n", "line 2"),
        ("# gnocchi counters v1\n" + KEY_A + " 5\nfloor 3\n", "line 3"),  # the floor comes first
    ],
)
def test_a_corrupt_store_names_the_file_and_the_way_back(tmp_path, text, why):
    (tmp_path / "counters").write_text(text)
    with pytest.raises(counters.StoreError) as e:
        counters.Store(str(tmp_path)).load()
    assert str(e.value).startswith(f"{tmp_path / 'counters'}: corrupt counter store")
    assert why in str(e.value) and "gnocchi audit --counters" in str(e.value)


def test_a_missing_store_is_refused_with_the_way_out(tmp_path):
    with pytest.raises(counters.StoreError) as e:
        counters.Store(str(tmp_path)).load()
    assert "counter store is missing" in str(e.value)
    assert "gnocchi recover-counters" in str(e.value)


def test_recovery_makes_every_counter_up_to_now_a_replay_for_any_key(tmp_path):
    now = 1764230400123456789
    assert "missing or unreadable" in counters.recover(str(tmp_path), now)
    store = counters.Store(str(tmp_path)).load()
    assert (store.floor, store.last(A), store.last(B)) == (now, now, now)
    store.commit(A, now + 5)
    again = counters.Store(str(tmp_path)).load()
    assert (again.last(A), again.last(B)) == (now + 5, now)
    assert (again.floor, again.counters) == (now, {A: now + 5})
    # Recovering again keeps what is above the new floor.
    counters.recover(str(tmp_path), now + 2)
    assert counters.Store(str(tmp_path)).load().last(A) == now + 5


def test_an_empty_store_file_is_valid_and_a_directory_is_not(tmp_path):
    (tmp_path / "counters").write_text(counters.HEADER)
    assert counters.Store(str(tmp_path)).load().counters == {}
    (tmp_path / "counters").unlink()
    (tmp_path / "counters").mkdir()
    with pytest.raises(counters.StoreError, match="cannot read"):
        counters.Store(str(tmp_path)).load()


# ---- a store replaced while the verifier runs (a restore, `gnocchi recover-counters`) ----
# docs/server.md: the verifier's next commit stops it, and its next start loads
# the new file; the admin's store is never overwritten with the old state, whether
# the verifier loaded text (as setup, recover-counters, audit --counters and
# backups leave it) or slots (test_counter_crash.py has more of those).


def state(directory):
    s = counters.Store(str(directory)).load()
    return s.floor, s.counters


def test_a_text_store_recovered_while_the_verifier_runs_is_not_overwritten(tmp_path):
    counters.create(str(tmp_path))  # gnocchi setup
    running = counters.Store(str(tmp_path)).load()  # the verifier starts: text, no slots
    counters.recover(str(tmp_path), 5000)  # the admin, while it runs
    with pytest.raises(counters.StoreError, match="was replaced while gnocchi ran"):
        running.commit(A, 10)  # a knock with a counter below the floor
    assert state(tmp_path) == (5000, {})  # the floor the admin wrote stands


def test_a_store_outgrowing_its_slots_after_a_replacement_is_not_overwritten(tmp_path):
    counters.create(str(tmp_path))
    running = counters.Store(str(tmp_path)).load()
    running.commit(A, 1)  # now slots of 4096 bytes
    counters.recover(str(tmp_path), 5000)  # replaced while it runs
    many = {bytes([i]) * 32: 6000 + i for i in range(100)}
    running.counters.update(many)  # a state that no longer fits its slot
    with pytest.raises(counters.StoreError, match="was replaced while gnocchi ran"):
        running.commit(A, 7000)
    assert state(tmp_path) == (5000, {})


def test_recovery_with_a_clock_behind_never_lowers_the_floor(tmp_path):
    # A first recovery at 9000 (render keeps only counters above the floor, so
    # a client that last knocked before it is held by the floor alone); then
    # another with a clock that is behind (no NTP yet at boot, a bad RTC).
    counters.create(str(tmp_path))
    counters.recover(str(tmp_path), 9000)
    counters.recover(str(tmp_path), 5000)
    store = counters.Store(str(tmp_path)).load()
    assert store.last(A) >= 9000  # a knock captured with counter 8000 stays a replay


@pytest.mark.parametrize("start", ["text", "slots"])
def test_a_store_replaced_twice_is_seen_even_when_its_inode_number_comes_back(tmp_path, start):
    # Each replacement makes its temporary file while the old one still exists,
    # so the first gets a new inode number, but the second may get the number
    # the verifier read (ext4 hands freed numbers out again): (device, inode)
    # alone does not tell the files apart.
    counters.create(str(tmp_path))
    if start == "slots":
        first = counters.Store(str(tmp_path)).load()
        first.commit(A, 1)
        first.commit(A, 2)
        os.close(first._fd)  # that verifier has exited
    running = counters.Store(str(tmp_path)).load()  # has not written yet
    path = tmp_path / "counters"
    inode = path.stat().st_ino
    for floor in range(5000, 5064):  # enough tries to meet the number again
        counters.recover(str(tmp_path), floor)
        if path.stat().st_ino == inode:
            break
    else:
        pytest.skip("this file system gave no inode number back")
    with pytest.raises(counters.StoreError, match="was replaced while gnocchi ran"):
        running.commit(A, 10)
    assert state(tmp_path)[0] == floor


# ---- root writing in the verifier's state directory -------------------------------------

# The verifier's user (uid gnocchi, here nobody) owns the state directory, so it may put
# a symlink at any name in it at any moment. This one waits (inotify) for root to create
# counters.tmp and renames a symlink to TARGET over it at once, again and again.
SWAPPER = r"""
import ctypes, os, struct, sys
os.fchdir(int(sys.argv[1]))
libc = ctypes.CDLL(None, use_errno=True)
watch = libc.inotify_init()
assert libc.inotify_add_watch(watch, b".", 0x100) >= 0  # IN_CREATE
os.symlink(sys.argv[2], "link")
print("ready", flush=True)
while True:
    data, i = os.read(watch, 4096), 0
    while i < len(data):
        length = struct.unpack_from("iIII", data, i)[3]
        name, i = data[i + 16:i + 16 + length].rstrip(b"\0"), i + 16 + length
        if name == b"counters.tmp":
            try:
                os.rename("link", "counters.tmp")
                os.symlink(sys.argv[2], "link")
            except OSError:
                pass
"""


@root_only("it chowns files and runs a process as another user")
@pytest.mark.parametrize("command", ["recover-counters", "setup"])
def test_root_writing_the_store_never_hands_another_file_to_the_verifiers_user(tmp_path, command):
    # `gnocchi recover-counters` and `gnocchi setup` (as root) write the store in the
    # verifier's directory and give it to the verifier's user. A symlink the verifier
    # put in their way must not make root give it a file of root's (/etc/shadow, say).
    state, target = tmp_path / "state", tmp_path / "shadow"
    target.write_text("root's\n")
    os.chmod(target, 0o600)
    state.mkdir(mode=0o700)
    os.chown(state, NOBODY, NOBODY)
    dir_fd = os.open(state, os.O_RDONLY | os.O_DIRECTORY)
    swapper = subprocess.Popen(
        [sys.executable, "-c", SWAPPER, str(dir_fd), str(target)],
        pass_fds=(dir_fd,),
        user=NOBODY,
        group=NOBODY,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert swapper.stdout.readline() == "ready\n"
        for attempt in range(20):
            for name in ("counters", "counters.tmp"):
                with contextlib.suppress(FileNotFoundError):
                    os.unlink(state / name)
            with contextlib.suppress(OSError):
                if command == "setup":
                    counters.create(str(state), NOBODY, NOBODY)
                else:
                    counters.recover(str(state), 5000 + attempt, NOBODY, NOBODY)
            assert os.stat(target).st_uid == 0, f"root gave {target} away on try {attempt + 1}"
    finally:
        swapper.kill()
        swapper.wait()
        os.close(dir_fd)

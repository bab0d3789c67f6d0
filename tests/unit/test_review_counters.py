"""Review: a counter store replaced while the verifier runs, when what the
verifier loaded was text (as `gnocchi setup`, `gnocchi recover-counters`,
`gnocchi audit --counters` and backups leave it). docs/server.md says such a
replacement stops the verifier at its next commit and the next start loads
the new file; the slot-store case is tested in test_counter_crash.py, the
text case was not: the first commit replaced the file whole with the
verifier's old state, silently undoing the admin's floor."""
import os

import pytest

from gnocchi.server import counters

A = bytes.fromhex("0abb31e99e8341f0a2195b9db07a819684e80e6cfbfe8626ab010828ac14f27f")


def state(directory):
    s = counters.Store(str(directory)).load()
    return s.floor, s.counters


def test_a_text_store_recovered_while_the_verifier_runs_is_not_overwritten(tmp_path):
    counters.create(str(tmp_path))                      # gnocchi setup
    running = counters.Store(str(tmp_path)).load()      # the verifier starts: text, no slots
    counters.recover(str(tmp_path), 5000)               # the admin, while it runs
    with pytest.raises(counters.StoreError, match="was replaced while gnocchi ran"):
        running.commit(A, 10)                           # a knock with a counter below the floor
    assert state(tmp_path) == (5000, {})                # the floor the admin wrote stands


def test_a_store_outgrowing_its_slots_after_a_replacement_is_not_overwritten(tmp_path):
    counters.create(str(tmp_path))
    running = counters.Store(str(tmp_path)).load()
    running.commit(A, 1)                                # now slots of 4096 bytes
    counters.recover(str(tmp_path), 5000)               # replaced while it runs
    many = {bytes([i]) * 32: 6000 + i for i in range(100)}
    running.counters.update(many)                       # a state that no longer fits its slot
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
        os.close(first._fd)                             # that verifier has exited
    running = counters.Store(str(tmp_path)).load()      # has not written yet
    path = tmp_path / "counters"
    inode = path.stat().st_ino
    for floor in range(5000, 5064):                     # enough tries to meet the number again
        counters.recover(str(tmp_path), floor)
        if path.stat().st_ino == inode:
            break
    else:
        pytest.skip("this file system gave no inode number back")
    with pytest.raises(counters.StoreError, match="was replaced while gnocchi ran"):
        running.commit(A, 10)
    assert state(tmp_path)[0] == floor

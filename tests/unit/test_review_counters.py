"""Review: a counter store replaced while the verifier runs, when what the
verifier loaded was text (as `gnocchi setup`, `gnocchi recover-counters`,
`gnocchi audit --counters` and backups leave it). docs/server.md says such a
replacement stops the verifier at its next commit and the next start loads
the new file; the slot-store case is tested in test_counter_crash.py, the
text case was not: the first commit replaced the file whole with the
verifier's old state, silently undoing the admin's floor."""
import pytest

from gnocchi import counters

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

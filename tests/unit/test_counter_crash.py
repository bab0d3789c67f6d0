"""gnocchi.server.counters under crashes: at every step of a commit, the store loads
as the last state that was committed or as the new one, never less.

A power cut cannot be caused in a test, so two stand-ins, each named where
used: a real process that kills itself (SIGKILL) at each step of a commit,
halfway through the data of a write (the file keeps exactly what was
written, as after a crash that cut the write short); and, in this process,
a write cut at every byte, or landing any set of its 512-byte sectors, as a
disk losing power mid-write can leave it. Then a fresh Store loads the file.
"""

import fcntl
import hashlib
import os
import signal
import struct
import subprocess
import sys

import pytest

from gnocchi.server import counters

A = bytes.fromhex("0abb31e99e8341f0a2195b9db07a819684e80e6cfbfe8626ab010828ac14f27f")
B = b"\x11" * 32
REAL_PWRITE = os.pwrite  # what a cut write lands with, the test's own os.pwrite being patched
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


class PowerCut(BaseException):
    """Stands for the machine stopping here: nothing after it runs, no cleanup."""


def state(directory):
    s = counters.Store(str(directory)).load()
    return s.floor, s.counters


def slotted_store(directory, commits=3):
    """A store whose two slots both hold a state: the newest, and the one before."""
    counters.create(str(directory))
    store = counters.Store(str(directory)).load()
    for i in range(commits):
        store.commit(B, 100 + i)
    return store


def cut_commit(monkeypatch, store, key, counter, land):
    """commit(), with its slot write replaced by land(fd, data, offset) and then a power cut."""

    def pwrite(fd, data, offset):
        land(fd, bytes(data), offset)
        raise PowerCut

    with monkeypatch.context() as m:
        m.setattr(os, "pwrite", pwrite)
        with pytest.raises(PowerCut):
            store.commit(key, counter)


@pytest.mark.parametrize("before", [1, 2, 3])  # the slot written held nothing, or an older state
def test_a_write_cut_at_every_byte_loads_the_old_state_or_the_new(tmp_path, monkeypatch, before):
    slotted_store(tmp_path, before)
    path = tmp_path / "counters"
    old_bytes, old = path.read_bytes(), state(tmp_path)
    new = (old[0], {**old[1], A: 7})
    length = len(counters.pack_slot(before + 1, counters.render(new[1]).encode()))
    landed_new = []
    for cut in range(length + 1):
        path.write_bytes(old_bytes)
        cut_commit(
            monkeypatch,
            counters.Store(str(tmp_path)).load(),
            A,
            7,
            lambda fd, data, offset, cut=cut: REAL_PWRITE(fd, data[:cut], offset),
        )
        got = state(tmp_path)
        assert got in (old, new), cut
        landed_new.append(got == new)
    # old until the last byte that differs from what the slot held is written, then new
    assert landed_new[0] is False and landed_new[-1] is True and landed_new == sorted(landed_new)


def test_any_set_of_sectors_landing_loads_the_old_state_or_the_new(tmp_path, monkeypatch):
    store = slotted_store(tmp_path)
    for i in range(12):  # a slot of three 512-byte sectors
        store.commit(bytes([i]) * 32, 50 + i)
    path = tmp_path / "counters"
    old_bytes, old = path.read_bytes(), state(tmp_path)
    new = (old[0], {**old[1], A: 7})
    sectors = -(-len(counters.pack_slot(1, counters.render(new[1]).encode())) // 512)
    assert sectors == 3
    for landed in range(2**sectors):
        path.write_bytes(old_bytes)

        def land(fd, data, offset, landed=landed):
            for s in range(sectors):
                if landed >> s & 1:
                    REAL_PWRITE(fd, data[s * 512 : (s + 1) * 512], offset + s * 512)

        cut_commit(monkeypatch, counters.Store(str(tmp_path)).load(), A, 7, land)
        assert state(tmp_path) == (new if landed == 2**sectors - 1 else old), landed


def test_crash_after_crash_never_loses_a_commit_that_returned(tmp_path, monkeypatch):
    slotted_store(tmp_path)
    returned = attempted = 0
    for counter in range(1, 61):
        store = counters.Store(str(tmp_path)).load()  # the verifier restarted after the crash
        assert returned <= store.last(A) <= attempted
        attempted = counter
        if counter % 2:
            store.commit(A, counter)
            returned = counter
        else:  # cut short at a different byte each time
            cut = counter * 37 % 200
            cut_commit(
                monkeypatch,
                store,
                A,
                counter,
                lambda fd, data, offset, cut=cut: REAL_PWRITE(fd, data[:cut], offset),
            )
    assert returned == 59 and state(tmp_path)[1][A] == 59


def test_a_flipped_bit_in_the_older_slot_changes_nothing_and_in_the_newest_falls_back_one_commit(
    tmp_path,
):
    store = slotted_store(tmp_path)
    store.commit(A, 7)
    raw = (tmp_path / "counters").read_bytes()
    capacity = store.capacity
    newest, older = store.newest, 1 - store.newest
    used = len(counters.pack_slot(1, counters.render({A: 7, B: 102}).encode()))
    for slot, expected in ((older, {A: 7, B: 102}), (newest, {B: 102})):
        for byte in range(used):
            for bit in range(8):
                flipped = bytearray(raw)
                flipped[slot * capacity + byte] ^= 1 << bit
                _, _, _, text = counters.newest_slot(bytes(flipped), "x")
                assert counters.parse(text, "x")[1] == expected, (slot, byte, bit)


@pytest.mark.parametrize("damage", ["both slots flipped", "zeros", "one slot", "a byte more"])
def test_no_whole_slot_is_refused_with_the_way_out(tmp_path, damage):
    store = slotted_store(tmp_path)
    path = tmp_path / "counters"
    raw = bytearray(path.read_bytes())
    if damage == "both slots flipped":
        raw[20] ^= 1
        raw[store.capacity + 20] ^= 1
    elif damage == "zeros":
        raw = bytes(len(raw))
    elif damage == "one slot":
        raw = raw[: store.capacity]
    else:
        raw += b"\0"
    path.write_bytes(raw)
    with pytest.raises(counters.StoreError) as e:
        counters.Store(str(tmp_path)).load()
    assert str(e.value).startswith(f"{path}: corrupt counter store (")
    assert "gnocchi recover-counters" in str(e.value) and "gnocchi audit --counters" in str(e.value)


def test_two_slots_claiming_one_sequence_are_refused(tmp_path):
    store = slotted_store(tmp_path)
    raw = (tmp_path / "counters").read_bytes()
    slot = raw[: store.capacity]
    (tmp_path / "counters").write_bytes(slot + slot)
    with pytest.raises(counters.StoreError, match="both slots claim sequence"):
        counters.Store(str(tmp_path)).load()


def test_the_layout_is_the_documented_one(tmp_path):
    """docs/server.md, "Counter store", read back with nothing but struct and hashlib."""
    store = slotted_store(tmp_path, 2)
    raw = (tmp_path / "counters").read_bytes()
    assert len(raw) == 2 * 4096
    for offset, sequence, counter in ((0, 1, 100), (4096, 2, 101)):
        magic, seq, length = struct.unpack_from(">8sQI", raw, offset)
        text = raw[offset + 52 : offset + 52 + length]
        assert (magic, seq) == (b"gnocchi2", sequence)
        assert (
            raw[offset + 20 : offset + 52]
            == hashlib.blake2b(raw[offset : offset + 20] + text, digest_size=32).digest()
        )
        assert text.decode() == f"# gnocchi counters v1\n{B.hex()} {counter}\n"
        assert raw[offset + 52 + length : offset + 4096] == bytes(4096 - 52 - length)
    assert store.newest == 1


def test_a_commit_in_place_is_one_synchronous_write_and_nothing_else(tmp_path, monkeypatch):
    store = slotted_store(tmp_path)
    calls = []
    for name in ("pwrite", "write", "fsync", "fdatasync", "rename", "replace"):
        real = getattr(os, name)
        monkeypatch.setattr(
            os, name, lambda *a, real=real, name=name: calls.append(name) or real(*a)
        )
    store.commit(A, 1)
    store.commit(A, 2)
    assert calls == ["pwrite", "pwrite"]
    assert fcntl.fcntl(store._fd, fcntl.F_GETFL) & os.O_DSYNC == os.O_DSYNC


def test_a_text_store_loads_and_its_first_commit_keeps_the_floor_and_every_counter(tmp_path):
    (tmp_path / "counters").write_text(f"# gnocchi counters v1\nfloor 50\n{B.hex()} 90\n")
    store = counters.Store(str(tmp_path)).load()
    assert (store.last(A), store.last(B), store.capacity) == (50, 90, 0)
    store.commit(A, 60)
    assert state(tmp_path) == (50, {A: 60, B: 90})
    assert (tmp_path / "counters").stat().st_size == 2 * 4096
    assert oct((tmp_path / "counters").stat().st_mode & 0o777) == "0o600"
    store.commit(A, 61)
    assert state(tmp_path) == (50, {A: 61, B: 90})


def test_a_store_that_outgrows_its_slots_is_replaced_by_larger_ones(tmp_path):
    store = slotted_store(tmp_path)
    clients = [os.urandom(32) for _ in range(150)]  # about 10 KB of text
    for i, key in enumerate(clients):
        store.commit(key, i + 1)
    assert store.capacity == 16384 and (tmp_path / "counters").stat().st_size == 2 * 16384
    loaded = counters.Store(str(tmp_path)).load()
    assert [loaded.last(key) for key in clients] == list(range(1, 151))
    assert not (tmp_path / "counters.tmp").exists()


def test_a_store_replaced_while_the_verifier_runs_is_not_written_behind_its_back(tmp_path):
    store = slotted_store(tmp_path)
    counters.recover(str(tmp_path), 1000)  # an admin, while the verifier runs
    with pytest.raises(counters.StoreError, match="was replaced while gnocchi ran") as e:
        store.commit(A, 2000)
    assert "restart gnocchi" in str(e.value)
    assert state(tmp_path) == (1000, {})  # what the admin wrote, untouched
    fresh = counters.Store(str(tmp_path)).load()
    fresh.commit(A, 2000)  # its first commit turns the recovered text into slots
    counters.recover(str(tmp_path), 3000)
    with pytest.raises(counters.StoreError, match="was replaced while gnocchi ran"):
        fresh.commit(A, 2001)  # not the file it read: refused before writing
    assert state(tmp_path) == (3000, {})


# A real process, killed at each step of a commit. The child counts the calls
# that change the disk; at call STEP it writes half of that call's data (if
# it writes) and kills itself, as a crash at that instant would leave it.
CHILD = r"""
import os, signal, sys
sys.path.insert(0, sys.argv[1])
from gnocchi.server import counters
step, calls = int(sys.argv[3]), 0
def crash_at(name):
    real = getattr(os, name)
    def call(*args):
        global calls
        calls += 1
        if calls == step:
            if name == "write":
                real(args[0], bytes(args[1])[:len(args[1]) // 2])
            if name == "pwrite":
                real(args[0], bytes(args[1])[:len(args[1]) // 2], args[2])
            os.kill(os.getpid(), signal.SIGKILL)
        return real(*args)
    setattr(os, name, call)
store = counters.Store(sys.argv[2]).load()
for name in ("write", "pwrite", "fsync", "fdatasync", "rename", "replace"):
    crash_at(name)
store.commit(bytes.fromhex(sys.argv[4]), int(sys.argv[5]))
print(calls)
"""


# text: as setup, recover, audit --counters and backups leave it; outgrown: the line will not fit
@pytest.mark.parametrize("start", ["text", "slots", "outgrown"])
def test_a_process_killed_at_every_step_of_a_commit_leaves_the_old_state_or_the_new(
    tmp_path, start
):
    def fresh():
        d = tmp_path / f"state{len(list(tmp_path.iterdir()))}"
        d.mkdir()
        if start == "text":
            (d / "counters").write_text(f"# gnocchi counters v1\nfloor 5\n{B.hex()} 90\n")
            os.chmod(d / "counters", 0o600)
        else:
            store = slotted_store(d)
            while (
                start == "outgrown"
                and len(counters.pack_slot(0, counters.render({**store.counters, A: 77}).encode()))
                <= store.capacity
            ):
                store.commit(os.urandom(32), 1)  # until A's line no longer fits
        return d

    landed_new = []
    for step in range(1, 10):  # killed at call 1, 2, ... until the commit runs to its end
        d = fresh()
        old, size = state(d), (d / "counters").stat().st_size
        child = subprocess.run(
            [sys.executable, "-c", CHILD, ROOT, str(d), str(step), A.hex(), "77"],
            capture_output=True,
            text=True,
            timeout=60,
        )
        got = state(d)
        assert got in (old, (old[0], {**old[1], A: 77})), step
        landed_new.append(got != old)
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL, child.stderr
    # one pwrite; or, replacing the file: write, fsync, rename, fsync of the directory
    assert int(child.stdout) == len(landed_new) - 1 == (1 if start == "slots" else 4)
    assert landed_new == sorted(landed_new) and landed_new[-1]
    assert (d / "counters").stat().st_size == {
        "text": 2 * 4096,
        "slots": size,
        "outgrown": 2 * size,
    }[start]


def test_a_slot_that_is_not_whole_is_told_once_and_a_blank_one_never(tmp_path, monkeypatch):
    # The verifier logs store-fell-back when this is set at start.
    (tmp_path / "counters").write_text(f"# gnocchi counters v1\n{B.hex()} 90\n")
    store = counters.Store(str(tmp_path)).load()
    store.commit(A, 1)  # the text store becomes two slots, one of them blank
    assert not counters.Store(str(tmp_path)).load().fell_back
    store = counters.Store(str(tmp_path)).load()
    store.commit(A, 2)
    assert not counters.Store(str(tmp_path)).load().fell_back  # two whole slots
    store = counters.Store(str(tmp_path)).load()
    cut_commit(
        monkeypatch, store, A, 3, lambda fd, data, offset: REAL_PWRITE(fd, data[:99], offset)
    )
    store = counters.Store(str(tmp_path)).load()
    assert store.fell_back and store.last(A) == 2
    store.commit(A, 4)  # over the slot that was not whole
    assert not counters.Store(str(tmp_path)).load().fell_back

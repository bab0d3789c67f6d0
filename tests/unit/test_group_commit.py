"""The verifier's group commit: the knocks of one read (a batch) are stored by one
durable write, and none of them reaches the helper (or anything else) before it.

In-process, the order is watched directly; then a real verifier process is
killed (SIGKILL) at every step of a batch, halfway through the data of a write
(the file keeps exactly what was written, as after a crash that cut the write
short), and the requests a stand-in helper received are held against the store
on disk: a power cut cannot be caused in a test, and this is the nearest stand-in
(tests/unit/test_counter_crash.py does the same for one commit).
"""

import ipaddress
import os
import signal
import subprocess
import sys

import pytest

from gnocchi.server import config, counters, events, keyring, verifier
from gnocchi.shared import protocol, seal
from support import REPO, HelperRecorder, Keys
from support.helper import HEADER

DEST = ipaddress.IPv4Address("198.18.3.2")
# (client, counter, source): alice twice in one batch, bob once, mallory (not
# configured) once; each from its own address, so a helper request names its knock.
BATCH = [
    ("alice", 5000, "198.18.3.11"),
    ("bob", 7000, "198.18.3.12"),
    ("alice", 5001, "198.18.3.13"),
    ("mallory", 9, "198.18.3.14"),
]


def setup(tmp_path):
    k = Keys(tmp_path)
    (tmp_path / "gnocchi.toml").write_text(
        f'server_key_file = "{k.server_file}"\nstate_dir = "{tmp_path}"\n'
        f'helper_socket = "{tmp_path}/h.sock"\n'
        f'[clients.alice]\npublic_key = "{k.public("alice")}"\nallow = ["22"]\n'
        f'[clients.bob]\npublic_key = "{k.public("bob")}"\nallow = ["22"]\n'
    )
    counters.create(str(tmp_path))
    store = counters.Store(str(tmp_path)).load()
    store.commit(bytes.fromhex(k.public("alice")), 4000)  # two whole slots, as in service
    store.commit(bytes.fromhex(k.public("bob")), 6000)
    packets = [
        seal.build_packet(k.server, k.seeds[name], counter, b"open 22", DEST.packed)
        for name, counter, _ in BATCH
    ]
    return k, packets


def unsealed(k, packet):
    from nacl._sodium import ffi

    box = ffi.from_buffer(bytes(protocol.BOXZERO_LEN) + packet[protocol.NONCE_LEN :])
    result = protocol.unseal(
        len(packet),
        packet[: protocol.NONCE_LEN],
        box,
        ffi.new("unsigned char[]", len(box)),
        k.server,
    )
    assert isinstance(result, protocol.Unsealed)
    return packet[: protocol.NONCE_LEN + protocol.MAC_LEN], result


def durable(tmp_path, k) -> dict:
    """What a fresh load of the store on disk holds for each client."""
    store = counters.Store(str(tmp_path)).load()
    return {name: store.last(bytes.fromhex(k.public(name))) for name in ("alice", "bob")}


def test_a_batch_is_one_durable_write_before_any_of_its_knocks_reaches_the_helper(
    tmp_path, monkeypatch
):
    k, packets = setup(tmp_path)
    cfg = config.load(str(tmp_path / "gnocchi.toml"))
    recorder = HelperRecorder(tmp_path / "h.sock")
    sent: list[dict] = []
    v = verifier.Verifier(
        cfg,
        keyring.Keyring(k.server, ()),
        counters.Store(str(tmp_path)).load(),
        events.EventLog(send=sent.append),
    )
    writes, seen_by_helper = [], []
    real_pwrite, real_request = os.pwrite, verifier.helper_client.request_opens
    monkeypatch.setattr(os, "pwrite", lambda *a: writes.append(a[2]) or real_pwrite(*a))

    def request_opens(path, asks, *args):
        seen_by_helper.append(durable(tmp_path, k))  # the disk, as the helper is asked
        return real_request(path, asks, *args)

    monkeypatch.setattr(verifier.helper_client, "request_opens", request_opens)
    try:
        for packet, (_, _, source) in zip(packets, BATCH, strict=True):
            v.handle(*unsealed(k, packet), ipaddress.ip_address(source), DEST)
        assert writes == [] and recorder.messages == []  # read, decided, nothing stored yet
        v.settle()
    finally:
        recorder.close()
    assert len(writes) == 1  # one write for the batch
    assert seen_by_helper == [{"alice": 5001, "bob": 7000}]  # all of it, before the first
    assert len(recorder.messages) == 3  # alice's two and bob's, all in flight together
    accepted = [e["GNOCCHI_COUNTER"] for e in sent if e["GNOCCHI_EVENT"] == "accepted"]
    assert accepted == ["5000", "7000", "5001"]


def test_nothing_knocked_means_no_write(tmp_path, monkeypatch):
    k, packets = setup(tmp_path)
    cfg = config.load(str(tmp_path / "gnocchi.toml"))
    v = verifier.Verifier(
        cfg,
        keyring.Keyring(k.server, ()),
        counters.Store(str(tmp_path)).load(),
        events.EventLog(send=[].append),
    )
    writes = []
    monkeypatch.setattr(os, "pwrite", lambda *a: writes.append(a))
    v.handle(*unsealed(k, packets[3]), ipaddress.ip_address("198.18.3.14"), DEST)  # mallory
    v.settle()
    v.settle()
    assert writes == []


# A real verifier process that decides the batch (Verifier.handle for each
# datagram, then settle(), as serve() does after each read), killed at the
# STEP-th call that changes the disk or sends to the helper: a write lands half
# its data first, as a crash mid-write can leave it.
CHILD = r"""
import ipaddress, os, signal, socket, sys
sys.path[:0] = [sys.argv[1], os.path.join(sys.argv[1], "tests")]
from nacl._sodium import ffi
from gnocchi.server import config, counters, events, keyring, verifier
from gnocchi.shared import protocol
step, calls = int(sys.argv[3]), 0
def crash_at(owner, name):
    real = getattr(owner, name)
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
    setattr(owner, name, call)
cfg = config.load(os.path.join(sys.argv[2], "gnocchi.toml"))
v = verifier.Verifier(cfg, keyring.load(cfg, None), counters.Store(sys.argv[2]).load(),
                      events.EventLog(send=lambda e: None))
for name in ("write", "pwrite", "fsync", "fdatasync", "rename", "replace"):
    crash_at(os, name)
crash_at(socket.socket, "send")
for hexed, source in zip(sys.argv[4::2], sys.argv[5::2]):
    packet = bytes.fromhex(hexed)
    box = ffi.from_buffer(bytes(protocol.BOXZERO_LEN) + packet[protocol.NONCE_LEN:])
    sealed = protocol.unseal(len(packet), packet[:24], box, ffi.new("unsigned char[]", len(box)),
                             v.keys.v1)
    v.handle(packet[:40], sealed, ipaddress.ip_address(source), ipaddress.ip_address("198.18.3.2"))
v.settle()
print(calls)
"""


@pytest.mark.parametrize("store", ["slots", "text"])  # text: the first commit replaces the file
def test_a_verifier_killed_at_every_step_of_a_batch_acts_on_no_knock_not_stored(tmp_path, store):
    k, packets = setup(tmp_path)
    by_source = {ipaddress.ip_address(source): (name, counter) for name, counter, source in BATCH}
    steps = []
    for step in range(1, 20):  # killed at call 1, 2, ... until the batch runs to its end
        if store == "text":
            text = counters.render(
                {bytes.fromhex(k.public("alice")): 4000, bytes.fromhex(k.public("bob")): 6000}
            )
            (tmp_path / "counters").write_text(text)
        else:
            setup_store = counters.Store(str(tmp_path)).load()
            setup_store.counters = {}
            setup_store.commit(bytes.fromhex(k.public("alice")), 4000)
            setup_store.commit(bytes.fromhex(k.public("bob")), 6000)
        recorder = HelperRecorder(tmp_path / "h.sock")
        try:
            args = [a for p, (_, _, s) in zip(packets, BATCH, strict=True) for a in (p.hex(), s)]
            child = subprocess.run(
                [sys.executable, "-c", CHILD, str(REPO), str(tmp_path), str(step), *args],
                capture_output=True,
                text=True,
                timeout=60,
            )
        finally:
            recorder.close()
        (tmp_path / "h.sock").unlink()
        on_disk = durable(tmp_path, k)
        assert on_disk in ({"alice": 4000, "bob": 6000}, {"alice": 5001, "bob": 7000}), step
        asked = [
            by_source[ipaddress.ip_address(m[4:8])]
            for m in recorder.messages
            if len(m) >= HEADER.size
        ]
        # Every knock the helper heard of has its counter on disk: none before the write.
        assert all(on_disk[name] >= counter for name, counter in asked), (step, asked, on_disk)
        steps.append((on_disk["alice"] == 5001, len(asked)))
        if child.returncode == 0:
            break
        assert child.returncode == -signal.SIGKILL, child.stderr
    # The store goes from old to new at one step (the pwrite; or write, fsync, rename when
    # a text store is replaced), and the helper is asked only after it.
    assert steps == sorted(steps) and steps[-1] == (True, 3), steps
    assert [stored for stored, asked in steps].count(False) == (1 if store == "slots" else 3)

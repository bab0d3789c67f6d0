"""gnocchi.server.verifier in-process and as `gnocchi serve`: startup refusals, silence by
construction, the whole decision under arbitrary input, and each check a knock
passes after its signature: the source rule, the client's own sources and
expiry, its rate limit (the counter spent, not stored), its allow list."""

import ast
import datetime
import ipaddress
import itertools
import json
import os
import socket
import subprocess
import sys

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from nacl.secret import SecretBox

from gnocchi.admin import audit
from gnocchi.server import config, counters, events, keyring, verifier
from gnocchi.shared import protocol, seal
from support import REPO, HelperRecorder, Keys, gnocchi_cli, requested_ports
from support.verifier import handle

CLIENT = (
    "[clients.alice]\n"
    'public_key = "0abb31e99e8341f0a2195b9db07a819684e80e6cfbfe8626ab010828ac14f27f"\n'
)


def test_serve_refuses_to_start_on_a_bad_config(tmp_path):
    path = tmp_path / "gnocchi.toml"
    path.write_text(CLIENT + 'allow = ["22", "22/sctp"]\n')
    out = gnocchi_cli("serve", "--config", path)
    assert out.returncode == 1
    assert out.stderr.strip() == (
        f"gnocchi serve: {path}: clients.alice.allow[1]: '22/sctp' "
        "is not PORT, PORT/tcp or PORT/udp"
    )
    missing = gnocchi_cli("serve", "--config", tmp_path / "no")
    assert missing.returncode == 1 and f"{tmp_path / 'no'}: no such file" in missing.stderr


def test_serve_refuses_a_loose_server_key_and_a_missing_socket(tmp_path):
    k = Keys(tmp_path)
    path = tmp_path / "gnocchi.toml"
    path.write_text(f'server_key_file = "{k.server_file}"\nstate_dir = "{tmp_path}"\n')
    out = gnocchi_cli("serve", "--config", path)
    assert out.returncode == 1 and f"give --listen IP:{k.port}" in out.stderr
    out = gnocchi_cli("serve", "--config", path, "--listen", f"198.18.0.1:{k.port - 1}")
    assert out.returncode == 1
    assert f"is not a knock port of the server's keys ({k.port})" in out.stderr
    os.chmod(k.server_file, 0o644)
    out = gnocchi_cli("serve", "--config", path)
    assert out.returncode == 1 and f"{k.server_file}: secret key is open" in out.stderr


def test_nothing_in_the_verifier_sends_a_datagram():
    # Silence by construction too: no send call on a network socket in the daemon's modules.
    # The only sends are on Unix sockets made in the same function (sd_notify, the
    # journal); helper_client and action_client send on Unix sockets of their own.
    for name in (
        "server/verifier",
        "server/knock_socket",
        "server/events",
        "shared/knock_request",
        "server/counters",
        "server/config",
        "server/actions",
    ):
        tree = ast.parse((REPO / "gnocchi" / f"{name}.py").read_text())
        for function in (n for n in ast.walk(tree) if isinstance(n, ast.FunctionDef)):
            unix = "socket.AF_UNIX" in ast.unparse(function)
            for call in (n for n in ast.walk(function) if isinstance(n, ast.Call)):
                attr = getattr(call.func, "attr", "")
                if attr in ("send", "sendto", "sendmsg", "sendmmsg"):
                    assert unix or ast.unparse(call.func) == "self.send", (name, function.name)
        assert "sendmmsg" not in ast.unparse(tree) and "libc.send" not in ast.unparse(tree)


def test_journal_entries_keep_every_field_whole(tmp_path, monkeypatch):
    # The journal's native protocol, as journald reads it: name, newline, 64-bit
    # little-endian length, bytes, newline. A value with newlines stays one field.
    monkeypatch.setattr(events, "JOURNAL", str(tmp_path / "journal"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(events.JOURNAL)
        events.journal_sender({"MESSAGE": "two\nlines", "PRIORITY": 5, "GNOCCHI_CLIENT": "alice"})
        data, fields = journald.recv(4096), {}
    while data:
        name, _, data = data.partition(b"\n")
        length = int.from_bytes(data[:8], "little")
        fields[name.decode()], data = data[8 : 8 + length].decode(), data[8 + length + 1 :]
    assert fields == {"MESSAGE": "two\nlines", "PRIORITY": "5", "GNOCCHI_CLIENT": "alice"}


def test_handle_never_raises_and_opens_only_for_allowed_knocks(tmp_path):
    k = Keys(tmp_path)
    (tmp_path / "gnocchi.toml").write_text(
        f'state_dir = "{tmp_path}"\nhelper_socket = "{tmp_path}/h.sock"\n'
        f'[clients.alice]\npublic_key = "{k.public("alice")}"\nallow = ["22"]\n'
    )
    cfg = config.load(str(tmp_path / "gnocchi.toml"))
    recorder = HelperRecorder(tmp_path / "h.sock")
    sent: list[dict] = []
    counters.create(str(tmp_path))
    v = verifier.Verifier(
        cfg,
        keyring.Keyring(k.server, ()),
        counters.Store(str(tmp_path)).load(),
        events.EventLog(send=sent.append),
    )
    # Hundreds of knocks from one client in a second: the per-client and
    # per-address limits (tests/unit/test_ratelimit.py, test_client_limits.py)
    # would drop some, depending on the machine's speed. Here a clock that
    # jumps a minute a call keeps every bucket full: decisions only.
    minutes = itertools.count(step=60)
    v.client_limit.clock = v.address_limit.clock = lambda: next(minutes)
    src, dst = ipaddress.IPv4Address("198.18.3.1"), ipaddress.IPv4Address("198.18.3.2")
    counter = itertools.count(1)
    valid = seal.build_packet(k.server, k.seeds["alice"], 10**9, b"open 22", dst.packed)
    opening = {b"", b"open 22", b"open 22/tcp"}
    expected = []

    def signed(data: bytes) -> bytes:
        if data in opening:
            expected.append(data)
        return seal.build_packet(k.server, k.seeds["alice"], next(counter), data, dst.packed)

    sealed_garbage = st.binary(min_size=0, max_size=800).map(
        lambda body: bytes(
            SecretBox(k.server).encrypt(protocol.MAGIC + bytes.fromhex(k.public("alice")) + body)
        )
    )
    flipped = st.tuples(st.integers(0, len(valid) - 1), st.integers(1, 255)).map(
        lambda f: valid[: f[0]] + bytes([valid[f[0]] ^ f[1]]) + valid[f[0] + 1 :]
    )
    requests_ = st.one_of(
        st.binary(max_size=120),
        st.sampled_from(
            [b"open 22", b"open 22/tcp", b"", b"open 22/udp", b"open 23", b"run x", b"open 22\n"]
        ),
    )

    @settings(max_examples=400, deadline=None, suppress_health_check=list(HealthCheck))
    @given(st.one_of(st.binary(max_size=1100), flipped, sealed_garbage, requests_.map(signed)))
    def check(packet):
        handle(v, packet, src, dst)

    try:
        check()
        assert expected and len(recorder.messages) == len(expected)
        assert {pair for m in recorder.messages for pair in requested_ports(m)} <= {(22, 6)}
    finally:
        recorder.close()


def test_a_key_the_packet_only_claims_is_logged_as_claimed(tmp_path):
    # Replay (step 5) and signature (step 6) rejections come before or without
    # a valid signature; data-length (step 7) comes after it.
    vectors = json.loads((REPO / "tests" / "vectors" / "knock-v1.json").read_text())
    by_name = {v["name"]: bytes.fromhex(v["packet"]) for v in vectors["vectors"]}
    public = {name: c["public_key"] for name, c in vectors["clients"].items()}
    (tmp_path / "gnocchi.toml").write_text(
        f'state_dir = "{tmp_path}"\nserver_addresses = ["{vectors["server_ip"]}"]\n'
        + "".join(f'[clients.{n}]\npublic_key = "{k}"\n' for n, k in public.items())
    )
    counters.create(str(tmp_path))
    store = counters.Store(str(tmp_path)).load()
    store.commit(bytes.fromhex(public["a"]), 1)  # minimal-empty-data (a, counter 1) replays
    sent: list[dict] = []
    v = verifier.Verifier(
        config.load(str(tmp_path / "gnocchi.toml")),
        keyring.Keyring(bytes.fromhex(vectors["server_key"]), ()),
        store,
        events.EventLog(send=sent.append),
    )
    source = ipaddress.IPv4Address("198.18.3.1")
    for name in ("minimal-empty-data", "signed-for-other-server-ip", "data-len-exceeds-body"):
        handle(v, by_name[name], source, None)
    replay, signature, data_length = sent
    for entry, event in ((replay, "replay"), (signature, "signature")):
        assert entry["GNOCCHI_EVENT"] == event
        name = entry["GNOCCHI_CLAIMED_CLIENT"]
        assert entry["GNOCCHI_CLAIMED_CLIENT_KEY"] == public[name]
        assert "GNOCCHI_CLIENT" not in entry and "GNOCCHI_CLIENT_KEY" not in entry
        assert "(claimed)" in audit.format_entry(entry)
    assert data_length["GNOCCHI_EVENT"] == "refused"
    assert data_length["GNOCCHI_REASON"] == "data-length"
    assert data_length["GNOCCHI_CLIENT_KEY"] == public[data_length["GNOCCHI_CLIENT"]]
    assert not any(key.startswith("GNOCCHI_CLAIMED") for key in data_length)
    assert audit.counters_from(sent) == {}  # nothing was committed


def test_a_replay_far_below_the_last_counter_says_how_far_and_what_it_likely_is(tmp_path):
    """A client that lost its counter state knocks with its clock; a clock behind the one it
    knocked with before gives a replay whose gap, counters being clock nanoseconds, is a
    time the entry names (and audit shows). A replay of the very last counter says no more."""
    k = Keys(tmp_path)
    (tmp_path / "gnocchi.toml").write_text(
        f'state_dir = "{tmp_path}"\nhelper_socket = "{tmp_path}/h.sock"\n'
        f'[clients.alice]\npublic_key = "{k.public("alice")}"\nallow = ["22"]\n'
    )
    counters.create(str(tmp_path))
    store = counters.Store(str(tmp_path)).load()
    last = 1_790_000_000 * 10**9  # the clock, in nanoseconds, at alice's last knock
    store.commit(bytes.fromhex(k.public("alice")), last)
    sent: list[dict] = []
    v = verifier.Verifier(
        config.load(str(tmp_path / "gnocchi.toml")),
        keyring.Keyring(k.server, ()),
        store,
        events.EventLog(send=sent.append),
    )
    dst = ipaddress.IPv4Address("198.18.3.2")
    behind = (3 * 3600 + 25 * 60 + 7) * 10**9 + 123
    for counter in (last - behind, last):
        handle(
            v,
            seal.build_packet(k.server, k.seeds["alice"], counter, b"open 22", dst.packed),
            ipaddress.IPv4Address("198.18.3.1"),
            dst,
        )
    far, same = sent
    assert far["GNOCCHI_EVENT"] == same["GNOCCHI_EVENT"] == "replay"
    assert (
        "counter not above the last accepted but 3h 25min 7s below it: likely the client "
        "lost its counter state and its clock is now 3h 25min 7s or more behind"
    ) in far["MESSAGE"]
    assert "3h 25min 7s below it" in audit.format_entry(far)
    assert same["MESSAGE"].endswith("counter not above the last accepted")


def test_the_verifier_does_not_load_openssl():
    # hashlib loads OpenSSL, about 3.5 MB of the verifier's resident memory
    # (its target is 20 MB: bench/README.md); its one hash, the counter store's checksum,
    # is libsodium's BLAKE2b. What is loaded, not how much: this times nothing.
    probe = "import sys, gnocchi.server.verifier; print(' '.join(sys.modules))"
    loaded = subprocess.run(
        [sys.executable, "-c", probe], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.split()
    assert "gnocchi.server.counters" in loaded and not {"hashlib", "_hashlib"} & set(loaded)


# ---- the client's own policy (sources, expires) and limits, decided in process ----
# A refused knock costs no write: its counter is not stored, and its entry
# shares the budget of entries for packets whose counter was not stored.


class Stack:
    """The real Verifier, in process, with a recording helper socket and a set clock."""

    def __init__(self, tmp_path, policy: str, allow='["22"]'):
        self.k = Keys(tmp_path)
        (tmp_path / "gnocchi.toml").write_text(
            f'state_dir = "{tmp_path}"\nhelper_socket = "{tmp_path}/h.sock"\n[clients.alice]\n'
            f'public_key = "{self.k.public("alice")}"\nallow = {allow}\n{policy}'
        )
        cfg = config.load(str(tmp_path / "gnocchi.toml"))
        self.helper = HelperRecorder(tmp_path / "h.sock")
        self.sent: list[dict] = []
        counters.create(str(tmp_path))
        self.store = counters.Store(str(tmp_path)).load()
        self.clock = datetime.datetime(2026, 6, 1, tzinfo=datetime.UTC)
        self.v = verifier.Verifier(
            cfg,
            keyring.Keyring(self.k.server, ()),
            self.store,
            events.EventLog(send=self.sent.append),
            now=lambda: self.clock,
        )
        self.dst = ipaddress.IPv4Address("198.18.3.2")
        self.counter = 0

    def knock(self, source: str, data: bytes = b"open 22"):
        self.counter += 1
        packet = seal.build_packet(
            self.k.server, self.k.seeds["alice"], self.counter, data, self.dst.packed
        )
        handle(self.v, packet, ipaddress.ip_address(source), self.dst)
        return self.sent[-1]


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, 'sources = ["198.51.100.0/24", "2001:db8::/48"]\nexpires = 2026-12-31\n')
    yield s
    s.helper.close()


def test_a_knock_from_outside_the_sources_is_refused_and_not_stored(stack):
    entry = stack.knock("203.0.113.9")
    assert entry["GNOCCHI_EVENT"] == "refused" and "GNOCCHI_COUNTER" not in entry
    assert "203.0.113.9 is not among the client's sources" in entry["MESSAGE"]
    assert stack.store.last(bytes.fromhex(stack.k.public("alice"))) == 0
    assert stack.helper.messages == []
    assert stack.knock("198.51.100.20")["GNOCCHI_EVENT"] == "accepted"
    assert stack.knock("2001:db8:0:1::5")["GNOCCHI_EVENT"] == "accepted"
    assert len(stack.helper.messages) == 2


def test_a_knock_from_a_source_no_client_may_use_is_refused_before_anything_is_stored(tmp_path):
    # The source rule (an IPv6 source embedding IPv4, loopback, multicast...) is the
    # same check point as the client's own sources: no write, no helper request,
    # and the real client's next knock (a lower counter) is not made a replay.
    s = Stack(tmp_path, "")
    try:
        s.counter = 10
        entry = s.knock("::ffff:198.51.100.7")
        assert entry["GNOCCHI_EVENT"] == "refused" and "GNOCCHI_COUNTER" not in entry
        assert "embeds an IPv4 address" in entry["MESSAGE"]
        assert s.store.last(bytes.fromhex(s.k.public("alice"))) == 0
        assert s.helper.messages == []
        s.counter = 1
        assert s.knock("198.51.100.7")["GNOCCHI_EVENT"] == "accepted"
    finally:
        s.helper.close()


def test_an_expired_client_is_refused_from_that_day_on(stack):
    stack.clock = datetime.datetime(2026, 12, 30, 23, 59, tzinfo=datetime.UTC)
    assert stack.knock("198.51.100.20")["GNOCCHI_EVENT"] == "accepted"
    stack.clock = datetime.datetime(2026, 12, 31, 0, 0, tzinfo=datetime.UTC)
    entry = stack.knock("198.51.100.20")
    assert entry["GNOCCHI_EVENT"] == "refused" and "expired" in entry["MESSAGE"]
    assert "GNOCCHI_COUNTER" not in entry
    assert len(stack.helper.messages) == 1


def test_policy_refusals_share_the_budget_of_unstored_entries(stack):
    stack.v.client_limit.burst = stack.v.address_limit.burst = 10**6  # the budget alone
    for _ in range(events.BUDGET + 30):
        stack.knock("203.0.113.9")
    refused = [e for e in stack.sent if e["GNOCCHI_EVENT"] == "refused"]
    assert len(refused) == events.BUDGET


def test_one_clients_flood_costs_it_alone(tmp_path):
    s = Stack(tmp_path, "")
    try:
        alice = bytes.fromhex(s.k.public("alice"))
        for _ in range(61):  # 61 knocks at once
            s.knock("198.51.100.20")
        accepted = [e for e in s.sent if e["GNOCCHI_EVENT"] == "accepted"]
        assert len(accepted) == verifier.CLIENT_BURST == len(s.helper.messages)
        on_disk = counters.Store(str(tmp_path)).load()
        assert on_disk.last(alice) == verifier.CLIENT_BURST  # one write per accepted knock
        assert s.store.last(alice) == 61  # the dropped ones are spent all the same
        s.v.log.flush()
        [summary] = [e for e in s.sent if e["GNOCCHI_EVENT"] == "dropped-summary"]
        assert summary["GNOCCHI_DROPPED_RATE_LIMITED"] == str(61 - verifier.CLIENT_BURST)
        assert f"(alice {61 - verifier.CLIENT_BURST})" in summary["MESSAGE"]
        assert len(s.sent) == verifier.CLIENT_BURST + 1
    finally:
        s.helper.close()


def test_several_ports_are_one_decision_and_one_helper_request(tmp_path):
    """Every port of an `open` must be allowed; then the verifier asks the
    helper once for all of them and logs one entry naming them all."""
    s = Stack(tmp_path, "", allow='["22", "60001/udp"]')
    try:
        refused = s.knock("198.51.100.20", b"open 22 60002/udp")
        assert refused["GNOCCHI_EVENT"] == "refused"
        assert refused["GNOCCHI_REQUEST"] == "open 22/tcp 60002/udp"
        assert refused["GNOCCHI_REASON"] == (
            "60002/udp is not in this client's allow list (22/tcp, 60001/udp)"
        )
        assert s.helper.messages == []  # not even the allowed port
        accepted = s.knock("198.51.100.20", b"open 22 60001/udp")
        assert accepted["GNOCCHI_EVENT"] == "accepted"
        assert accepted["GNOCCHI_REQUEST"] == "open 22/tcp 60001/udp"
        assert "open 22/tcp 60001/udp" in accepted["MESSAGE"]
        assert len(s.helper.messages) == 1  # one request for both ports
        assert len(s.sent) == 2  # one entry per knock
    finally:
        s.helper.close()

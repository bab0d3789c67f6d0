"""A knock gets through a flood from elsewhere. The table cuts
one flooding source to the knock port in the kernel (set knock_port, filled by
the loader from the server key; one rate limit per source in knock_sources4/6),
before it reaches the verifier's socket; the knock port in the table follows
the key as gnocchi.socket's does. All on the real kernel, in namespaces.

The flooder sends as fast as one Python process can, for a bounded time and
count; the client knocks once from another address of the client namespace.
"""

from __future__ import annotations

import os
import re
import socket
import subprocess
import threading
import time
from collections import Counter

import pytest
from nacl.secret import SecretBox
from scapy.all import UDP, IPv6, Raw

from gnocchi.admin import check, nft_table, table
from gnocchi.shared import keys, protocol
from support import (
    PYTHON,
    REPO,
    TABLE_FILE,
    Daemon,
    EchoServices,
    Helper,
    Keys,
    Net,
    inside,
    knock,
    load_table,
    send_datagrams,
    write_config,
)
from test_gate_attacks import send_raw

RATE, BURST = 20, 100  # nft/gnocchi.nft: limit rate over 20/second burst 100 packets
FLOOD_SECONDS = 3

FLOOD = """
import socket, sys, time
src, dst, port = sys.argv[1], sys.argv[2], int(sys.argv[3])
seconds, most = float(sys.argv[4]), int(sys.argv[5])
pool = [bytes.fromhex(l) for l in open(sys.argv[6]).read().split()]
s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
s.bind((src, 0)); s.connect((dst, port))
sent, end = 0, time.monotonic() + seconds
while sent < most and time.monotonic() < end:
    for p in pool[:1000]:
        try:
            s.send(p)
        except OSError:
            pass
    pool = pool[1000:] + pool[:1000]
    sent += 1000
    if sent == 1000:
        print("flooding", flush=True)
print(sent, flush=True)
"""


def flood(
    net: Net, pool: list[bytes], pool_file, port: int, seconds=FLOOD_SECONDS, most=2_000_000
) -> subprocess.Popen:
    """A flood from the client's own address, started (it has sent its first 1,000)."""
    pool_file.write_text("\n".join(p.hex() for p in pool))
    sender = net.client.popen(
        [
            PYTHON,
            "-c",
            FLOOD,
            net.client.ip,
            net.server.ip,
            str(port),
            str(seconds),
            str(most),
            str(pool_file),
        ],
        stdout=subprocess.PIPE,
        text=True,
    )
    assert sender.stdout.readline() == "flooding\n"
    return sender


def flood_sent(sender: subprocess.Popen) -> int:
    out, _ = sender.communicate(timeout=FLOOD_SECONDS + 30)
    return int(out.split()[-1])


def other_address(net: Net, last: int) -> str:
    """Another address of the client namespace (198.18.n.last), on the same link."""
    ip = net.client.ip.rsplit(".", 1)[0] + f".{last}"
    net.client.run(["ip", "addr", "add", f"{ip}/24", "dev", "gveth0"])
    return ip


class Counting:
    """A UDP socket on the knock port in the server namespace, counting what it
    receives by source address (a big buffer and a thread: it never overflows at
    the rates that pass the limit)."""

    def __init__(self, net: Net, port: int, ip: str | None = None):
        ip = ip or net.server.ip
        with inside(net.server):
            self.sock = socket.socket(
                socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM
            )
        self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 22)
        self.sock.bind((ip, port))
        self.sock.settimeout(0.2)
        self.by_source: Counter = Counter()
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._read, daemon=True)
        self.thread.start()

    def _read(self):
        while not self.done.is_set():
            try:
                _, (ip, *_) = self.sock.recvfrom(2048)
                self.by_source[ip] += 1
            except TimeoutError:
                continue

    def settle(self) -> Counter:
        """Everything received so far (read until the socket is quiet for 0.2 s)."""
        before = None
        while before != sum(self.by_source.values()):
            before = sum(self.by_source.values())
            self.done.wait(0.4)
        return Counter(self.by_source)

    def close(self):
        self.done.set()
        self.thread.join(timeout=2)
        self.sock.close()


def send_from(net: Net, ip: str, port: int, packets: list[bytes], to: str | None = None) -> None:
    to = to or (net.server.ip6 if ":" in ip else net.server.ip)
    with inside(net.client):
        s = socket.socket(socket.AF_INET6 if ":" in ip else socket.AF_INET, socket.SOCK_DGRAM)
    with s:
        s.bind((ip, 0))
        for p in packets:
            s.sendto(p, (to, port))


@pytest.fixture
def net():
    with Net("fl") as n:
        yield n


@pytest.mark.parametrize("limited", [True, False], ids=["limited", "control-no-knock-port"])
def test_a_flooding_address_reaches_the_socket_only_at_the_limit(net, tmp_path, limited):
    port = 40001
    load_table(net.server, tmp_path, knock_port=port if limited else None)
    knocker = other_address(net, 3)
    counting = Counting(net, port)
    try:
        sender = flood(net, [os.urandom(120) for _ in range(1000)], tmp_path / "pool", port)
        send_from(net, knocker, port, [b"one knock"])
        sent = flood_sent(sender)
        got = counting.settle()
    finally:
        counting.close()
    assert sent >= 20 * BURST, f"not a flood: {sent} datagrams"
    assert got[knocker] == 1, "the knock from the other address reached the socket"
    # The sender ran at most FLOOD_SECONDS (+ its start): the burst, then RATE a second.
    cap = BURST + RATE * (FLOOD_SECONDS + 2)
    if limited:
        assert got[net.client.ip] <= cap, (got, sent)
    else:
        assert got[net.client.ip] > cap, "the control: without the knock port, all of it"


def test_a_client_knocking_as_clients_do_is_never_limited(net, tmp_path):
    """A whole NAT's worth of knocks at once from one address (the burst), after a
    ProxyCommand's three: every one reaches the socket."""
    port = 40002
    load_table(net.server, tmp_path, knock_port=port)
    counting = Counting(net, port)
    try:
        send_from(net, net.client.ip, port, [b"proxy knock %d" % i for i in range(3)])
        assert counting.settle()[net.client.ip] == 3
        send_datagrams(net, port, [b"knock %d" % i for i in range(BURST - 3)])
        got = counting.settle()
    finally:
        counting.close()
    assert got[net.client.ip] == BURST
    assert (
        net.client.ip in net.server.nft("list", "set", "inet", "gnocchi", "knock_sources4").stdout
    )


def test_a_full_source_set_lets_new_sources_through_to_the_verifier(net, tmp_path):
    """Kernel memory is bounded by the set's size; once it is full (a flood from many
    spoofed sources) a new source is not limited here: the verifier decides."""
    port = 40003
    path = load_table(net.server, tmp_path, knock_port=port)
    small, sized = re.subn(r"(set knock_sources4 \{[^}]*?size )\d+", r"\g<1>2", path.read_text())
    assert sized == 1
    path.write_text(small)
    net.server.nft("-f", str(path))
    net.server.nft("add", "element", "inet", "gnocchi", "knock_port", f"{{ {port} }}")
    first, second = other_address(net, 3), other_address(net, 4)
    counting = Counting(net, port)
    many = [b"x%d" % i for i in range(3 * BURST)]
    try:
        send_from(net, first, port, [b"fills"])
        send_from(net, second, port, [b"the set"])
        send_from(net, net.client.ip, port, many)  # a newcomer: the set is full
        send_from(net, first, port, many)  # a member: still limited
        got = counting.settle()
    finally:
        counting.close()
    assert got[net.client.ip] == len(many), got
    assert got[first] <= BURST + 1 + RATE, got


def test_an_ipv6_source_is_limited_per_64(net, tmp_path):
    """One host owns a /64 and may send from any address in it: the limit is the /64's."""
    port = 40005
    load_table(net.server, tmp_path, knock_port=port)
    same = net.client.ip6.replace("::1", "::3")
    other_net = "fd00:198:99::"
    other = other_net + "1"
    net.client.run(["ip", "-6", "addr", "add", f"{same}/64", "dev", "gveth0", "nodad"])
    net.client.run(["ip", "-6", "addr", "add", f"{other}/64", "dev", "gveth0", "nodad"])
    net.server.run(["ip", "-6", "route", "add", f"{other_net}/64", "dev", "gveth1"])
    counting = Counting(net, port, ip=net.server.ip6)
    many = [b"x%d" % i for i in range(3 * BURST)]
    try:
        send_from(net, net.client.ip6, port, many)
        send_from(net, same, port, many[:BURST])  # the same /64: its budget is spent
        send_from(net, other, port, many[:BURST])  # another /64: a budget of its own
        got = counting.settle()
    finally:
        counting.close()
    assert BURST <= got[net.client.ip6] <= BURST + RATE, got
    assert got[same] <= RATE, got
    assert got[other] == BURST, got


SITE_PORT = 40077
PREFIXES = 64  # /64s of one /48 used here (a /56 has 256)
SITE_RATE, SITE_BURST = 100, 500  # nft/gnocchi.nft, set knock_sites6: per /48


def test_one_holder_of_many_64s_gets_no_more_through_than_a_few_sources(net, tmp_path):
    """A home line is routed a /56 (256 /64s), a server a /48 (65,536): with a
    limit per /64 alone, one such holder would reach the verifier with its
    prefix's count of bursts, without forging anything, and a /48 would fill
    knock_sources6 by itself. The table's second limit, per /48 (set
    knock_sites6), makes the holder one source again."""
    load_table(net.server, tmp_path, knock_port=SITE_PORT)
    site = net.client.ip6.split(":")[:3]  # fd00:198:18, the client's /48
    sources = [":".join(site + [f"{0x100 + i:x}", "", "1"]) for i in range(PREFIXES)]
    counting = Counting(net, SITE_PORT, ip=net.server.ip6)
    try:
        started = time.monotonic()
        send_raw(
            net.client,
            [
                IPv6(src=src, dst=net.server.ip6) / UDP(sport=5000, dport=SITE_PORT) / Raw(b"x")
                for src in sources
                for _ in range(BURST + 50)
            ],
        )
        got = counting.settle()
        seconds = time.monotonic() - started
    finally:
        counting.close()
    through = sum(got[s] for s in sources)
    assert through >= BURST, got  # the datagrams came (and the first /64 got its burst)
    # The /48's own budget, whatever the number of /64s: at most its burst and
    # its rate for as long as the flood lasted (PREFIXES * BURST without it).
    assert through <= SITE_BURST + SITE_RATE * seconds + 5, (
        f"{through} datagrams from one /48 reached the knock socket in {seconds:.1f} s"
    )


# ---- the whole stack: a MAC-valid flood (the server key leaked) from one address ---


def probe(server_key: bytes, claimed: bytes, counter: int) -> bytes:
    """Sealed with the server key, claiming a configured client, with a canonical S that
    does not verify: each costs the verifier a full Ed25519 check (as in
    tests/verifier/test_oracle.py)."""
    sig = os.urandom(protocol.SIG_LEN - 1) + bytes([os.urandom(1)[0] & 0x0F])
    body = (
        protocol.MAGIC
        + claimed
        + sig
        + counter.to_bytes(protocol.COUNTER_LEN, "big")
        + (7).to_bytes(2, "big")
        + b"open 22"
        + os.urandom(9)
    )
    return bytes(SecretBox(server_key).encrypt(body, os.urandom(protocol.NONCE_LEN)))


def test_a_knock_opens_on_its_first_try_during_a_flood_from_another_address(net, tmp_path):
    k = Keys(tmp_path)
    load_table(net.server, tmp_path, knock_port=k.port)
    helper = Helper(net.server, peer_user="root")
    knocker = other_address(net, 3)
    try:
        with EchoServices(net.server, tcp_ports=(22,)):
            d = Daemon(
                net,
                write_config(tmp_path, k, str(helper.path)),
                f"{net.server.ip}:{k.port}",
                stderr=tmp_path / "daemon.err",
            )
            try:
                alice = bytes.fromhex(k.public("alice"))
                # More distinct packets than the verifier remembers (it drops exact
                # repeats cheaply): each one a full signature check.
                pool = [probe(k.server, alice, 10**12 + i) for i in range(6000)]
                sender = flood(net, pool, tmp_path / "pool", k.port)
                send_from(net, knocker, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
                accepted = d.wait_events("accepted", 1, timeout=FLOOD_SECONDS)[0]
                sent = flood_sent(sender)
                with inside(net.client):
                    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                with s:
                    s.bind((knocker, 0))
                    s.settimeout(2)
                    s.connect((net.server.ip, 22))
            finally:
                d.stop()
    finally:
        helper.close()
    assert accepted["GNOCCHI_SOURCE_IP"] == knocker
    assert sent >= 20 * BURST
    signature = [e for e in d.of("signature") if e.get("GNOCCHI_SOURCE_IP") == net.client.ip]
    assert len(signature) <= BURST + RATE * (FLOOD_SECONDS + 2), "the excess never got there"


# ---- the knock port in the table follows the key, as gnocchi.socket's does ----------


def test_the_tables_knock_port_follows_a_new_key_after_setup_and_rearming(
    net, tmp_path, monkeypatch
):
    k = Keys(tmp_path)
    config = write_config(tmp_path, k, str(tmp_path / "helper.sock"))
    units = tmp_path / "units"
    table_path = tmp_path / "gnocchi.nft"
    table_path.write_text(TABLE_FILE.read_text())
    # systemd's unit directory is units here (check asks systemd otherwise).
    monkeypatch.setattr(check, "systemd_running", lambda: False)
    monkeypatch.setattr(check, "UNIT_DIR", str(units))

    def setup():
        subprocess.run(
            [
                PYTHON,
                "-m",
                "gnocchi.admin",
                "setup",
                "--config",
                str(config),
                "--unit-dir",
                str(units),
            ],
            cwd=REPO,
            check=True,
            capture_output=True,
        )

    def live_knock_ports():
        with inside(net.server):
            return nft_table.live().knock_ports()

    setup()
    with inside(net.server):
        assert table.load(str(config), str(table_path)) == 0
    assert live_knock_ports() == [k.port]
    net.server.nft(
        "add",
        "element",
        "inet",
        "gnocchi",
        "knocked4",
        f"{{ {net.client.ip} . tcp . 22 timeout 30s }}",
    )  # a knock pending

    # A new server key, and `gnocchi setup` for it: the socket's drop-in moves on
    # at once; the loaded table still has the old port until it is loaded again.
    new = keys.new_server_key()
    while protocol.knock_port(new) == k.port:
        new = keys.new_server_key()
    os.unlink(k.server_file)
    keys.write_secret(k.server_file, new)
    setup()
    said = net.server.run(
        [
            PYTHON,
            "-m",
            "gnocchi.admin",
            "check",
            "--config",
            str(config),
            "--table",
            str(table_path),
            "--unit-dir",
            str(units),
        ],
        cwd=REPO,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert said.returncode == 0, said.stderr
    assert (
        f"the loaded table inet gnocchi limits floods on UDP {k.port}, but the server "
        f"key's knock port is {protocol.knock_port(new)}"
    ) in said.stderr

    with inside(net.server):
        assert table.load(str(config), str(table_path)) == 0  # systemctl reload gnocchi-arm
    assert live_knock_ports() == [protocol.knock_port(new)]
    with inside(net.server):
        assert [str(p.address) for p in nft_table.live().pending()] == [net.client.ip], (
            "only the knock port changed: the pending knock is kept"
        )

    # A flush, and the re-arm after it (nftables.service's drop-in, gnocchi-watch).
    net.server.nft("flush", "ruleset")
    with inside(net.server):
        assert table.rearm(str(config), str(table_path), "a test's flush", intent_known=True) == 0
    assert live_knock_ports() == [protocol.knock_port(new)]
    said = net.server.run(
        [
            PYTHON,
            "-m",
            "gnocchi.admin",
            "check",
            "--config",
            str(config),
            "--table",
            str(table_path),
            "--unit-dir",
            str(units),
        ],
        cwd=REPO,
        check=False,
        env=dict(os.environ, PYTHONPATH=str(REPO)),
    )
    assert said.returncode == 0 and "limits floods" not in said.stderr, said.stderr


def test_doctor_and_status_say_when_the_table_limits_another_port(net, tmp_path):
    from gnocchi.admin import doctor, status

    load_table(net.server, tmp_path, knock_port=40004)

    def finding(port: int):
        d = doctor.Doctor(str(tmp_path / "none.toml"), str(tmp_path / "gnocchi.nft"))
        d.port = port
        with inside(net.server):
            d.armed()
        [found] = [f for f in d.findings if f.what == "the table limits floods on the knock port"]
        return found

    assert finding(40004).ok
    wrong = finding(40005)
    assert not wrong.ok and "it limits UDP 40004, not the knock port 40005" in wrong.detail
    assert wrong.fix.startswith("systemctl reload gnocchi-arm")
    with inside(net.server):
        live = nft_table.live()
    assert status.flood_line(live.knock_ports(), 40004).startswith("flood limit: on 40004/udp")
    assert "on UDP 40004, NOT on the knock port 40005" in status.flood_line(
        live.knock_ports(), 40005
    )
    assert "NONE" in status.flood_line(None, 40005)

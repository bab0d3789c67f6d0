"""Floods, crashes and bad sockets: the verifier stays silent, bounded and replay-proof."""

from __future__ import annotations

import os
import random
import signal
import subprocess
import time

import pytest
from nacl.secret import SecretBox

from gnocchi.server import counters
from support import (
    PYTHON,
    REPO,
    UDP_CLIENT,
    Daemon,
    knock,
    requested_ports,
    send_datagrams,
    write_config,
)


def test_garbage_flood_gives_bounded_log_and_no_reply(daemons, net, k, tmp_path, helper):
    cfg = write_config(tmp_path, k, helper.path)
    d = daemons(
        net,
        cfg,
        f"{net.server.ip}:{k.port}",
        "--summary-interval",
        "1",
        stderr=tmp_path / "daemon.err",
    )
    rng = random.Random(1)
    garbage = [
        rng.randbytes(rng.choice([0, 1, 159, 160, 500, 1024, 1025, 1400])) for _ in range(1500)
    ]
    wrong_magic = [SecretBox(k.server).encrypt(rng.randbytes(300)) for _ in range(100)]
    unknown = [knock(k, "mallory", i, b"open 22", net.server.ip) for i in range(1, 101)]
    valid = knock(k, "alice", 1, b"open 22", net.server.ip)
    replays = [valid] * 300
    flood = garbage + wrong_magic + unknown + replays
    sent = {"MAGIC": 100, "UNKNOWN_CLIENT": 100, "SIZE+MAC": 1500, "REPEATED": 300}
    capture = tmp_path / "client.pcap"
    dump = net.client.popen(
        ["tcpdump", "-i", "gveth0", "-n", "-U", "-w", str(capture), f"ip src host {net.server.ip}"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    try:
        dump.stderr.readline()  # "listening on gveth0 ...": capturing from here on
        send_datagrams(net, k.port, [valid])
        d.wait_events("accepted", 1)  # started: from here the flood is read as fast as it comes
        before, dropped = net.server.udp(), net.client.tx_dropped("gveth0")
        replies = send_datagrams(net, k.port, flood, wait=1.0)
        d.wait_events("dropped-summary", 1, timeout=20)

        # What reached the verifier's socket is what it must count. On a busy
        # machine a full socket buffer (or the veth) may drop a few of the flood.
        def delivered() -> int:
            return net.server.udp()["InDatagrams"] - before["InDatagrams"]

        def counted() -> int:
            return sum(int(s["GNOCCHI_DROPPED"]) for s in d.of("dropped-summary"))

        d.wait_for(
            lambda _: net.server.udp_queued(k.port) == 0 and counted() == delivered(),
            what="every packet read counted",
            timeout=20,
        )
        after = net.server.udp()
        lost = (
            after["RcvbufErrors"]
            - before["RcvbufErrors"]
            + net.client.tx_dropped("gveth0")
            - dropped
        )
    finally:
        dump.send_signal(signal.SIGINT)
        dump.wait(timeout=10)
    assert replies == 0
    assert delivered() + lost == len(flood), (delivered(), lost)
    seen = subprocess.run(["tcpdump", "-n", "-r", str(capture)], capture_output=True, text=True)
    assert seen.returncode == 0 and seen.stdout == ""  # the server sent nothing at all
    summaries = d.of("dropped-summary")
    totals = {}
    for s in summaries:
        for key, value in s.items():
            if key.startswith("GNOCCHI_DROPPED_"):
                totals[key[16:]] = totals.get(key[16:], 0) + int(value)
    got = {
        "MAGIC": totals.get("MAGIC", 0),
        "UNKNOWN_CLIENT": totals.get("UNKNOWN_CLIENT", 0),
        "SIZE+MAC": totals.get("SIZE", 0) + totals.get("MAC", 0),
        # The 300 copies of the accepted knock: each the very same bytes, so
        # each is counted as repeated without a signature check.
        "REPEATED": totals.get("REPEATED", 0),
    }
    assert set(totals) <= {"MAGIC", "UNKNOWN_CLIENT", "SIZE", "MAC", "REPEATED"}, totals
    assert sum(got.values()) == delivered()
    # Each kind counted as what it is: all of it when nothing was lost, and
    # never more than was sent of it (what was lost is missing somewhere).
    assert got == sent if lost == 0 else all(got[kind] <= sent[kind] for kind in sent), got
    events = d.events()
    assert len(d.of("accepted")) == 1 and len(helper.messages) == 1
    # 2001 packets: started + accepted + one summary per second
    assert len(events) == 2 + len(summaries)
    assert d.proc.poll() is None


def test_counters_survive_kill_9_and_are_never_accepted_twice(net, k, tmp_path, helper):
    # Each counter c asks for port 2000+c, so the helper's log says which counters opened.
    ports = ", ".join(f'"{2000 + c}"' for c in range(1, 121))
    clients = f"""
[clients.alice]
public_key = "{k.public("alice")}"
allow = [{ports}]
"""
    cfg = write_config(tmp_path, k, helper.path, clients=clients)
    rng = random.Random(os.getpid())
    sent: list[bytes] = []
    counter = 0
    for round_ in range(12):
        fresh = []
        for _ in range(rng.randint(3, 8)):
            counter += 1
            fresh.append(
                knock(k, "alice", counter, f"open {2000 + counter}".encode(), net.server.ip)
            )
        batch = fresh + sent  # new knocks, then every old one again (replays)
        rng.shuffle(batch)
        sent += fresh
        d = Daemon(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / f"d{round_}.err")
        sender = net.client.popen(
            [PYTHON, UDP_CLIENT, net.server.ip, str(k.port), "0"],
            stdin=subprocess.PIPE,
            stdout=subprocess.DEVNULL,
            text=True,
        )
        sender.communicate("\n".join(p.hex() for p in batch), timeout=30)
        time.sleep(rng.uniform(0.0, 0.4))  # the daemon starts, then dies at a random moment
        d.proc.send_signal(signal.SIGKILL)
        d.proc.wait(timeout=10)
        assert "corrupt" not in d.text() and "Traceback" not in d.text()
    opened = [requested_ports(m)[0][0] - 2000 for m in helper.messages]
    assert len(opened) == len(set(opened)), f"a counter was accepted twice: {sorted(opened)}"
    # every counter that opened was stored first: the store is at least the highest opened
    store = counters.Store(str(tmp_path / "state")).load()
    stored = store.last(bytes.fromhex(k.public("alice")))
    assert opened and stored >= max(opened)
    # and a daemon started on the final store still works and refuses what it stored
    d = Daemon(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "final.err")
    try:
        used = sent[max(0, stored - 3) : stored]  # sent[i] has counter i + 1
        send_datagrams(
            net, k.port, used + [knock(k, "alice", counter + 1, b"open 2001", net.server.ip)]
        )
        d.wait_events("accepted", 1)
        d.wait_events("replay", len(used))
        assert [e["GNOCCHI_COUNTER"] for e in d.of("accepted")] == [str(counter + 1)]
    finally:
        d.stop()


def test_store_that_cannot_be_written_fails_closed(daemons, net, k, tmp_path, helper):
    cfg = write_config(tmp_path, k, helper.path)
    (tmp_path / "state" / "counters.tmp").mkdir()  # a real fault: the write must fail
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
    assert d.proc.wait(timeout=10) == 1
    failed = d.of("store-failed")
    assert failed and "cannot write" in failed[0]["MESSAGE"]
    assert str(tmp_path / "state" / "counters") in failed[0]["MESSAGE"]
    assert helper.messages == []


def test_corrupt_store_refuses_to_start_and_says_how_to_recover(daemons, net, k, tmp_path, helper):
    cfg = write_config(tmp_path, k, helper.path)
    store = tmp_path / "state" / "counters"
    store.write_text("# gnocchi counters v1\n" + k.public("alice") + " 12x\n")
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
    send_datagrams(net, k.port, [knock(k, "alice", 13, b"open 22", net.server.ip)])
    assert d.proc.wait(timeout=10) == 1
    text = d.text()
    assert f"{store}: corrupt counter store (line 2" in text
    assert "gnocchi audit --counters" in text
    assert helper.messages == []


@pytest.mark.parametrize(
    "listen_args, problem",
    [
        (
            ["-d", "-l", "{ip}:{wrong}"],
            "is on UDP port {wrong}, but the knock port of the server's keys is {port}",
        ),
        (["-d", "-l", "{ip}:{port}", "-l", "{port2}"], "systemd passed 2 sockets for 1 knock port"),
        (["-l", "{ip}:{port}"], "is not a UDP socket"),
    ],
)
def test_a_wrong_passed_socket_is_refused_with_the_unit_line(
    net, k, tmp_path, helper, listen_args, problem
):
    cfg = write_config(tmp_path, k, helper.path)
    wrong = k.port + 1 if k.port < 65535 else k.port - 1
    fill = dict(ip=net.server.ip, port=k.port, wrong=wrong, port2=f"[{net.server.ip6}]:{k.port}")
    argv = [
        "systemd-socket-activate",
        *[a.format(**fill) for a in listen_args],
        "-E",
        f"PYTHONPATH={REPO}",
        PYTHON,
        "-m",
        "gnocchi.admin",
        "serve",
        "--config",
        str(cfg),
    ]
    proc = net.server.popen(argv, cwd=REPO, stderr=subprocess.PIPE, text=True)
    try:
        err = ""
        deadline = time.monotonic() + 5
        while "Listening on" not in err and time.monotonic() < deadline:
            err += proc.stderr.readline()
        if "-d" in listen_args:
            send_datagrams(net, wrong if "{wrong}" in listen_args[-1] else k.port, [b"x"])
        else:  # a stream socket: activation comes with a connection
            net.client.run(
                [
                    PYTHON,
                    "-c",
                    "import socket; socket.create_connection("
                    f"('{net.server.ip}', {k.port}), timeout=3).close()",
                ],
                check=False,
            )
        _, out = proc.communicate(timeout=15)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    err += out or ""
    assert proc.returncode == 1, err
    assert problem.format(**fill) in err
    assert f"ListenDatagram={k.port}" in err


def test_a_lost_store_stops_the_verifier_until_recovery_kills_every_captured_knock(
    daemons, net, k, tmp_path, helper
):
    # Without the store every captured knock would be valid again.
    cfg = write_config(tmp_path, k, helper.path)
    listen = f"{net.server.ip}:{k.port}"
    base = time.time_ns()  # counters as a client makes them: max(last + 1, clock)
    captured = [knock(k, "alice", base + i, b"open 22", net.server.ip) for i in range(1, 16)]
    d = daemons(net, cfg, listen, "--summary-interval", "1", stderr=tmp_path / "d1.err")
    send_datagrams(net, k.port, captured)
    assert len(d.wait_events("accepted", 15)) == 15
    d.stop()
    os.unlink(tmp_path / "state" / "counters")  # the store is lost

    d = daemons(net, cfg, listen, stderr=tmp_path / "d2.err")
    send_datagrams(net, k.port, captured[:1])
    assert d.proc.wait(timeout=10) == 1
    assert "counter store is missing" in d.text() and "gnocchi recover-counters" in d.text()

    out = subprocess.run(
        [PYTHON, "-m", "gnocchi.admin", "recover-counters", "--config", str(cfg)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert out.returncode == 0, out.stderr
    assert "is now a replay" in out.stdout
    helper.messages.clear()
    d = daemons(net, cfg, listen, "--summary-interval", "1", stderr=tmp_path / "d3.err")
    send_datagrams(net, k.port, captured)  # every captured knock: a replay
    send_datagrams(net, k.port, [knock(k, "alice", time.time_ns(), b"open 22", net.server.ip)])
    assert len(d.wait_events("accepted", 1)) == 1  # the client's next knock: accepted
    time.sleep(0.5)
    assert len(d.of("accepted")) == 1 and len(helper.messages) == 1
    assert d.of("replay"), "the captured knocks were not even seen"


@pytest.mark.parametrize("what", ["config", "state"])
def test_files_others_can_write_stop_the_verifier_with_the_fix(
    daemons, net, k, tmp_path, helper, what
):
    cfg = write_config(tmp_path, k, helper.path)
    target = cfg if what == "config" else tmp_path / "state"
    os.chmod(target, 0o666 if what == "config" else 0o777)
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
    assert d.proc.wait(timeout=10) == 1
    assert f"{target} is writable by group or others" in d.text()
    assert f"fix: chmod go-w {target}" in d.text()
    assert helper.messages == []

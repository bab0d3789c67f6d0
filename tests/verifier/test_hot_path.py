"""The verifier's hot path, for real: datagrams read in batches (recvmmsg),
size and seal checked where they lie, and only then anything else.
"""

from __future__ import annotations

import os
import socket

from gnocchi.shared import protocol, seal
from support import knock, request, send_paced, write_config


def longest_knock(k, counter: int, server_ip: str) -> bytes:
    """A valid knock of exactly MAX_PACKET bytes."""
    return seal.build_packet(
        k.server,
        k.seeds["alice"],
        counter,
        b"open 22",
        socket.inet_aton(server_ip),
        body_len=protocol.MAX_BODY,
    )


def test_knocks_among_garbage_are_each_decided_and_oversize_is_never_cut_to_fit(
    daemons, net, k, tmp_path, helper
):
    d = daemons(
        net,
        write_config(tmp_path, k, helper.path),
        f"{net.server.ip}:{k.port}",
        "--summary-interval",
        "1",
        stderr=tmp_path / "daemon.err",
    )
    # A valid 1024-byte knock with bytes after it: read into a buffer one byte
    # larger than MAX_PACKET it is 1025 bytes, oversize, and opens nothing; cut
    # at 1024 it would be a valid knock.
    longest = longest_knock(k, 1, net.server.ip)
    assert len(longest) == protocol.MAX_PACKET
    oversize = [longest + b"\x00", longest + os.urandom(400)]
    garbage = [os.urandom(n) for n in (1, 23, 24, 159, 160, 600, 1024) * 10]
    knocks = [knock(k, "alice", c, b"open 22", net.server.ip) for c in (2, 3, 4)]
    burst = (
        oversize
        + garbage[:25]
        + [knocks[0]]
        + garbage[25:50]
        + [knocks[1], knocks[1]]
        + garbage[50:]
        + [knocks[2], longest_knock(k, 5, net.server.ip)]
    )
    send_paced(net.client, net.server.ip, k.port, burst)  # read whole, ten at a time
    accepted = d.wait_events("accepted", 4)
    assert [e["GNOCCHI_COUNTER"] for e in accepted] == ["2", "3", "4", "5"]
    assert all(e["GNOCCHI_SOURCE_IP"] == net.client.ip for e in accepted)
    assert helper.messages == [request(net.client.ip, 22)] * 4
    dropped = {}
    d.wait_for(
        lambda _: sum(int(s["GNOCCHI_DROPPED"]) for s in d.of("dropped-summary")) == len(burst) - 4,
        what="every other datagram counted",
        timeout=20,
    )
    for summary in d.of("dropped-summary"):
        for key, value in summary.items():
            if key.startswith("GNOCCHI_DROPPED_"):
                dropped[key[16:]] = dropped.get(key[16:], 0) + int(value)
    # 1..159 bytes and the two oversize ones; the rest fail the MAC; the second
    # copy of a decided knock is a cheap repeat.
    assert dropped == {"SIZE": 40 + 2, "MAC": 30, "REPEATED": 1}
    assert d.proc.poll() is None

"""No oracle. A client holds the server key, so it can seal packets
that claim any public key with any counter. If a claim that is a replay (the
counter is not above the stored one) or a claim of an unconfigured key cost
the verifier less than a claim that needs the signature checked, a client
could time its own knocks after such probes and learn whether another key is
configured and how high its counter is. The probe, for real: three batches
of such packets against the real verifier, and the CPU time it spends on
each batch (/proc/PID/stat) must be the same within noise.
"""

from __future__ import annotations

import contextlib
import os
from pathlib import Path

from nacl.secret import SecretBox

from gnocchi.shared import protocol
from support import knock, send_paced, write_config

PROBES = 3000


def probe(server_key: bytes, claimed: bytes, counter: int) -> bytes:
    """Sealed with the server key, claiming `claimed`, with a signature that fails
    only after the whole Ed25519 check: its S is canonical (below the group order),
    so the check cannot stop early."""
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


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_claims_cost_the_same_whether_configured_and_whatever_the_counter(
    daemons, net, k, tmp_path, helper
):
    cfg = write_config(tmp_path, k, helper.path)
    d = daemons(
        net,
        cfg,
        f"{net.server.ip}:{k.port}",
        "--summary-interval",
        "1",
        stderr=tmp_path / "daemon.err",
    )
    bob = bytes.fromhex(k.public("bob"))
    mallory = bytes.fromhex(k.public("mallory"))  # a real key, but no client's here
    sync = iter(range(1, 100))

    def batch(packets: list[bytes]) -> tuple[int, int]:
        """Send packets, then a valid knock; once that is decided, so are they.
        (CPU ticks spent, packets the verifier read): a busy machine may drop a
        few of a batch at the socket (a lost knock is sent again), so the cost of
        a packet is counted over what arrived."""
        before, seen, read = cpu_ticks(d.proc.pid), len(d.of("accepted")), net.server.udp()
        send_paced(net.client, net.server.ip, k.port, packets)
        for _ in range(3):
            send_paced(
                net.client,
                net.server.ip,
                k.port,
                [knock(k, "alice", next(sync), b"open 22", net.server.ip)],
            )
            with contextlib.suppress(AssertionError):  # not decided within 10 s: lost
                d.wait_events("accepted", seen + 1)
                break
        assert len(d.of("accepted")) > seen, "three valid knocks in a row lost"
        return (
            cpu_ticks(d.proc.pid) - before,
            net.server.udp()["InDatagrams"] - read["InDatagrams"],
        )

    send_paced(net.client, net.server.ip, k.port, [knock(k, "bob", 1000, b"", net.server.ip)])
    d.wait_events("accepted", 1)  # bob's counter: 1000
    spent = {
        "replay": batch([probe(k.server, bob, 5) for _ in range(PROBES)]),
        "signature": batch([probe(k.server, bob, 10**9 + i) for i in range(PROBES)]),
        "unknown key": batch([probe(k.server, mallory, 10**9) for _ in range(PROBES)]),
    }
    # Each batch holds 3,000 signature checks (tens of clock ticks): a cheap
    # path would show as a fraction of the others.
    assert spent["signature"][0] >= 10, spent
    cost = {kind: ticks / read for kind, (ticks, read) in spent.items()}
    for kind in ("replay", "unknown key"):
        assert 0.6 <= cost[kind] / cost["signature"] <= 1.67, spent
    assert d.proc.poll() is None

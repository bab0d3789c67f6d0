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
    body = (protocol.MAGIC + claimed + sig
            + counter.to_bytes(protocol.COUNTER_LEN, "big") + (7).to_bytes(2, "big")
            + b"open 22" + os.urandom(9))
    return bytes(SecretBox(server_key).encrypt(body, os.urandom(protocol.NONCE_LEN)))


def cpu_ticks(pid: int) -> int:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return int(fields[11]) + int(fields[12])  # utime + stime


def test_claims_cost_the_same_whether_configured_and_whatever_the_counter(
        daemons, net, k, tmp_path, helper):
    cfg = write_config(tmp_path, k, helper.path)
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", "--summary-interval", "1",
                stderr=tmp_path / "daemon.err")
    bob = bytes.fromhex(k.public("bob"))
    mallory = bytes.fromhex(k.public("mallory"))  # a real key, but no client's here
    sync = iter(range(1, 100))

    def batch(packets: list[bytes], accepted: int = 1) -> int:
        """Send packets, then one valid knock; once that is decided, so are they."""
        before, seen = cpu_ticks(d.proc.pid), len(d.of("accepted"))
        packets = packets + [knock(k, "alice", next(sync), b"open 22", net.server.ip)]
        send_paced(net.client, net.server.ip, k.port, packets)  # read whole: none lost
        d.wait_events("accepted", seen + accepted)
        return cpu_ticks(d.proc.pid) - before

    batch([knock(k, "bob", 1000, b"", net.server.ip)], accepted=2)  # bob's counter: 1000
    cost = {
        "replay": batch([probe(k.server, bob, 5) for _ in range(PROBES)]),
        "signature": batch([probe(k.server, bob, 10**9 + i) for i in range(PROBES)]),
        "unknown key": batch([probe(k.server, mallory, 10**9) for _ in range(PROBES)]),
    }
    # Each batch holds 3,000 signature checks (tens of clock ticks): a cheap
    # path would show as a fraction of the others.
    assert cost["signature"] >= 10, cost
    for kind in ("replay", "unknown key"):
        assert 0.6 <= cost[kind] / cost["signature"] <= 1.67, cost
    assert d.proc.poll() is None

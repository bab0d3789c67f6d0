"""How much a knock costs the verifier, in-process (no sockets).

    /usr/bin/python3 bench/verifier_cost.py [SECONDS_PER_CASE]

Cases: a flood of random bytes (size + one MAC check, through open_packet,
then in place as the serve loop checks them: the hot path), a
replayed valid knock (MAC + the signature check every claimed key costs), a valid knock
(MAC + Ed25519 verify + durable counter commit with fsync, in a temp dir on
this disk). Then the same for knock protocol v2 (docs/PROTOCOL.md) beside
them: garbage aimed at v2 (MAGIC2, then random bytes: MAC1, a keyed BLAKE2b,
drops it), garbage that knows the server public key (MAC1 right: one
X25519 before the sealed box fails), random garbage at a v2-only server
(dropped at MAGIC2's comparison), a replayed and a valid v2 knock (the
seal's X25519, the signature, the commit). Each case runs for a bounded time
and prints decisions/second.
"""

import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gnocchi.server import counters
from gnocchi.shared import keys, protocol, seal

SERVER_IP = bytes([198, 18, 0, 2])


def rate(label, seconds, step):
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step(n)
        n += 1
    print(f"{label:50} {n / elapsed:10.0f} /s  ({n} in {elapsed:.1f} s)")


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    key, seed = os.urandom(32), os.urandom(32)
    pub = keys.public_of(seed)
    garbage = [os.urandom(160 + i % 865) for i in range(1000)]
    rate(
        "garbage (size + MAC check)",
        seconds,
        lambda i: protocol.open_packet(garbage[i % 1000], key, lambda k: 0, [SERVER_IP]),
    )
    # As the verifier's serve loop checks them: where they lie in receive
    # buffers (nonce, then the box after BOXZERO_LEN zero bytes).
    nonces = [g[: protocol.NONCE_LEN] for g in garbage]
    boxes = [
        protocol.ffi.new("unsigned char[]", bytes(protocol.BOXZERO_LEN) + g[protocol.NONCE_LEN :])
        for g in garbage
    ]
    opened = protocol.ffi.new("unsigned char[]", protocol.BOXZERO_LEN + protocol.MAX_PACKET)
    rate(
        "garbage in place (protocol.unseal)",
        seconds,
        lambda i: protocol.unseal(
            len(garbage[i % 1000]), nonces[i % 1000], boxes[i % 1000], opened, key
        ),
    )
    replay = seal.build_packet(key, seed, 1, b"open 22", SERVER_IP)
    rate(
        "replayed knock (MAC, signature, counter)",
        seconds,
        lambda i: protocol.open_packet(replay, key, lambda k: 5, [SERVER_IP]),
    )
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(__file__))) as d:
        counters.create(d)
        store = counters.Store(d).load()
        knocks = [seal.build_packet(key, seed, c, b"open 22", SERVER_IP) for c in range(1, 20001)]

        def valid(i):
            r = protocol.open_packet(knocks[i], key, lambda k: store.last(pub), [SERVER_IP])
            assert isinstance(r, protocol.Accepted), r
            store.commit(pub, r.counter)

        rate("valid knock (verify + fsync'd commit)", min(seconds, 5.0), valid)
    v2(seconds, seed, pub, garbage)


def v2(seconds, seed, pub, garbage):
    private = keys.new_private_key()
    public = protocol.public_key(private)
    keys2 = [(public, private)]
    ffi = protocol.ffi
    aimed = [protocol.MAGIC2 + os.urandom(176 + i % 865) for i in range(1000)]
    knowing = []
    for g in aimed:
        sealed = g[protocol.HEAD_LEN :]
        knowing.append(
            protocol.MAGIC2
            + protocol.blake2b(sealed, protocol.MAC1_LEN, protocol.MAC1_PERSON, key=public)
            + sealed
        )
    opened = ffi.new("unsigned char[]", protocol.BOXZERO_LEN + protocol.MAX_PACKET2)

    def in_place(pool, label, v1_key=None):
        heads = [p[: protocol.NONCE_LEN] for p in pool]
        boxes = [
            ffi.new("unsigned char[]", bytes(protocol.BOXZERO_LEN) + p[protocol.NONCE_LEN :])
            for p in pool
        ]
        rate(
            label,
            seconds,
            lambda i: protocol.unseal(
                len(pool[i % 1000]), heads[i % 1000], boxes[i % 1000], opened, v1_key, keys2
            ),
        )

    in_place(aimed, "v2: garbage aimed at v2, in place (MAC1)")
    in_place(knowing, "v2: garbage with MAC1 right (X25519, seal)")
    in_place(garbage, "v2 only: random garbage in place (MAGIC2)")
    in_place(aimed, "v1+v2: garbage aimed at v2, in place (MAC1)", os.urandom(32))
    replay = seal.build_packet2(public, seed, 1, b"open 22", SERVER_IP)
    rate(
        "v2: replayed knock (X25519, signature)",
        seconds,
        lambda i: protocol.open_packet(replay, None, lambda k: 5, [SERVER_IP], keys2),
    )
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(__file__))) as d:
        counters.create(d)
        store = counters.Store(d).load()
        knocks = [
            seal.build_packet2(public, seed, c, b"open 22", SERVER_IP) for c in range(1, 10001)
        ]

        def valid(i):
            r = protocol.open_packet(knocks[i], None, lambda k: store.last(pub), [SERVER_IP], keys2)
            assert isinstance(r, protocol.Accepted), r
            store.commit(pub, r.counter)

        rate("v2: valid knock (X25519, verify, fsync'd commit)", min(seconds, 5.0), valid)


if __name__ == "__main__":
    main()

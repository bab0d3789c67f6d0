"""How much a knock costs the verifier, in-process (no sockets).

    /usr/bin/python3 bench/verifier_cost.py [SECONDS_PER_CASE]

Cases: a flood of random bytes (size + one MAC check, through open_packet,
then in place as the serve loop checks them: the hot path), a
replayed valid knock (MAC + the signature check every claimed key costs), a valid knock
(MAC + Ed25519 verify + durable counter commit with fsync, in a temp dir on
this disk). Each case runs for a bounded time and prints decisions/second.
"""
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))
from gnocchi.server import counters
from gnocchi.shared import keys, protocol  # noqa: E402

SERVER_IP = bytes([198, 18, 0, 2])


def rate(label, seconds, step):
    n, start = 0, time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        step(n)
        n += 1
    print(f"{label:44} {n / elapsed:10.0f} /s  ({n} in {elapsed:.1f} s)")


def main():
    seconds = float(sys.argv[1]) if len(sys.argv) > 1 else 2.0
    key, seed = os.urandom(32), os.urandom(32)
    pub = keys.public_of(seed)
    garbage = [os.urandom(160 + i % 865) for i in range(1000)]
    rate("garbage (size + MAC check)", seconds,
         lambda i: protocol.open_packet(garbage[i % 1000], key, lambda k: 0, [SERVER_IP]))
    # As the verifier's serve loop checks them: where they lie in receive
    # buffers (nonce, then the box after BOXZERO_LEN zero bytes).
    nonces = [g[:protocol.NONCE_LEN] for g in garbage]
    boxes = [protocol.ffi.new("unsigned char[]",
                              bytes(protocol.BOXZERO_LEN) + g[protocol.NONCE_LEN:])
             for g in garbage]
    opened = protocol.ffi.new("unsigned char[]", protocol.MAX_PACKET)
    rate("garbage in place (protocol.unseal)", seconds,
         lambda i: protocol.unseal(len(garbage[i % 1000]), nonces[i % 1000], boxes[i % 1000],
                                   opened, key))
    replay = protocol.build_packet(key, seed, 1, b"open 22", SERVER_IP)
    rate("replayed knock (MAC, signature, counter)", seconds,
         lambda i: protocol.open_packet(replay, key, lambda k: 5, [SERVER_IP]))
    with tempfile.TemporaryDirectory(dir=os.path.dirname(os.path.abspath(__file__))) as d:
        counters.create(d)
        store = counters.Store(d).load()
        knocks = [protocol.build_packet(key, seed, c, b"open 22", SERVER_IP)
                  for c in range(1, 20001)]

        def valid(i):
            r = protocol.open_packet(knocks[i], key, lambda k: store.last(pub), [SERVER_IP])
            assert isinstance(r, protocol.Accepted), r
            store.commit(pub, r.counter)
        rate("valid knock (verify + fsync'd commit)", min(seconds, 5.0), valid)


if __name__ == "__main__":
    main()

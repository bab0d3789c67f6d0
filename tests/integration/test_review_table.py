"""Review of the knock port's per-source limit (nft/gnocchi.nft, chain knock):
one IPv6 holder with many /64s. A home line is routed a /56 (256 /64s), a
server a /48 (65,536): each /64 gets the budget of one source, so one such
holder reaches the verifier with its prefix's count of bursts, without
forging anything, and a /48 fills knock_sources6 by itself (after which
every new source, its own included, is not limited at all). The limit is
"one flooding source" only for IPv4.

The table's second limit, per /48 (set knock_sites6), makes the holder one
source again; without it this test fails. Real kernel, in namespaces."""
import time

import pytest
from scapy.all import UDP, IPv6, Raw

from support import Net, load_table
from test_gate_attacks import send_raw
from test_table_flood import BURST, Counting

PORT = 40077
PREFIXES = 64  # /64s of one /48 used here (a /56 has 256)
SITE_RATE, SITE_BURST = 100, 500  # nft/gnocchi.nft, set knock_sites6: per /48


@pytest.fixture
def net():
    with Net("rt") as n:
        yield n


def test_one_holder_of_many_64s_gets_no_more_through_than_a_few_sources(net, tmp_path):
    load_table(net.server, tmp_path, knock_port=PORT)
    site = net.client.ip6.split(":")[:3]  # fd00:198:18, the client's /48
    sources = [":".join(site + [f"{0x100 + i:x}", "", "1"]) for i in range(PREFIXES)]
    counting = Counting(net, PORT, ip=net.server.ip6)
    try:
        started = time.monotonic()
        send_raw(net.client, [IPv6(src=src, dst=net.server.ip6) / UDP(sport=5000, dport=PORT)
                              / Raw(b"x") for src in sources for _ in range(BURST + 50)])
        got = counting.settle()
        seconds = time.monotonic() - started
    finally:
        counting.close()
    through = sum(got[s] for s in sources)
    assert through >= BURST, got  # the datagrams came (and the first /64 got its burst)
    # The /48's own budget, whatever the number of /64s: at most its burst and
    # its rate for as long as the flood lasted (PREFIXES * BURST without it).
    assert through <= SITE_BURST + SITE_RATE * seconds + 5, (
        f"{through} datagrams from one /48 reached the knock socket in {seconds:.1f} s")

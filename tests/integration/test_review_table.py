"""Review of the knock port's per-source limit (nft/gnocchi.nft, chain knock):
one IPv6 holder with many /64s. A home line is routed a /56 (256 /64s), a
server a /48 (65,536): each /64 gets the budget of one source, so one such
holder reaches the verifier with its prefix's count of bursts, without
forging anything, and a /48 fills knock_sources6 by itself (after which
every new source, its own included, is not limited at all). The limit is
"one flooding source" only for IPv4.

This test fails on purpose: it asserts what a second, coarser limit (per
/48, say) would give, and the table has none. Real kernel, in namespaces."""
import pytest
from scapy.all import UDP, IPv6, Raw

from support import Net, load_table
from test_gate_attacks import send_raw
from test_table_flood import BURST, RATE, Counting

PORT = 40077
PREFIXES = 64  # /64s of one /48 used here (a /56 has 256)


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
        for src in sources:
            packet = IPv6(src=src, dst=net.server.ip6) / UDP(sport=5000, dport=PORT) / Raw(b"x")
            send_raw(net.client, [packet] * (BURST + 50))
        got = counting.settle()
    finally:
        counting.close()
    through = sum(got[s] for s in sources)
    assert through >= BURST, got  # the datagrams came (and each /64 got its burst)
    assert through <= 4 * (BURST + 5 * RATE), (
        f"{through} datagrams from one /48 reached the knock socket, "
        f"{PREFIXES} single sources' worth ({BURST} each)")

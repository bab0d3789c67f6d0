"""helper/__main__.py's decide(), every branch, without root: peer, length,
version, count, protocol, duplicate, address, not protected, rate, past the
deadline, nft failure, and OK; and what nft.Table keeps between requests: its
copies of the protected sets, and whether the kernel re-arms on add.

The connection is a real AF_UNIX SOCK_SEQPACKET socketpair, so SO_PEERCRED
is the kernel's answer (this process); the clock is a number the test moves.
Only libnftables is a stand-in, FakeNftables (tests/support/helper.py), here
and nowhere else: tests/integration/test_helper_requests.py drives the real
helper, library and kernel, as root, in a namespace.
"""
import ipaddress
import os
import socket

import pytest

import nft
import request as rq  # helper/request.py, by the name the helper imports it
from support import FakeNftables, helper_main, request

main = helper_main()
ME = os.getuid()
VALID = request("198.18.1.1", 22)
VALID_ADDRESS = ipaddress.ip_address("198.18.1.1")


def table(ctx=None, rearms=True):
    """An nft.Table on ctx, for a kernel that re-arms on add (or not)."""
    return nft.Table(ctx or FakeNftables(), rearms)


def decide(message, peer_uid=ME, nft_ctx=None, recent=None, now=1000.0, silent=False, on=None):
    """decide() on a fresh connection that sent message (or nothing, if
    silent), with the table on (else a new one on nft_ctx)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        ours.settimeout(0.2)  # the helper's RECV_SECONDS, shortened
        if not silent:
            theirs.send(message)
        return main.decide(ours, peer_uid, on or table(nft_ctx), 30,
                           {} if recent is None else recent, clock=lambda: now)


@pytest.mark.parametrize("name, message, status", [
    ("empty", b"", "BAD_LENGTH"),
    ("short", VALID[:-1], "BAD_LENGTH"),
    ("long", VALID + b"\0", "BAD_LENGTH"),
    ("version 1", request("198.18.1.1", 22, version=1), "BAD_VERSION"),
    ("pad byte set", request("198.18.1.1", 22, pad=1), "BAD_VERSION"),
    ("proto icmp", request("198.18.1.1", 22, 1), "BAD_PROTO"),
    ("family 5", request("198.18.1.1", 22, family=5), "BAD_ADDRESS"),
    ("loopback", request("127.0.0.1", 22), "BAD_ADDRESS"),
    ("port 0", request("198.18.1.1", 0), "NOT_PROTECTED"),
    ("count 0", request("198.18.1.1", 22, count=0), "BAD_COUNT"),
    ("count 9", request("198.18.1.1", 1, more=[(p, 6) for p in range(2, 10)]), "BAD_COUNT"),
    ("says 2, carries 1", request("198.18.1.1", 22, count=2), "BAD_LENGTH"),
    ("22/tcp twice", request("198.18.1.1", 22, more=[(60001, 17), (22, 6)]), "BAD_DUPLICATE"),
    ("one bad proto of two", request("198.18.1.1", 22, more=[(22, 1)]), "BAD_PROTO"),
])
def test_a_malformed_request_is_refused_with_its_bytes_and_nft_is_not_asked(name, message,
                                                                            status):
    ctx = FakeNftables()
    code, _, fields = decide(message, nft_ctx=ctx)
    assert rq.STATUSES[code] == status
    # what was read, at most one byte past the longest request: the log is bounded
    assert fields["REQUEST_HEX"] == message[:rq.MAX_SIZE + 1].hex() and fields["PEER_UID"] == ME
    assert ctx.sent == []


def test_a_silent_peer_is_a_bad_length_after_the_timeout():
    code, _, fields = decide(b"", silent=True)
    assert (code, fields["REQUEST_HEX"]) == (rq.BAD_LENGTH, "")


def test_a_peer_that_is_not_the_verifier_is_refused_even_with_a_valid_request():
    ctx = FakeNftables()
    code, text, fields = decide(VALID, peer_uid=ME + 1, nft_ctx=ctx)
    assert code == rq.BAD_PEER and f"uid {ME} is not the verifier's" in text
    assert fields["REQUEST_HEX"] == VALID.hex() and ctx.sent == []


def test_an_unprotected_port_is_refused_after_reading_the_live_set():
    ctx = FakeNftables(protected=(22, {"range": [8000, 8100]}))
    code, text, fields = decide(request("198.18.1.1", 23), nft_ctx=ctx)
    assert code == rq.NOT_PROTECTED and "not protected: tcp/23" in text
    assert (str(fields["ADDRESS"]), fields["PORTS"]) == ("198.18.1.1", "tcp/23")
    assert ctx.commands() == [["list"]]  # no add
    assert decide(request("198.18.1.1", 8050), nft_ctx=ctx)[0] == rq.OK


def test_one_unprotected_port_refuses_the_whole_request_and_adds_nothing():
    ctx = FakeNftables(protected=(22, 2222))
    code, text, fields = decide(request("198.18.1.1", 22, more=[(23, 6), (2222, 6), (24, 6)]),
                                nft_ctx=ctx)
    assert code == rq.NOT_PROTECTED and text.endswith("not protected: tcp/23 tcp/24")
    assert fields["PORTS"] == "tcp/22 tcp/23 tcp/2222 tcp/24"
    assert {verb for call in ctx.commands() for verb in call} == {"list"}  # no add


def test_an_unreadable_set_is_nft_failed_and_nothing_is_added():
    ctx = FakeNftables(fail_list="Error: No such file or directory")
    code, _, fields = decide(VALID, nft_ctx=ctx)
    assert code == rq.NFT_FAILED and fields["NFT_ERROR"] == "Error: No such file or directory"
    assert ctx.commands() == [["list"]]


def test_a_refused_add_is_nft_failed_and_still_counts_against_the_rate():
    ctx, recent = FakeNftables(fail_add="Error: Could not process rule"), {}
    code, _, fields = decide(VALID, nft_ctx=ctx, recent=recent)
    assert code == rq.NFT_FAILED and fields["NFT_ERROR"] == "Error: Could not process rule"
    assert len(recent[fields["ADDRESS"]]) == 1


METAINFO = {"metainfo": {"json_schema_version": 1}}


def test_ok_lists_the_set_then_adds_the_element_in_one_transaction():
    ctx = FakeNftables(protected=(60001,))
    code, text, fields = decide(request("fd00::7", 60001, 17), nft_ctx=ctx)
    assert code == rq.OK and "may start one connection each within 30 s" in text
    assert (str(fields["ADDRESS"]), fields["PORTS"], fields["TIMEOUT"]) == (
        "fd00::7", "udp/60001", 30)
    listing, adding = ctx.sent
    assert listing["nftables"] == [METAINFO, {"list": {"set": {
        "family": "inet", "table": "gnocchi", "name": "protected_udp"}}}]
    # One add: this kernel re-arms an element already there when told when it expires.
    assert adding["nftables"] == [METAINFO, {"add": {"element": {
        "family": "inet", "table": "gnocchi", "name": "knocked6", "elem": [{"elem": {
            "val": {"concat": ["fd00::7", "udp", 60001]}, "timeout": 30, "expires": 30}}]}}}]


def test_on_a_kernel_that_does_not_re_arm_the_add_is_add_delete_add():
    ctx = FakeNftables()
    assert decide(VALID, on=table(ctx, rearms=False))[0] == rq.OK
    add, delete, again = ctx.sent[-1]["nftables"][1:]
    assert add == again and add["add"]["element"]["elem"] == [
        {"elem": {"val": {"concat": ["198.18.1.1", "tcp", 22]}, "timeout": 30}}]
    assert delete["delete"]["element"]["elem"] == [
        {"elem": {"val": {"concat": ["198.18.1.1", "tcp", 22]}}}]


def test_a_copy_of_a_protected_set_answers_for_a_second():
    ctx = FakeNftables(protected=(22,))
    t = table(ctx)
    assert [decide(VALID, on=t, now=n)[0] for n in (1000.0, 1000.5, 1000.99)] == [rq.OK] * 3
    assert ctx.commands() == [["list"], ["add"], ["add"], ["add"]]
    assert decide(VALID, on=t, now=1001.0)[0] == rq.OK
    assert ctx.commands()[-2:] == [["list"], ["add"]]  # a second old: read again


def test_a_port_the_admin_adds_works_on_its_next_knock():
    ctx = FakeNftables(protected=(22,))
    t = table(ctx)
    assert decide(VALID, on=t, now=1000.0)[0] == rq.OK
    ctx.protected.append(2222)
    assert decide(request("198.18.1.1", 2222), on=t, now=1000.1)[0] == rq.OK
    assert ctx.commands()[-2:] == [["list"], ["add"]]  # not in the copy: read again at once


def test_a_port_the_admin_removes_is_refused_within_a_second():
    # Until then its elements are inert: the gate consults the knocked sets
    # only for packets to protected ports.
    ctx = FakeNftables(protected=(22,))
    t = table(ctx)
    assert decide(VALID, on=t, now=1000.0)[0] == rq.OK
    ctx.protected.remove(22)
    assert decide(VALID, on=t, now=1000.5)[0] == rq.OK
    code, text, _ = decide(VALID, on=t, now=1001.0)
    assert code == rq.NOT_PROTECTED and "not protected: tcp/22" in text


def test_every_port_of_a_request_is_added_in_the_one_transaction():
    ctx = FakeNftables(protected=(22, 60001))  # the stand-in's sets: both protocols alike
    code, text, fields = decide(request("198.18.1.1", 22, more=[(60001, 17), (60001, 6)]),
                                nft_ctx=ctx)
    assert code == rq.OK and text.startswith("198.18.1.1 tcp/22 udp/60001 tcp/60001 may start")
    *listings, adding = ctx.sent
    assert sorted(c["nftables"][1]["list"]["set"]["name"] for c in listings) == [
        "protected_tcp", "protected_udp"]  # each set read once
    added = adding["nftables"][1]["add"]["element"]["elem"]
    assert [e["elem"]["val"]["concat"][1:] for e in added] == [
        ["tcp", 22], ["udp", 60001], ["tcp", 60001]]


def test_at_most_so_many_adds_a_minute_per_address_by_the_injected_clock():
    recent, n = {}, main.MAX_PER_MINUTE
    assert [decide(VALID, recent=recent, now=1000.0)[0] for _ in range(n - 1)] == [rq.OK] * (n - 1)
    two = request("198.18.1.1", 22, more=[(2222, 6)])  # a request counts once, whatever it opens
    ctx = FakeNftables(protected=(22, 2222))
    assert decide(two, nft_ctx=ctx, recent=recent, now=1000.0)[0] == rq.OK
    code, text, _ = decide(VALID, recent=recent, now=1059.0)
    assert code == rq.RATE_LIMITED and f"{n} requests for it in a minute" in text
    assert decide(request("198.18.1.2", 22), recent=recent, now=1059.0)[0] == rq.OK  # another
    assert decide(request("198.18.1.1", 23), recent=recent, now=1059.0)[0] == rq.NOT_PROTECTED
    assert decide(VALID, recent=recent, now=1060.5)[0] == rq.OK  # the first are a minute old
    assert len(recent[VALID_ADDRESS]) == 1
    decide(request("198.18.1.3", 22), recent=recent, now=1200.0)
    assert list(recent) == [ipaddress.ip_address("198.18.1.3")]  # idle addresses forgotten


def test_an_address_is_forgotten_a_minute_after_its_last_request_not_its_first():
    recent, a, b = {}, request("198.18.1.1", 22), request("198.18.1.2", 22)
    for message, now in ((a, 1000.0), (b, 1030.0), (a, 1050.0)):
        assert decide(message, recent=recent, now=now)[0] == rq.OK
    decide(request("198.18.1.3", 22), recent=recent, now=1091.0)  # b's last is 61 s old
    assert [str(address) for address in recent] == ["198.18.1.1", "198.18.1.3"]


def test_a_request_past_its_deadline_is_not_carried_out():
    # The verifier stops waiting at its deadline: the helper must not open
    # later what the verifier has logged as unanswered.
    ctx = FakeNftables()
    late = request("198.18.1.1", 22, deadline_ms=999_999)      # now is 1000.0 s
    code, text, _ = decide(late, nft_ctx=ctx, now=1000.0)
    assert code == rq.EXPIRED and "past its deadline" in text
    assert ctx.commands() == [["list"]]                         # listed, never added
    in_time = request("198.18.1.1", 22, deadline_ms=1_000_001)
    recent = {}
    assert decide(late, recent=recent, now=1000.0)[0] == rq.EXPIRED
    assert decide(in_time, recent=recent, now=1000.0)[0] == rq.OK  # the refusal left no trace

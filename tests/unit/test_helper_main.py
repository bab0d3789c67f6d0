"""helper/__main__.py's decide(), every branch, without root: peer, length,
version, count, name, protocol, duplicate, address, not protected, too many
openings pending, past the deadline, nft failure, and OK; and what nft.Table
keeps between requests: its copies of the protected sets and of the openings
pending, read from the kernel at the first request and again (at most once a
second) only when they lack a port or a share would refuse a knock.

The connection is a real AF_UNIX SOCK_SEQPACKET socketpair, so SO_PEERCRED
is the kernel's answer (this process); the clock is a number the test moves.
Only libnftables is a stand-in, FakeNftables (tests/support/helper.py), here
and nowhere else: tests/integration/test_helper_requests.py drives the real
helper, library and kernel, as root, in a namespace.
"""

import os
import socket

import pytest

import nft
import request as rq  # helper/request.py, by the name the helper imports it
from support import FakeNftables, helper_main, request

main = helper_main()
ME = os.getuid()
VALID = request("198.18.1.1", 22)


def table(ctx=None):
    return nft.Table(ctx or FakeNftables())


def decide(message, peer_uid=ME, nft_ctx=None, now=1000.0, silent=False, on=None):
    """decide() on a fresh connection that sent message (or nothing, if
    silent), with the table on (else a new one on nft_ctx)."""
    ours, theirs = socket.socketpair(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    with ours, theirs:
        ours.settimeout(0.2)  # the helper's 2 s, shortened
        if not silent:
            theirs.send(message)
        t = on or table(nft_ctx)
        t.clock = lambda: now
        return main.decide(ours, peer_uid, t, 30)


@pytest.mark.parametrize(
    "name, message, status",
    [
        ("empty", b"", "BAD_LENGTH"),
        ("short", VALID[:-1], "BAD_LENGTH"),
        ("long", VALID + b"\0", "BAD_LENGTH"),
        ("version 1", request("198.18.1.1", 22, version=1), "BAD_VERSION"),
        ("version 3", request("198.18.1.1", 22, version=3), "BAD_VERSION"),
        ("no name", request("198.18.1.1", 22, client=""), "BAD_NAME"),
        ("name of 65", request("198.18.1.1", 22, client="a" * 65), "BAD_NAME"),
        ("nft text as a name", request("198.18.1.1", 22, client='a" }; flush ruleset'), "BAD_NAME"),
        ("says 6, carries 5", request("198.18.1.1", 22, client="alice", size=6), "BAD_LENGTH"),
        ("proto icmp", request("198.18.1.1", 22, 1), "BAD_PROTO"),
        ("family 5", request("198.18.1.1", 22, family=5), "BAD_ADDRESS"),
        ("loopback", request("127.0.0.1", 22), "BAD_ADDRESS"),
        ("count 0", request("198.18.1.1", 22, count=0), "BAD_COUNT"),
        ("count 9", request("198.18.1.1", 1, more=[(p, 6) for p in range(2, 10)]), "BAD_COUNT"),
        ("says 2, carries 1", request("198.18.1.1", 22, count=2), "BAD_LENGTH"),
        ("22/tcp twice", request("198.18.1.1", 22, more=[(60001, 17), (22, 6)]), "BAD_DUPLICATE"),
        ("one bad proto of two", request("198.18.1.1", 22, more=[(22, 1)]), "BAD_PROTO"),
    ],
)
def test_a_malformed_request_is_refused_with_its_bytes_and_nft_is_not_asked(name, message, status):
    ctx = FakeNftables()
    code, _, fields = decide(message, nft_ctx=ctx)
    assert rq.STATUSES[code] == status
    # what was read, at most one byte past the longest request: the log is bounded
    assert fields["REQUEST_HEX"] == message[: rq.MAX_SIZE + 1].hex() and fields["PEER_UID"] == ME
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
    # gnocchi's protected sets hold single ports (no interval flag): a range, which
    # only a hand-made table could hold, protects nothing here (refused, not a crash).
    ctx = FakeNftables(protected=(22, 8050, {"range": [8000, 8100]}))
    code, text, fields = decide(request("198.18.1.1", 23), nft_ctx=ctx)
    assert code == rq.NOT_PROTECTED and "not protected: tcp/23" in text
    assert (str(fields["ADDRESS"]), fields["PORTS"]) == ("198.18.1.1", "tcp/23")
    assert {verb for call in ctx.commands() for verb in call} == {"list"}  # no add
    assert decide(request("198.18.1.1", 8050), nft_ctx=ctx)[0] == rq.OK
    assert decide(request("198.18.1.1", 8051), nft_ctx=ctx)[0] == rq.NOT_PROTECTED
    assert decide(request("198.18.1.1", 0), nft_ctx=ctx)[0] == rq.NOT_PROTECTED  # never a port


def test_one_unprotected_port_refuses_the_whole_request_and_adds_nothing():
    ctx = FakeNftables(protected=(22, 2222))
    code, text, fields = decide(
        request("198.18.1.1", 22, more=[(23, 6), (2222, 6), (24, 6)]), nft_ctx=ctx
    )
    assert code == rq.NOT_PROTECTED and text.endswith("not protected: tcp/23 tcp/24")
    assert fields["PORTS"] == "tcp/22 tcp/23 tcp/2222 tcp/24"
    assert {verb for call in ctx.commands() for verb in call} == {"list"}  # no add


def test_an_unreadable_set_is_nft_failed_and_nothing_is_added():
    ctx = FakeNftables(fail_list="Error: No such file or directory")
    code, _, fields = decide(VALID, nft_ctx=ctx)
    assert code == rq.NFT_FAILED and fields["NFT_ERROR"] == "Error: No such file or directory"
    assert ctx.commands() == [["list"]] * 4


def test_a_refused_add_is_nft_failed_and_leaves_nothing_pending():
    ctx = FakeNftables(fail_add="Error: Could not process rule")
    t = table(ctx)
    code, _, fields = decide(VALID, on=t)
    assert code == rq.NFT_FAILED and fields["NFT_ERROR"] == "Error: Could not process rule"
    assert t.pending == {}


METAINFO = {"metainfo": {"json_schema_version": 1}}


def test_ok_reads_the_sets_then_adds_the_element_and_a_knock_again_re_arms_it():
    ctx = FakeNftables(protected=(60001,))
    t = table(ctx)
    code, text, fields = decide(request("fd00::7", 60001, 17, client="bob"), on=t)
    assert code == rq.OK and "may start one connection each within 30 s" in text
    assert (str(fields["ADDRESS"]), fields["PORTS"], fields["CLIENT"], fields["TIMEOUT"]) == (
        "fd00::7",
        "udp/60001",
        "bob",
        30,
    )
    *listings, first = ctx.sent
    assert [c["nftables"] for c in listings] == [
        [METAINFO, {"list": {"set": {"family": "inet", "table": "gnocchi", "name": name}}}]
        for name in ("protected_tcp", "protected_udp", "knocked4", "knocked6")
    ]
    # A new element: the add alone. Then add, delete, add, on every kernel: a knock
    # again gets the full timeout back (before 6.12 an add keeps the old expiry) and
    # its client's name.
    assert decide(request("fd00::7", 60001, 17, client="bob"), on=t)[0] == rq.OK
    assert first["nftables"][1:] == ctx.sent[-1]["nftables"][1:2]
    add, delete, again = ctx.sent[-1]["nftables"][1:]
    val = {"val": {"concat": ["fd00::7", "udp", 60001]}}
    assert (
        add
        == again
        == {
            "add": {
                "element": {
                    "family": "inet",
                    "table": "gnocchi",
                    "name": "knocked6",
                    "elem": [{"elem": {**val, "timeout": 30, "comment": "bob"}}],
                }
            }
        }
    )
    assert delete == {
        "delete": {
            "element": {
                "family": "inet",
                "table": "gnocchi",
                "name": "knocked6",
                "elem": [{"elem": val}],
            }
        }
    }


def test_the_sets_are_read_at_the_first_request_and_then_not_while_the_copies_do():
    ctx = FakeNftables(protected=(22,))
    t = table(ctx)
    assert [decide(VALID, on=t, now=n)[0] for n in (1000.0, 1000.5, 1003.0, 1100.0)] == [rq.OK] * 4
    assert ctx.listed() == ["protected_tcp", "protected_udp", "knocked4", "knocked6"]
    assert ctx.commands() == [["list"]] * 4 + [["add"]] + [["add", "delete", "add"]] * 3


def test_an_opening_the_knocked_set_lists_already_is_re_armed_by_the_first_knock():
    # After a restart the copy is empty; the listing shows the element is there
    # (an add alone would keep its expiry and name before Linux 6.12).
    ctx = FakeNftables(protected=(22,), pending=[pending("198.18.1.1", 22, "bob")])
    assert decide(VALID, nft_ctx=ctx)[0] == rq.OK
    assert ctx.commands()[-1] == ["add", "delete", "add"]


def test_knocks_apart_cost_no_read_whatever_the_openings_pending():
    # The knocked sets' listing grows with every opening pending (on main it was
    # read once a second: about 11 ms with 300 openings): a lone knock reads nothing.
    ctx = FakeNftables(
        protected=(22,), pending=[pending(f"198.18.9.{i}", 22, f"c{i}") for i in range(200)]
    )
    t = table(ctx)
    for second in range(10):
        assert (
            decide(request(f"198.18.1.{second + 1}", 22), on=t, now=1000.0 + 2 * second)[0] == rq.OK
        )
    assert ctx.listed() == ["protected_tcp", "protected_udp", "knocked4", "knocked6"]


def test_a_port_the_admin_adds_works_on_its_next_knock_a_second_after_the_last_read():
    ctx = FakeNftables(protected=(22,))
    t = table(ctx)
    assert decide(VALID, on=t, now=1000.0)[0] == rq.OK
    ctx.protected.append(2222)
    # Within a second of the last read: not read again (a verifier asking for
    # ports never protected cannot make the helper read on every request).
    assert decide(request("198.18.1.1", 2222), on=t, now=1000.5)[0] == rq.NOT_PROTECTED
    assert decide(request("198.18.1.1", 2222), on=t, now=1001.0)[0] == rq.OK
    assert ctx.commands()[-5:] == [["list"]] * 4 + [["add"]]  # read, then add


def test_a_port_the_admin_removes_is_refused_once_the_sets_are_read_again():
    # Until then its elements are inert: the gate consults the knocked sets only
    # for packets to protected ports, and they expire within the open time.
    ctx = FakeNftables(protected=(22,))
    t = table(ctx)
    assert decide(VALID, on=t, now=1000.0)[0] == rq.OK
    ctx.protected[:] = [2222]
    assert decide(VALID, on=t, now=1005.0)[0] == rq.OK  # the copy still has it
    assert decide(request("198.18.1.1", 2222), on=t, now=1005.0)[0] == rq.OK  # read: lacked
    code, text, _ = decide(VALID, on=t, now=1005.1)
    assert code == rq.NOT_PROTECTED and "not protected: tcp/22" in text


def test_every_port_of_a_request_is_added_in_the_one_transaction():
    ctx = FakeNftables(protected=(22, 60001))  # the stand-in's sets: both protocols alike
    code, text, fields = decide(
        request("198.18.1.1", 22, more=[(60001, 17), (60001, 6)]), nft_ctx=ctx
    )
    assert code == rq.OK and text.startswith(
        "198.18.1.1 tcp/22 udp/60001 tcp/60001 for client alice may start"
    )
    *listings, adding = ctx.sent
    assert ctx.listed() == ["protected_tcp", "protected_udp", "knocked4", "knocked6"]  # once each
    added = adding["nftables"][1]["add"]["element"]["elem"]
    assert [e["elem"]["val"]["concat"][1:] for e in added] == [
        ["tcp", 22],
        ["udp", 60001],
        ["tcp", 60001],
    ]


def pending(address: str, port: int, client: str, proto="tcp") -> dict:
    """A knocked element as nft -j lists it."""
    return {
        "elem": {
            "val": {"concat": [address, proto, port]},
            "timeout": 30,
            "expires": 20,
            "comment": client,
        }
    }


PORTS = tuple(range(1000, 2001))  # protected, in the tests of the shares


def eight(first: int) -> list:
    return [(port, 6) for port in range(first + 1, first + 8)]


def test_a_client_holds_at_most_its_share_of_openings_whatever_the_open_time():
    ctx = FakeNftables(protected=PORTS)
    t = table(ctx)
    # Alice (a stolen key, say) knocks for eight ports at a time from addresses of her own.
    knocks = [
        request(f"198.18.2.{i}", 1000 + 8 * i, more=eight(1000 + 8 * i))
        for i in range(nft.SHARE // 8)
    ]
    assert [decide(k, on=t, now=1000.0)[0] for k in knocks] == [rq.OK] * (nft.SHARE // 8)
    code, text, fields = decide(request("198.18.2.99", 1500), on=t, now=1000.5)
    assert code == rq.TOO_MANY and f"client alice has {nft.SHARE} openings pending" in text
    assert fields["CLIENT"] == "alice"
    # A knock again for an opening she holds takes nothing more: it re-arms it.
    assert decide(request("198.18.2.0", 1000), on=t, now=1000.5)[0] == rq.OK
    # Bob, from another address, is not touched.
    assert decide(request("198.18.3.1", 1000, client="bob"), on=t, now=1000.5)[0] == rq.OK


def test_a_client_cannot_pass_its_share_by_taking_over_another_clients_openings():
    # Two stolen keys: alice's openings, knocked again by bob (who holds his share),
    # would move to bob one by one; each is new to bob, so he is refused.
    t = table(FakeNftables(protected=PORTS))
    for i in range(nft.SHARE // 8):
        first = 1000 + 8 * i
        assert decide(request(f"198.18.5.{i}", first, more=eight(first)), on=t)[0] == rq.OK
        own = request(f"198.18.6.{i}", first, more=eight(first), client="bob")
        assert decide(own, on=t)[0] == rq.OK
    taken = request("198.18.5.0", 1000, more=eight(1000), client="bob")
    code, text, _ = decide(taken, on=t)
    assert code == rq.TOO_MANY and f"client bob has {nft.SHARE} openings pending" in text


def test_a_source_holds_at_most_its_share_of_openings_whoever_knocks():
    ctx = FakeNftables(protected=PORTS)
    t = table(ctx)
    # Many clients (keys) from one IPv6 /64: the /64 is one source.
    for i in range(nft.SHARE):
        message = request(f"2001:db8:0:1::{i + 1:x}", 1000, client=f"c{i}")
        assert decide(message, on=t, now=1000.0)[0] == rq.OK
    code, text, _ = decide(request("2001:db8:0:1::ffff", 1000, client="bob"), on=t, now=1000.0)
    assert code == rq.TOO_MANY and "source 2001:db8:0:1::/64 has" in text
    # Another /64 of the same /48 is another source.
    assert decide(request("2001:db8:0:2::1", 1000, client="bob"), on=t, now=1000.0)[0] == rq.OK
    # An IPv4 address is a source of its own (a NAT's clients share its share).
    for i in range(nft.SHARE):
        assert decide(request("198.18.4.1", 1000 + i, client=f"c{i}"), on=t, now=1000.0)[0] == rq.OK
    assert decide(request("198.18.4.1", 2000, client="bob"), on=t, now=1000.0)[0] == rq.TOO_MANY
    assert decide(request("198.18.4.2", 2000, client="bob"), on=t, now=1000.0)[0] == rq.OK


def test_openings_used_since_are_not_counted_once_the_sets_are_read_again():
    ctx = FakeNftables(protected=PORTS)
    t = table(ctx)
    knocks = [
        request(f"198.18.2.{i}", 1000 + 8 * i, more=eight(1000 + 8 * i))
        for i in range(nft.SHARE // 8)
    ]
    assert [decide(k, on=t, now=1000.0)[0] for k in knocks] == [rq.OK] * len(knocks)
    assert decide(request("198.18.2.99", 1500), on=t, now=1000.9)[0] == rq.TOO_MANY
    # The kernel deleted them as they were used (or they expired): a second
    # after the last read, the helper asks it again.
    assert decide(request("198.18.2.99", 1500), on=t, now=1001.0)[0] == rq.OK


def test_openings_the_kernel_holds_count_after_a_restart_of_the_helper():
    held = [pending(f"198.18.2.{i}", 1000 + i, "alice") for i in range(nft.SHARE)]
    held.append({"elem": {"val": {"concat": ["fd00::9", "udp", 1000]}, "comment": "alice"}})
    ctx = FakeNftables(protected=PORTS, pending=held)
    code, text, _ = decide(request("198.18.2.99", 1500), nft_ctx=ctx)  # a fresh Table
    assert code == rq.TOO_MANY and "client alice" in text
    assert decide(request("198.18.2.99", 1500, client="bob"), nft_ctx=ctx)[0] == rq.OK
    # An element listed without a client's name (one the admin added) counts for its source.
    ctx.pending = [{"concat": ["198.18.5.1", "tcp", 1000 + i]} for i in range(nft.SHARE)]
    assert decide(request("198.18.5.1", 1500, client="bob"), nft_ctx=ctx)[0] == rq.TOO_MANY


def test_a_request_past_its_deadline_is_not_carried_out():
    # The verifier stops waiting at its deadline: the helper must not open
    # later what the verifier has logged as unanswered.
    ctx = FakeNftables()
    late = request("198.18.1.1", 22, deadline_ms=999_999)  # now is 1000.0 s
    code, text, _ = decide(late, nft_ctx=ctx, now=1000.0)
    assert code == rq.EXPIRED and "past its deadline" in text
    assert ctx.commands() == [["list"]] * 4  # read, never added
    in_time = request("198.18.1.1", 22, deadline_ms=1_000_001)
    t = table()
    assert decide(late, on=t, now=1000.0)[0] == rq.EXPIRED
    assert t.pending == {}  # the refusal left no trace
    assert decide(in_time, on=t, now=1000.0)[0] == rq.OK


def test_under_systemd_each_decision_is_one_journal_entry_with_its_fields(tmp_path, monkeypatch):
    # The journal's native protocol, as journald reads it (name, newline, 64-bit
    # little-endian length, bytes, newline): libnftables' error text keeps its newlines.
    st = os.fstat(2)
    monkeypatch.setenv("JOURNAL_STREAM", f"{st.st_dev}:{st.st_ino}")
    monkeypatch.setattr(main, "JOURNAL", str(tmp_path / "journal"))
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journald:
        journald.bind(main.JOURNAL)
        main.log(
            rq.NFT_FAILED,
            "198.18.1.1 tcp/22 for client alice: libnftables refused the add",
            {"PEER_UID": 0, "NFT_ERROR": "Error: one\nError: two"},
        )
        data, fields = journald.recv(4096), {}
    while data:
        name, _, data = data.partition(b"\n")
        length = int.from_bytes(data[:8], "little")
        fields[name.decode()], data = data[8 : 8 + length].decode(), data[8 + length + 1 :]
    assert fields == {
        "MESSAGE": "NFT_FAILED: 198.18.1.1 tcp/22 for client alice: libnftables refused the add",
        "MESSAGE_ID": "5b0c5e6a0d3e4c58a4f6f2d1b7c9e013",
        "PRIORITY": "3",
        "SYSLOG_IDENTIFIER": "gnocchi-helper",
        "OBJECT_SYSTEMD_UNIT": "gnocchi.service",
        "GNOCCHI_HELPER_PEER_UID": "0",
        "GNOCCHI_HELPER_NFT_ERROR": "Error: one\nError: two",
        "GNOCCHI_HELPER_STATUS": "NFT_FAILED",
    }

"""The real root helper against malformed, hostile and out-of-policy requests.

Each refused request gets its status byte and leaves `nft -j list ruleset`
byte for byte as it was; a good one adds exactly its elements, all in one
transaction, with the helper's own timeout. The helper serves uid `nobody` here (--peer-user
nobody, standing in for gnocchi); `daemon` plays a stranger.
"""

import ipaddress
import json
import re
import socket
import subprocess
import time

import pytest

import nftables

import nft  # helper/nft.py, by the name the helper imports it
import request as rq
from support import (
    PYTHON,
    REPO,
    STATUS,
    TABLE_FILE,
    Helper,
    Net,
    elements,
    inside,
    load_table,
    request,
    ruleset,
)

S = STATUS
VALID = request("198.18.1.1", 22)

# (name, message, expected status); the helper must refuse every one.
HOSTILE = [
    ("empty", b"", "BAD_LENGTH"),
    ("one byte", b"\x01", "BAD_LENGTH"),
    ("one byte short", VALID[:-1], "BAD_LENGTH"),
    ("one byte extra", VALID + b"\x00", "BAD_LENGTH"),
    ("two requests in one", VALID * 2, "BAD_LENGTH"),
    ("oversized", VALID + bytes(4000), "BAD_LENGTH"),
    ("version 0", request("198.18.1.1", 22, version=0), "BAD_VERSION"),
    ("version 1", request("198.18.1.1", 22, version=1), "BAD_VERSION"),
    ("version 1, 22 bytes", request("198.18.1.1", 22, version=1)[:22], "BAD_LENGTH"),
    ("version 2", request("198.18.1.1", 22, version=2), "BAD_VERSION"),
    (
        "a version 2 request",
        bytes.fromhex("020406000016c6120101" + "00" * 12 + "ff" * 8),
        "BAD_VERSION",
    ),
    ("version 3", request("198.18.1.1", 22, version=3), "BAD_VERSION"),
    ("version 5", request("198.18.1.1", 22, version=5), "BAD_VERSION"),
    ("version 255", request("198.18.1.1", 22, version=255), "BAD_VERSION"),
    ("no name", request("198.18.1.1", 22, client=""), "BAD_NAME"),
    ("a name of 65", request("198.18.1.1", 22, client="a" * 65), "BAD_NAME"),
    ("nft text as a name", request("198.18.1.1", 22, client='a" }; flush ruleset'), "BAD_NAME"),
    ("a name not ASCII", request("198.18.1.1", 22, client=b"\xff\xfe"), "BAD_NAME"),
    ("a name not text", request("198.18.1.1", 22, client=b"al\x00ice"), "BAD_NAME"),
    ("says a name byte more", request("198.18.1.1", 22, size=6), "BAD_LENGTH"),
    ("nft text", b"1.2.3.4 . 22 }; flush ruleset".ljust(30, b";"), "BAD_VERSION"),
    ("nft text, padded", b"flush ruleset".ljust(30, b" "), "BAD_VERSION"),
    ("past its deadline", request("198.18.1.1", 22, deadline_ms=1), "EXPIRED"),
    ("nft text in the v4 address", VALID[:4] + b"1.2.3.4;flush ru" + VALID[20:], "BAD_ADDRESS"),
    ("proto 0", request("198.18.1.1", 22, 0), "BAD_PROTO"),
    ("proto icmp", request("198.18.1.1", 22, 1), "BAD_PROTO"),
    ("proto sctp", request("198.18.1.1", 22, 132), "BAD_PROTO"),
    ("proto 255", request("198.18.1.1", 22, 255), "BAD_PROTO"),
    ("family 0", request("198.18.1.1", 22, family=0), "BAD_ADDRESS"),
    ("family AF_INET", request("198.18.1.1", 22, family=2), "BAD_ADDRESS"),
    ("family AF_INET6", request("fd00::1", 22, family=10), "BAD_ADDRESS"),
    ("family 5", request("198.18.1.1", 22, family=5), "BAD_ADDRESS"),
    ("v6 bytes as v4", request("fd00::1", 22, family=4), "BAD_ADDRESS"),
    ("v4 padding set", VALID[:19] + b"\x01" + VALID[20:], "BAD_ADDRESS"),
    ("0.0.0.0", request("0.0.0.0", 22), "BAD_ADDRESS"),
    ("0.1.2.3", request("0.1.2.3", 22), "BAD_ADDRESS"),
    ("loopback", request("127.0.0.1", 22), "BAD_ADDRESS"),
    ("loopback 127.9", request("127.9.9.9", 22), "BAD_ADDRESS"),
    ("multicast", request("224.0.0.1", 22), "BAD_ADDRESS"),
    ("broadcast", request("255.255.255.255", 22), "BAD_ADDRESS"),
    ("reserved 240/4", request("240.0.0.1", 22), "BAD_ADDRESS"),
    ("link-local", request("169.254.1.1", 22), "BAD_ADDRESS"),
    ("::", request("::", 22), "BAD_ADDRESS"),
    ("::1", request("::1", 22), "BAD_ADDRESS"),
    ("v6 multicast", request("ff02::1", 22), "BAD_ADDRESS"),
    ("v6 link-local", request("fe80::1", 22), "BAD_ADDRESS"),
    ("v6 site-local", request("fec0::1", 22), "BAD_ADDRESS"),
    ("v4-mapped", request("::ffff:198.18.1.1", 22), "BAD_ADDRESS"),
    ("v4-compatible", request("::198.18.1.1", 22), "BAD_ADDRESS"),
    ("port 0", request("198.18.1.1", 0), "NOT_PROTECTED"),
    ("unprotected tcp port", request("198.18.1.1", 23), "NOT_PROTECTED"),
    ("unprotected port 65535", request("198.18.1.1", 65535), "NOT_PROTECTED"),
    ("tcp-protected port over udp", request("198.18.1.1", 22, 17), "NOT_PROTECTED"),
    ("udp-protected port over tcp", request("198.18.1.1", 60001, 6), "NOT_PROTECTED"),
    # Requests of several ports: each entry checked, and one bad entry refuses them all.
    ("count 0", request("198.18.1.1", 22, count=0), "BAD_COUNT"),
    ("count 0, header only", request("198.18.1.1", 22, count=0)[:28], "BAD_COUNT"),
    ("count 9", request("198.18.1.1", 22, more=[(p, 6) for p in range(2, 10)]), "BAD_COUNT"),
    ("count 255", request("198.18.1.1", 22, count=255), "BAD_COUNT"),
    ("says 2, carries 1", request("198.18.1.1", 22, count=2), "BAD_LENGTH"),
    ("says 1, carries 2", request("198.18.1.1", 22, more=[(60001, 17)], count=1), "BAD_LENGTH"),
    ("half an entry more", request("198.18.1.1", 22, more=[(60001, 17)])[:-1], "BAD_LENGTH"),
    ("22/tcp twice", request("198.18.1.1", 22, more=[(22, 6)]), "BAD_DUPLICATE"),
    (
        "22/tcp twice of three",
        request("198.18.1.1", 22, more=[(60001, 17), (22, 6)]),
        "BAD_DUPLICATE",
    ),
    ("one bad proto", request("198.18.1.1", 22, more=[(60001, 132)]), "BAD_PROTO"),
    ("one port 0", request("198.18.1.1", 22, more=[(0, 17)]), "NOT_PROTECTED"),
    (
        "one unprotected of three",
        request("198.18.1.1", 22, more=[(23, 6), (60001, 17)]),
        "NOT_PROTECTED",
    ),
    (
        "a protected port over the wrong protocol",
        request("198.18.1.1", 22, more=[(22, 17)]),
        "NOT_PROTECTED",
    ),
]


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A server namespace with the table (tcp 22, udp 60001) and the helper.
    No test here may leave an element behind: the others compare rulesets."""
    with Net("hr") as net:
        load_table(net.server, tmp_path_factory.mktemp("helper"), udp_ports=(60001,))
        helper = Helper(net.server)
        try:
            yield net.server, helper
        finally:
            helper.close()


@pytest.mark.parametrize("name,message,expected", HOSTILE, ids=[h[0] for h in HOSTILE])
def test_refused_and_ruleset_unchanged(server, name, message, expected):
    host, helper = server
    before = ruleset(host)
    assert helper.send(message) == [S[expected]]
    assert ruleset(host) == before


def test_stranger_is_refused_even_with_a_valid_request(server):
    host, helper = server
    before = ruleset(host)
    assert helper.send(VALID, request("fd00::7", 60001, 17), user="daemon") == [S["BAD_PEER"]] * 2
    assert ruleset(host) == before
    assert "BAD_PEER: uid 1 is not the verifier's" in helper.log_lines()[-1]


def test_valid_requests_add_exactly_their_element(server):
    host, helper = server
    before = ruleset(host)
    assert helper.send(VALID, request("fd00::7", 60001, 17)) == [S["OK"], S["OK"]]
    assert elements(host, "knocked4") == [
        {
            "val": {"concat": ["198.18.1.1", "tcp", 22]},
            "timeout": 30,
            "expires": pytest.approx(30, abs=2),
            "comment": "alice",
        }
    ]
    assert elements(host, "knocked6") == [
        {
            "val": {"concat": ["fd00::7", "udp", 60001]},
            "timeout": 30,
            "expires": pytest.approx(30, abs=2),
            "comment": "alice",
        }
    ]
    for name in ("knocked4", "knocked6"):
        host.nft("flush", "set", "inet", "gnocchi", name)
    assert ruleset(host) == before  # nothing else changed


def test_a_request_of_two_ports_adds_both_and_logs_once(server):
    host, helper = server
    before, start = ruleset(host), len(helper.log_lines())
    assert helper.send(request("198.18.1.1", 22, more=[(60001, 17)])) == [S["OK"]]
    assert sorted(e["val"]["concat"][1:] for e in elements(host, "knocked4")) == [
        ["tcp", 22],
        ["udp", 60001],
    ]
    [line] = helper.log_lines()[start:]
    assert "OK: 198.18.1.1 tcp/22 udp/60001 for client alice may start one connection each" in line
    assert "GNOCCHI_HELPER_PORTS=tcp/22 udp/60001" in line
    host.nft("flush", "set", "inet", "gnocchi", "knocked4")
    assert ruleset(host) == before


def test_nft_text_as_ipv6_bytes_is_only_an_address(server):
    # 16 bytes of nft syntax are a well-formed global IPv6 address; the helper
    # adds that address as data and nothing in the ruleset is parsed from it.
    host, helper = server
    before = ruleset(host)
    text = b"; flush ruleset "
    assert helper.send(request("fd00::1", 22)[:4] + text + request("fd00::1", 22)[20:]) == [S["OK"]]
    [elem] = elements(host, "knocked6")
    assert elem["val"]["concat"] == [str(ipaddress.IPv6Address(text)), "tcp", 22]
    host.nft("flush", "set", "inet", "gnocchi", "knocked6")
    assert ruleset(host) == before


def test_every_decision_is_logged_once_and_refusals_carry_the_bytes(server):
    host, helper = server
    start = len(helper.log_lines())
    helper.send(request("127.0.0.1", 22), b"x" * 200, request("198.18.1.1", 23))
    lines = helper.log_lines()[start:]
    assert len(lines) == 3
    assert "GNOCCHI_HELPER_STATUS=BAD_ADDRESS" in lines[0]
    assert "GNOCCHI_HELPER_REQUEST_HEX=" + request("127.0.0.1", 22).hex() in lines[0]
    assert "GNOCCHI_HELPER_REQUEST_HEX=" + "78" * 117 + " " in lines[1]  # bounded: 117 of 200
    assert "GNOCCHI_HELPER_PORTS=tcp/23" in lines[2] and "NOT_PROTECTED" in lines[2]


def test_silent_or_vanishing_peers_do_not_stop_the_helper(server):
    host, helper = server
    s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # as root: not the peer user
    s.connect(str(helper.path))
    s.close()  # gone without a word
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    silent.connect(str(helper.path))
    silent.settimeout(5)
    t0 = time.monotonic()
    assert silent.recv(2) == bytes([S["BAD_PEER"]])  # answered after its recv timeout
    assert time.monotonic() - t0 < 4
    silent.close()
    assert helper.send(request("198.18.1.1", 23)) == [S["NOT_PROTECTED"]]  # still serving


def test_without_the_table_nothing_is_created(tmp_path):
    with Net("nt") as net:
        helper = Helper(net.server)
        try:
            assert helper.send(VALID) == [S["NFT_FAILED"]]
            assert "GNOCCHI_HELPER_NFT_ERROR=" in helper.log_lines()[-1]
        finally:
            helper.close()
        assert net.server.nft("list", "ruleset").stdout == ""


def test_a_client_and_a_source_hold_at_most_their_share_of_the_knocked_set(tmp_path):
    # Whatever the open time: one client (a stolen key, from many addresses),
    # or one source (many keys from one /64), gets SHARE openings pending and no
    # more; the others are not touched, and used openings make room again.
    share = nft.SHARE
    ports = tuple(range(1000, 1000 + share + 1))
    with Net("sh") as net:
        load_table(net.server, tmp_path, tcp_ports=ports)
        helper = Helper(net.server, open_seconds=3600)
        try:
            stolen = [request(f"198.18.2.{i + 1}", ports[i]) for i in range(share + 1)]
            assert helper.send(*stolen) == [S["OK"]] * share + [S["TOO_MANY"]]
            assert (
                "TOO_MANY: 198.18.2.33 tcp/1032 for client alice: client alice has 32 "
                "openings pending" in helper.log_lines()[-1]
            )
            assert helper.send(request("198.18.3.1", 1000, client="bob")) == [S["OK"]]
            one_64 = [
                request(f"fd00:5::{i + 1:x}", 1000, client=f"key{i}") for i in range(share + 1)
            ]
            assert helper.send(*one_64) == [S["OK"]] * share + [S["TOO_MANY"]]
            assert "source fd00:5::/64 has 32" in helper.log_lines()[-1]
            assert helper.send(request("fd00:5:0:1::1", 1000, client="carol")) == [S["OK"]]
            # alice's openings used (the gate deletes them), a second later she knocks again.
            net.server.nft("flush", "set", "inet", "gnocchi", "knocked4")
            time.sleep(nft.FRESH + 0.1)
            assert helper.send(stolen[-1]) == [S["OK"]]
        finally:
            helper.close()


def test_a_request_is_added_all_or_none_by_the_kernel(tmp_path):
    # knocked4 with room for three: two ports for one address fit, two more
    # for another do not, and the kernel refuses that whole transaction. Added
    # one by one, the first of them would have stayed.
    text, sized = re.subn(r"(set knocked4 \{[^}]*?size )\d+", r"\g<1>3", TABLE_FILE.read_text())
    assert sized == 1
    text = text.replace("# elements = { 51820 }", "elements = { 60001 }")
    (tmp_path / "gnocchi.nft").write_text(text)
    with Net("an") as net:
        net.server.nft("-f", str(tmp_path / "gnocchi.nft"))
        helper = Helper(net.server)
        try:
            two = [(60001, 17)]
            assert helper.send(request("198.18.3.1", 22, more=two)) == [S["OK"]]
            assert helper.send(request("198.18.3.2", 22, more=two)) == [S["NFT_FAILED"]]
            assert "GNOCCHI_HELPER_NFT_ERROR=" in helper.log_lines()[-1]
            assert sorted(e["val"]["concat"][0] for e in elements(net.server, "knocked4")) == [
                "198.18.3.1",
                "198.18.3.1",
            ]
            assert helper.send(request("198.18.3.2", 22)) == [S["OK"]]  # room for one
            assert len(elements(net.server, "knocked4")) == 3
        finally:
            helper.close()


def test_helper_refuses_bad_options():
    for args, text in (
        (["--open-seconds", "0"], "1..3600"),
        (["--open-seconds", "3601"], "1..3600"),
        (["--peer-user", "no-such-user-x"], "no such user"),
        (["--peer-user", "nobody"], "expected 1 AF_UNIX SOCK_SEQPACKET socket"),
    ):
        r = subprocess.run(
            [PYTHON, str(REPO / "helper"), *args],
            capture_output=True,
            text=True,
            env={"PATH": "/usr/bin:/bin"},
            timeout=30,
        )
        assert r.returncode == 2 and text in r.stderr, (args, r.stderr)


def test_protected_ports_are_read_live_from_the_kernel(tmp_path):
    # An admin's set with comments, then edited at run time: the helper follows
    # the kernel's set: a port added works on its next knock a second after the
    # helper last read the sets, which that knock makes it read again; a port
    # removed is refused from then on (until then its element is inert).
    # gnocchi's sets hold single ports; a range in a hand-made one protects
    # nothing for the helper.
    text = TABLE_FILE.read_text().replace(
        "type inet_service\n\t\telements = { 22 }",
        'type inet_service\n\t\tflags interval\n\t\telements = { 22 comment "ssh", 8000-8100 }',
    )
    assert "8000-8100" in text
    (tmp_path / "gnocchi.nft").write_text(text)
    with Net("lv") as net:
        net.server.nft("-f", str(tmp_path / "gnocchi.nft"))
        helper = Helper(net.server)
        try:
            ok, no = S["OK"], S["NOT_PROTECTED"]
            ports = (22, 8000, 8050, 8100, 7999, 8101, 2222)
            assert helper.send(*[request("198.18.1.1", p) for p in ports]) == [ok] + [no] * 6
            net.server.nft("add", "element", "inet", "gnocchi", "protected_tcp", "{ 2222 }")
            net.server.nft("delete", "element", "inet", "gnocchi", "protected_tcp", "{ 22 }")
            assert helper.send(request("198.18.1.1", 22)) == [ok]  # inert: 22 is not protected
            time.sleep(1.1)  # past FRESH: a port the copy lacks has the sets read again
            assert helper.send(request("198.18.1.1", 2222), request("198.18.1.1", 22)) == [ok, no]
        finally:
            helper.close()


def test_a_second_knock_re_arms_the_element_with_the_full_timeout(server):
    host, helper = server
    before = ruleset(host)
    assert helper.send(VALID) == [S["OK"]]
    time.sleep(2.2)
    [elem] = elements(host, "knocked4")
    assert elem["expires"] <= 28
    assert helper.send(VALID) == [S["OK"]]
    [elem] = elements(host, "knocked4")  # the same one element
    assert elem["val"]["concat"] == ["198.18.1.1", "tcp", 22] and elem["expires"] >= 29
    host.nft("flush", "set", "inet", "gnocchi", "knocked4")
    assert ruleset(host) == before


def test_a_knock_again_re_arms_its_element_and_names_its_client_on_this_kernel(tmp_path):
    # The helper adds, deletes and adds, on every kernel: the second knock gets
    # the full timeout back and its own client's name. A plain add keeps the old
    # expiry before Linux 6.12 (and here, without "expires") and the old name.
    with Net("ra") as net:
        load_table(net.server, tmp_path)
        with inside(net.server):
            table = nft.Table(nftables.Nftables())
            for client in ("alice", "bob"):
                for last in (1, 2):
                    r = rq.Request(
                        ipaddress.ip_address(f"198.18.5.{last}"), (("tcp", 22),), 0, client
                    )
                    if client == "alice" or last == 1:
                        assert table.add(r, 30) == ""
                    else:  # a plain add
                        assert (
                            table.apply(
                                {
                                    "add": {
                                        "element": {
                                            **nft.TABLE,
                                            "name": "knocked4",
                                            "elem": [
                                                {
                                                    "elem": {
                                                        "val": {
                                                            "concat": [str(r.address), "tcp", 22]
                                                        },
                                                        "timeout": 30,
                                                        "comment": client,
                                                    }
                                                }
                                            ],
                                        }
                                    }
                                }
                            )[1]
                            == ""
                        )
                if client == "alice":
                    time.sleep(2.2)
        left = {e["val"]["concat"][0]: e for e in elements(net.server, "knocked4")}
        assert left["198.18.5.1"]["expires"] >= 29 and left["198.18.5.1"]["comment"] == "bob"
        assert left["198.18.5.2"]["expires"] <= 28 and left["198.18.5.2"]["comment"] == "alice"


@pytest.fixture
def own_server(tmp_path):
    with Net("rh") as net:  # its own: it leaves an element behind
        load_table(net.server, tmp_path)
        yield net.server


def test_a_standing_element_without_a_timeout_does_not_stop_the_helper(own_server):
    # An element the admin added by hand without a timeout (a standing pass for
    # one address) is listed by nft -j as a bare {"concat": [...]}, not as
    # {"elem": {...}}: a helper that reads knocked4 must not die on it.
    server = own_server
    server.nft("add", "element", "inet", "gnocchi", "knocked4", "{ 198.18.7.7 . tcp . 22 }")
    helper = Helper(server)
    try:
        assert helper.send(request("198.18.1.1", 22)) == [STATUS["OK"]], helper.log.read_text()
        assert helper.send(request("198.18.1.1", 22)) == [STATUS["OK"]], helper.log.read_text()
    finally:
        helper.close()
    listed = json.loads(server.nft("-j", "list", "set", "inet", "gnocchi", "knocked4").stdout)
    elems = [e for item in listed["nftables"] for e in item.get("set", {}).get("elem", [])]
    assert {"concat": ["198.18.7.7", "tcp", 22]} in elems  # the admin's, untouched
    assert [e["elem"]["val"]["concat"] for e in elems if "elem" in e] == [["198.18.1.1", "tcp", 22]]

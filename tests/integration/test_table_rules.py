"""nft/gnocchi.nft in a real kernel: one connection per knock, TCP and UDP,
IPv4 and IPv6, everything else untouched. Knocks come from the real helper.

    client ns  198.18.n.1 / fd00:198:18:n::1  --veth--  server ns  .2 / ::2
                                                          table inet gnocchi
                                                          echo tcp 22, 60001, 8080
                                                            (8080 unprotected)
                                                          echo udp 60001, 60002 (60002 unprotected)
                                                          sink udp 60003 (never answers)
"""

import socket
import time

import pytest

from support import (
    STATUS,
    EchoServices,
    Helper,
    Net,
    echoes,
    elements,
    inside,
    load_table,
    request,
    tcp_connect,
    udp_socket,
)

OK = STATUS["OK"]


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    d = tmp_path_factory.mktemp("table")
    with Net("tb") as net:
        load_table(net.server, d, tcp_ports=(22, 60001), udp_ports=(60001, 60003))
        helper = Helper(net.server)
        try:
            with EchoServices(net.server, tcp_ports=(22, 60001, 8080), udp_ports=(60001, 60002)):
                yield net, helper
        finally:
            helper.close()


def test_nothing_protected_passes_without_a_knock(stack):
    net, _ = stack
    srv = net.server
    for ip in (srv.ip, srv.ip6):
        assert tcp_connect(net.client, ip, 22) is None
        assert tcp_connect(net.client, ip, 60001) is None
        assert not echoes(udp_socket(net.client, ip, 60001))


def test_unprotected_ports_are_untouched(stack):
    net, _ = stack
    for ip in (net.server.ip, net.server.ip6):
        with tcp_connect(net.client, ip, 8080) as c:
            assert c is not None and echoes(c)
        assert echoes(udp_socket(net.client, ip, 60002))


@pytest.mark.parametrize("v6", [False, True], ids=["ipv4", "ipv6"])
def test_tcp_knock_lets_exactly_one_connection_through(stack, v6):
    net, helper = stack
    client_ip, server_ip = (
        (net.client.ip6, net.server.ip6) if v6 else (net.client.ip, net.server.ip)
    )
    assert helper.send(request(client_ip, 22)) == [OK]
    first = tcp_connect(net.client, server_ip, 22)
    assert first is not None and echoes(first)
    assert elements(net.server, "knocked6" if v6 else "knocked4") == []
    assert tcp_connect(net.client, server_ip, 22) is None  # second one: dropped
    assert echoes(first, b"still here")  # the first goes on
    first.close()


def test_udp_knock_lets_one_flow_through(stack):
    net, helper = stack
    assert helper.send(request(net.client.ip, 60001, 17)) == [OK]
    first = udp_socket(net.client, net.server.ip, 60001)
    assert echoes(first)
    assert not echoes(udp_socket(net.client, net.server.ip, 60001))  # other source port
    assert echoes(first, b"again")


def test_unanswered_udp_flow_keeps_flowing(stack):
    # A one-way UDP flow never turns "established"; its later datagrams are
    # still the one flow the knock let in (conntrack confirmed it), while a
    # datagram from another source port is a new flow and is dropped.
    net, helper = stack
    with inside(net.server):
        sink = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sink.bind((net.server.ip, 60003))
    sink.settimeout(0.5)
    with sink:
        assert helper.send(request(net.client.ip, 60003, 17)) == [OK]
        flow = udp_socket(net.client, net.server.ip, 60003)
        for data in (b"one", b"two", b"three"):
            flow.send(data)
            assert sink.recv(100) == data
        udp_socket(net.client, net.server.ip, 60003).send(b"stranger")
        with pytest.raises((TimeoutError, socket.timeout)):
            sink.recv(100)


def test_knock_is_for_one_protocol_and_one_port(stack):
    net, helper = stack
    assert helper.send(request(net.client.ip, 60001, 17)) == [OK]
    assert tcp_connect(net.client, net.server.ip, 60001) is None  # same port, TCP
    assert tcp_connect(net.client, net.server.ip, 22) is None  # other port
    assert echoes(udp_socket(net.client, net.server.ip, 60001))  # the knocked one


def test_knock_from_one_address_does_not_open_for_another(stack):
    net, helper = stack
    assert helper.send(request("198.18.99.99", 22)) == [OK]
    assert tcp_connect(net.client, net.server.ip, 22) is None
    net.server.nft("flush", "set", "inet", "gnocchi", "knocked4")


def test_knock_expires_by_itself(stack):
    net, _ = stack
    short = Helper(net.server, open_seconds=1)
    try:
        assert short.send(request(net.client.ip, 22)) == [OK]
        [elem] = elements(net.server, "knocked4")
        assert elem["timeout"] == 1
    finally:
        short.close()
    for _ in range(30):  # the kernel removes it; nobody else is running
        if not elements(net.server, "knocked4"):
            break
        time.sleep(0.1)
    assert elements(net.server, "knocked4") == []
    assert tcp_connect(net.client, net.server.ip, 22) is None


def test_reknock_rearms_the_full_timeout(stack):
    net, helper = stack
    net.server.nft(
        "add",
        "element",
        "inet",
        "gnocchi",
        "knocked4",
        "{ %s . tcp . 22 timeout 5s }" % net.client.ip,
    )
    assert helper.send(request(net.client.ip, 22)) == [OK]
    [elem] = elements(net.server, "knocked4")
    assert elem["timeout"] == 30 and elem["expires"] > 25
    net.server.nft("flush", "set", "inet", "gnocchi", "knocked4")


def test_reload_replaces_the_table_and_leaves_others_alone(tmp_path):
    with Net("rl") as net:
        srv = net.server
        srv.nft("add", "table", "inet", "admin")
        srv.nft(
            "add",
            "chain",
            "inet",
            "admin",
            "input",
            "{ type filter hook input priority 0; policy accept; }",
        )
        srv.nft("add", "rule", "inet", "admin", "input", "tcp", "dport", "22", "accept")
        admin = srv.nft("-j", "list", "table", "inet", "admin").stdout
        load_table(srv, tmp_path)  # the table did not exist
        listing = ("list", "table", "inet", "gnocchi")  # text: no handles, which change
        first = srv.nft(*listing).stdout
        srv.nft("add", "element", "inet", "gnocchi", "knocked4", "{ 198.18.7.7 . tcp . 22 }")
        load_table(srv, tmp_path)  # again: replaced, pending knocks gone
        assert srv.nft(*listing).stdout == first
        tables = srv.nft("list", "tables").stdout.split("\n")
        assert tables.count("table inet gnocchi") == 1
        assert srv.nft("-j", "list", "table", "inet", "admin").stdout == admin
        # The admin's accept for 22 does not override gnocchi's drop.
        with EchoServices(srv, tcp_ports=(22,)):
            assert tcp_connect(net.client, srv.ip, 22) is None
            srv.nft("delete", "table", "inet", "gnocchi")  # disarmed: 22 reachable
            with tcp_connect(net.client, srv.ip, 22) as c:
                assert c is not None and echoes(c)


def test_arming_does_not_cut_a_connection_that_is_already_open(tmp_path):
    # The admin arms gnocchi over the very ssh session it protects. In a fresh
    # namespace conntrack is not tracking yet, so to the table that session's
    # next packet looks like the first of a connection: it must not be dropped.
    with Net("arm") as net, EchoServices(net.server, tcp_ports=(22,)):
        session = tcp_connect(net.client, net.server.ip, 22)
        assert session is not None and echoes(session)
        load_table(net.server, tmp_path, tcp_ports=(22,))
        assert echoes(session, b"still here after arming")
        assert tcp_connect(net.client, net.server.ip, 22) is None  # new ones still need a knock
        session.close()

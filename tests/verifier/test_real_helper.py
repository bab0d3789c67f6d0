"""The verifier against the real root helper (helper/) and the real table (nft/gnocchi.nft).

Both run in the server namespace; the helper is socket-activated on its
SEQPACKET socket as systemd would, and serves root here (the verifier's
user in this test) instead of gnocchi.
"""

from __future__ import annotations

import socket
import time


from support import knock, send_datagrams, write_config


def test_a_knock_becomes_a_knocked_element_and_an_unprotected_port_is_refused(
    daemons, net, k, tmp_path, real_helper
):
    cfg = write_config(tmp_path, k, str(real_helper))
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
    accepted = d.wait_events("accepted", 1)[0]
    assert accepted["GNOCCHI_HELPER_STATUS"] == "OK"
    listed = net.server.nft("list", "set", "inet", "gnocchi", "knocked4").stdout
    assert f"{net.client.ip} . tcp . 22" in listed
    send_datagrams(net, k.port, [knock(k, "bob", 1, b"", net.server.ip)])  # bob's default: open 443
    failed = d.wait_events("helper-failed", 1)[0]
    assert failed["GNOCCHI_HELPER_STATUS"] == "NOT_PROTECTED"
    assert "443" not in net.server.nft("list", "set", "inet", "gnocchi", "knocked4").stdout
    assert d.proc.poll() is None


def test_a_request_the_verifier_gave_up_on_is_never_carried_out(
    daemons, net, k, tmp_path, real_helper
):
    # A slow helper (here: three idle connections from the served user, 2 s
    # each) gets to the request after its deadline (3 s) has passed: it opens
    # nothing, or the port would open after the verifier logged "not opened".
    cfg = write_config(tmp_path, k, str(real_helper))
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
    idle = []
    for _ in range(3):
        s = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
        s.connect(str(real_helper))
        idle.append(s)
    try:
        send_datagrams(net, k.port, [knock(k, "alice", 1, b"open 22", net.server.ip)])
        [failed] = d.wait_events("helper-failed", 1, timeout=15)
        assert "not opened" not in failed["MESSAGE"] or failed["GNOCCHI_HELPER_STATUS"] == "EXPIRED"
        time.sleep(3)  # the helper has now reached the request, long past its deadline
    finally:
        for s in idle:
            s.close()
    assert (
        f"{net.client.ip} . tcp . 22"
        not in net.server.nft("list", "set", "inet", "gnocchi", "knocked4").stdout
    )
    helper_log = (real_helper.parent / "helper.log").read_text()
    assert "EXPIRED: 198.18." in helper_log and "past its deadline" in helper_log
    assert not d.of("accepted")

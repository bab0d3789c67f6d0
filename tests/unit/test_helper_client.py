"""gnocchi.helper_client: the request bytes of docs/contracts.md, and every way the helper answers or does not."""
import ipaddress
import socket

import pytest

from gnocchi import helper_client
from support import HelperRecorder, request


def test_helper_request_bytes_match_the_contract():
    v4 = helper_client.encode(ipaddress.IPv4Address("198.18.3.1"), 22, "tcp", 5000)
    assert v4 == bytes.fromhex("02040600" "0016" "c6120301" + "00" * 12 + "0000000000001388")
    assert v4 == request("198.18.3.1", 22, deadline_ms=5000)
    v6 = helper_client.encode(ipaddress.IPv6Address("fd00::1"), 60001, "udp", 1)
    assert v6 == bytes.fromhex("02061100" "ea61" "fd00" + "00" * 13 + "01" + "00" * 7 + "01")
    assert len(v4) == len(v6) == 30


def test_the_deadline_is_the_monotonic_clock_plus_three_seconds(tmp_path):
    recorder = HelperRecorder(tmp_path / "h.sock", status=0)
    try:
        helper_client.request_open(recorder.path, ipaddress.IPv4Address("198.18.3.1"), 22, "tcp",
                                   clock=lambda: 1000.25)
    finally:
        recorder.close()
    assert recorder.deadlines == [1_003_250]


def test_helper_client_maps_status_and_unreachable(tmp_path):
    addr = ipaddress.IPv4Address("198.18.3.1")
    with pytest.raises(helper_client.HelperUnreachable, match="not opened: .*No such file"):
        helper_client.request_open(str(tmp_path / "none.sock"), addr, 22, "tcp")
    recorder = HelperRecorder(tmp_path / "h.sock", status=7)
    try:
        assert helper_client.request_open(recorder.path, addr, 22, "tcp") == "RATE_LIMITED"
        recorder.status = 200
        assert helper_client.request_open(recorder.path, addr, 22, "tcp") == "UNKNOWN_200"
    finally:
        recorder.close()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # accepts, never answers
    silent.bind(str(tmp_path / "s.sock"))
    silent.listen(1)
    try:
        # Sent, then silence: never "not opened", since the helper may have taken it.
        with pytest.raises(helper_client.HelperUnreachable) as e:
            helper_client.request_open(str(tmp_path / "s.sock"), addr, 22, "tcp", deadline=0.2)
        assert "no answer within 1.2 s" in str(e.value) and "not opened" not in str(e.value)
        assert "opens nothing past the request's 0.2 s deadline" in str(e.value)
    finally:
        silent.close()

"""gnocchi.helper_client: the request bytes of docs/contracts.md, and every way the helper answers or does not."""
import ipaddress
import socket

import pytest

from gnocchi import helper_client
from support import HelperRecorder, request


def test_helper_request_bytes_match_the_contract():
    v4 = helper_client.encode(ipaddress.IPv4Address("198.18.3.1"), 22, "tcp")
    assert v4 == bytes.fromhex("01040600" "0016" "c6120301" + "00" * 12)
    assert v4 == request("198.18.3.1", 22)
    v6 = helper_client.encode(ipaddress.IPv6Address("fd00::1"), 60001, "udp")
    assert v6 == bytes.fromhex("01061100" "ea61" "fd00" + "00" * 13 + "01")
    assert len(v4) == len(v6) == 22


def test_helper_client_maps_status_and_unreachable(tmp_path):
    addr = ipaddress.IPv4Address("198.18.3.1")
    with pytest.raises(helper_client.HelperUnreachable, match="No such file"):
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
        with pytest.raises(helper_client.HelperUnreachable, match="no answer"):
            helper_client.request_open(str(tmp_path / "s.sock"), addr, 22, "tcp", timeout=0.2)
    finally:
        silent.close()

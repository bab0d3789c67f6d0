"""gnocchi.server.helper_client: the request bytes of docs/contracts.md, and
every way the helper answers or does not."""

import ipaddress
import socket

import pytest

from gnocchi.server import helper_client
from gnocchi.shared.knock_request import Open
from support import HelperRecorder, request

SSH = [Open(22, "tcp")]


def test_helper_request_bytes_match_the_contract():
    v4 = helper_client.encode(ipaddress.IPv4Address("198.18.3.1"), SSH, "alice", 5000)
    assert v4 == bytes.fromhex(
        "04040105c6120301" + "00" * 12 + "0000000000001388060016" + b"alice".hex()
    )
    assert v4 == request("198.18.3.1", 22, deadline_ms=5000)
    v6 = helper_client.encode(ipaddress.IPv6Address("fd00::1"), [Open(60001, "udp"), *SSH], "b", 1)
    assert v6 == bytes.fromhex("04060201fd00" + "00" * 13 + "01" + "00" * 7 + "0111ea6106001662")
    assert (len(v4), len(v6)) == (36, 35)


@pytest.mark.parametrize(
    "opens, why",
    [
        ([], "0 ports in one request: the helper takes 1 to 8"),
        ([Open(p, "tcp") for p in range(1, 10)], "9 ports in one request: the helper takes 1 to 8"),
        ([Open(22, "tcp"), Open(60001, "udp"), Open(22, "tcp")], "a port twice in one request"),
    ],
)
def test_what_the_helper_would_refuse_whole_is_never_sent(tmp_path, opens, why):
    recorder = HelperRecorder(tmp_path / "h.sock", status=0)
    try:
        with pytest.raises(ValueError, match=why):
            helper_client.request_open(
                recorder.path, ipaddress.IPv4Address("198.18.3.1"), opens, "alice"
            )
    finally:
        recorder.close()
    assert recorder.messages == []
    eight = [Open(p, "udp") for p in range(1, 9)]  # the most one request takes
    longest = helper_client.encode(ipaddress.IPv4Address("198.18.3.1"), eight, "a" * 64, 0)
    assert len(longest) == 28 + 8 * 3 + 64


def test_the_deadline_is_the_monotonic_clock_plus_three_seconds(tmp_path):
    recorder = HelperRecorder(tmp_path / "h.sock", status=0)
    try:
        helper_client.request_open(
            recorder.path, ipaddress.IPv4Address("198.18.3.1"), SSH, "alice", clock=lambda: 1000.25
        )
    finally:
        recorder.close()
    assert recorder.deadlines == [1_003_250]


def test_helper_client_maps_status_and_unreachable(tmp_path):
    addr = ipaddress.IPv4Address("198.18.3.1")
    with pytest.raises(helper_client.HelperUnreachable, match="not opened: .*No such file"):
        helper_client.request_open(str(tmp_path / "none.sock"), addr, SSH, "alice")
    recorder = HelperRecorder(tmp_path / "h.sock", status=7)
    try:
        assert helper_client.request_open(recorder.path, addr, SSH, "alice") == "TOO_MANY"
        recorder.status = 11
        assert helper_client.request_open(recorder.path, addr, SSH, "alice") == "BAD_DUPLICATE"
        recorder.status = 200
        assert helper_client.request_open(recorder.path, addr, SSH, "alice") == "UNKNOWN_200"
    finally:
        recorder.close()
    silent = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)  # accepts, never answers
    silent.bind(str(tmp_path / "s.sock"))
    silent.listen(1)
    try:
        # Sent, then silence: never "not opened", since the helper may have taken it.
        with pytest.raises(helper_client.HelperUnreachable) as e:
            helper_client.request_open(str(tmp_path / "s.sock"), addr, SSH, "alice", deadline=0.2)
        assert "no answer within 1.2 s" in str(e.value) and "not opened" not in str(e.value)
        assert "opens nothing past the request's 0.2 s deadline" in str(e.value)
    finally:
        silent.close()


def test_the_knocks_of_a_batch_are_in_flight_before_the_first_answer(tmp_path):
    # A stand-in helper that answers nothing until it holds WINDOW requests: a
    # client that waited for each answer before sending the next would stall.
    path = str(tmp_path / "w.sock")
    listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
    listener.bind(path)
    listener.listen(64)
    held = []

    def serve():
        for _ in range(2):  # two windows' worth
            conns = [listener.accept()[0] for _ in range(helper_client.WINDOW)]
            held.extend(c.recv(256) for c in conns)
            for i, c in enumerate(conns):
                c.send(bytes([0 if i % 2 else 7]))
                c.close()

    import threading

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    asks = [
        (ipaddress.IPv4Address(f"198.18.3.{i + 1}"), SSH, f"c{i}")
        for i in range(2 * helper_client.WINDOW)
    ]
    try:
        answers = helper_client.request_opens(path, asks, deadline=5.0)
    finally:
        thread.join(timeout=10)
        listener.close()
    assert answers == ["TOO_MANY", "OK"] * helper_client.WINDOW
    assert [m[4:8] for m in held] == [a.packed for a, _, _ in asks]  # each once, in order


def test_a_helper_that_is_not_there_opens_none_of_a_batch(tmp_path):
    asks = [(ipaddress.IPv4Address("198.18.3.1"), SSH, "alice")] * 3
    answers = helper_client.request_opens(str(tmp_path / "none.sock"), asks)
    assert (
        all(
            isinstance(a, helper_client.HelperUnreachable) and "not opened" in str(a)
            for a in answers
        )
        and len(answers) == 3
    )


OUT_OF_DESCRIPTORS = """
import ipaddress, resource, socket, sys
sys.path.insert(0, sys.argv[1])
from gnocchi.server import helper_client
from gnocchi.shared.knock_request import Open
listener = socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET)
listener.bind(sys.argv[2])
listener.listen(8)  # never accepts: a request in flight holds its descriptor
probe = socket.socket()
free = probe.fileno()  # the lowest free descriptor: the limit leaves room for it alone
probe.close()
resource.setrlimit(resource.RLIMIT_NOFILE, (free + 1, free + 1))
asks = [(ipaddress.ip_address("198.18.3.1"), [Open(22, "tcp")], "alice")] * 2
print(helper_client.request_opens(sys.argv[2], asks, deadline=0.3))
"""


def test_a_knock_whose_request_finds_no_descriptor_fails_alone(tmp_path):
    # A real RLIMIT_NOFILE in a child: the second request of the batch cannot get a socket.
    import subprocess
    import sys

    from support import REPO

    child = subprocess.run(
        [sys.executable, "-c", OUT_OF_DESCRIPTORS, str(REPO), str(tmp_path / "h.sock")],
        capture_output=True,
        text=True,
        timeout=30,
    )
    assert child.returncode == 0, child.stderr
    first, second = child.stdout.strip().strip("[]").split(", ", 1)
    assert "no answer" in first, child.stdout
    assert "Too many open files" in second, child.stdout

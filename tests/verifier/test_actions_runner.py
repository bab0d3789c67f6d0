"""`run NAME` off the verifier's loop: the real verifier and the real runner.

The verifier is socket-activated in a server namespace as in test_daemon.py;
the runner (`gnocchi run-action`) sits behind `systemd-socket-activate
--seqpacket --accept --inetd` on a path socket, a new runner per connection
with the connection on stdin, as gnocchi-action.socket starts
gnocchi-action@.service. No systemd here, so no cgroup: what the unit adds
(its user, its sandbox, the cgroup kill of a `setsid` child) is shown in
tests/system/test_action_units.py. The helper is the recording stand-in of tests/support.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
import time
from pathlib import Path

import pytest
from support import PYTHON, REPO, knock, send_datagrams, write_config
from support.verifier import SHOW_ACTION as SHOW

from gnocchi.server import action_client, action_runner, actions

pytestmark = pytest.mark.netns

# Writes its pid (so the test sees it is still running), then hangs.
HANG = "import os, sys, time; open(sys.argv[1], 'w').write(str(os.getpid())); time.sleep(120)"
EXTRA_CLIENTS = ("carol", "dave", "erin", "frank")


class Runner:
    """`systemd-socket-activate --seqpacket --accept --inetd` running `gnocchi run-action`."""

    def __init__(self, net, tmp_path: Path, config: Path):
        self.path = tmp_path / "action.sock"
        with open(tmp_path / "runner.err", "wb") as err:  # the runner keeps its own copy
            self.proc = net.server.popen(
                [
                    "systemd-socket-activate",
                    "--seqpacket",
                    "--accept",
                    "--inetd",
                    "-l",
                    str(self.path),
                    "-E",
                    f"PYTHONPATH={REPO}",
                    PYTHON,
                    "-m",
                    "gnocchi.admin",
                    "run-action",
                    "--config",
                    str(config),
                    "--peer-user",
                    "root",
                ],
                stdout=subprocess.DEVNULL,
                stderr=err,
            )
        deadline = time.monotonic() + 10
        while not self.path.exists() and time.monotonic() < deadline:
            time.sleep(0.05)
        assert self.path.exists(), (tmp_path / "runner.err").read_text()

    def stop(self):
        self.proc.terminate()
        self.proc.wait(timeout=10)


def config(tmp_path, k) -> Path:
    for name in EXTRA_CLIENTS:
        k.seeds[name] = os.urandom(32)
    extra_clients = "".join(
        f'[clients.{n}]\npublic_key = "{k.public(n)}"\nactions = ["hang"]\n' for n in EXTRA_CLIENTS
    )
    return write_config(
        tmp_path,
        k,
        str(tmp_path / "helper.sock"),
        extra=f'action_socket = "{tmp_path / "action.sock"}"',
        clients=f"""
[clients.alice]
public_key = "{k.public("alice")}"
allow = ["22/tcp"]
actions = ["show", "hang", "flood", "fail"]

[clients.bob]
public_key = "{k.public("bob")}"
allow = ["443"]

{extra_clients}
[actions.show]
argv = ["{PYTHON}", "{SHOW}", "{tmp_path / "action.out"}"]
timeout = 10

[actions.hang]
argv = ["{PYTHON}", "-c", "{HANG}", "{tmp_path / "hang.pid"}"]
timeout = 8

[actions.flood]
argv = ["/usr/bin/yes", "flood"]
timeout = 1

[actions.fail]
argv = ["/bin/sh", "-c", "echo no; exit 3"]
""",
    )


@pytest.fixture
def stack(daemons, net, k, tmp_path, helper):
    cfg = config(tmp_path, k)
    runner = Runner(net, tmp_path, cfg)
    d = daemons(
        net,
        cfg,
        f"{net.server.ip}:{k.port}",
        "--summary-interval",
        "1",
        stderr=tmp_path / "daemon.err",
    )
    yield d
    runner.stop()


def pid_alive(pid_file: Path) -> bool:
    try:
        return Path(f"/proc/{int(pid_file.read_text())}").exists()
    except (OSError, ValueError):
        return False


def wait_until(probe, what: str, timeout: float = 10.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if probe():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out waiting until {what}")


def test_a_hanging_action_does_not_delay_another_clients_knock(stack, net, k, tmp_path, helper):
    d = stack
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"run hang", net.server.ip)])
    wait_until(lambda: pid_alive(tmp_path / "hang.pid"), "the action runs")
    sent = time.monotonic()
    send_datagrams(net, k.port, [knock(k, "bob", 1, b"", net.server.ip)])
    d.wait_events("accepted", 1)
    latency = time.monotonic() - sent
    # Behaviour, not a time target: bob got in while alice's action still ran.
    assert pid_alive(tmp_path / "hang.pid") and not d.of("action-failed")
    assert helper.messages and len(helper.messages) == 1
    print(f"bob's knock accepted {latency * 1000:.0f} ms after sending, alice's action hanging")
    failed = d.wait_events("action-failed", 1, timeout=30)[0]
    assert failed["GNOCCHI_CLIENT"] == "alice" and failed["GNOCCHI_REQUEST"] == "run hang"
    assert failed["GNOCCHI_REASON"] == "killed after its timeout of 8 s"
    assert not pid_alive(tmp_path / "hang.pid")
    events = [e["GNOCCHI_EVENT"] for e in d.events()]
    assert events.index("accepted") < events.index("action-failed")


def test_one_run_at_a_time_per_client_and_a_bounded_number_in_all(stack, net, k, tmp_path):
    d = stack
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"run hang", net.server.ip)])
    wait_until(lambda: pid_alive(tmp_path / "hang.pid"), "the action runs")
    send_datagrams(net, k.port, [knock(k, "alice", 2, b"run show", net.server.ip)])
    refused = d.wait_events("refused", 1)[0]
    assert refused["GNOCCHI_CLIENT"] == "alice" and refused["GNOCCHI_REQUEST"] == "run show"
    assert "action 'hang' is still running" in refused["GNOCCHI_REASON"]
    assert not (tmp_path / "action.out").exists(), "the second run never started"
    # Three more clients fill the verifier's MAX_RUNS; a fourth is refused.
    assert action_client.MAX_RUNS == 4
    send_datagrams(
        net, k.port, [knock(k, name, 1, b"run hang", net.server.ip) for name in EXTRA_CLIENTS]
    )
    refused = d.wait_events("refused", 2)[1]
    assert refused["GNOCCHI_CLIENT"] == "frank"
    assert refused["GNOCCHI_REASON"] == "4 actions are running, the most at once"
    # bob's knock still opens: refusing runs costs other clients nothing.
    send_datagrams(net, k.port, [knock(k, "bob", 1, b"", net.server.ip)])
    d.wait_events("accepted", 1)


def test_payload_on_stdin_and_the_outcome_in_the_audit_trail(stack, net, k, tmp_path):
    d = stack
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"run show\nhello\x00world", net.server.ip)])
    ran = d.wait_events("action-run", 1)[0]
    assert ran["GNOCCHI_REQUEST"] == "run show (11-byte payload)"
    assert ran["GNOCCHI_ACTION_OUTPUT"] == "shown\\n"
    assert ran["GNOCCHI_COUNTER"] == "1" and ran["GNOCCHI_CLIENT_KEY"] == k.public("alice")
    seen = json.loads((tmp_path / "action.out").read_text())
    assert bytes.fromhex(seen["payload"]) == b"hello\x00world"
    assert seen["env"]["GNOCCHI_CLIENT"] == "alice"
    assert seen["env"]["GNOCCHI_SOURCE_IP"] == net.client.ip
    assert seen["env"]["GNOCCHI_ACTION"] == "show"
    assert set(seen["env"]) <= set(actions.ENV) | {
        "GNOCCHI_CLIENT",
        "GNOCCHI_SOURCE_IP",
        "GNOCCHI_ACTION",
        "LC_CTYPE",
    }
    assert seen["cwd"] == "/"
    # One run at a time: alice may run again once the first has reported.
    send_datagrams(net, k.port, [knock(k, "alice", 2, b"run fail", net.server.ip)])
    failed = d.wait_events("action-failed", 1)[0]
    assert failed["GNOCCHI_REASON"] == "exited with status 3"
    assert failed["GNOCCHI_ACTION_OUTPUT"] == "no\\n"


def test_an_output_flood_is_bounded_and_ends_at_the_timeout(stack, net, k, tmp_path, helper):
    d = stack
    send_datagrams(net, k.port, [knock(k, "alice", 1, b"run flood", net.server.ip)])
    send_datagrams(net, k.port, [knock(k, "bob", 1, b"", net.server.ip)])
    d.wait_events("accepted", 1)
    failed = d.wait_events("action-failed", 1)[0]
    assert failed["GNOCCHI_REASON"] == "killed after its timeout of 1 s"
    output = failed["GNOCCHI_ACTION_OUTPUT"]
    assert output.startswith("flood\\nflood\\n")
    assert len(output.replace("\\n", "\n")) == actions.OUTPUT_LIMIT


def test_a_missing_runner_is_an_action_failure_and_serving_goes_on(
    daemons, net, k, tmp_path, helper
):
    cfg = config(tmp_path, k)  # no runner behind action.sock
    d = daemons(net, cfg, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err")
    send_datagrams(
        net,
        k.port,
        [knock(k, "alice", 1, b"run show", net.server.ip), knock(k, "bob", 1, b"", net.server.ip)],
    )
    failed = d.wait_events("action-failed", 1)[0]
    assert failed["GNOCCHI_REASON"].startswith(f"not started: {tmp_path / 'action.sock'}: ")
    d.wait_events("accepted", 1)
    send_datagrams(net, k.port, [knock(k, "alice", 2, b"run show", net.server.ip)])
    d.wait_events("action-failed", 2)  # the failed start held no slot


# ---- the request and the reply, both sides ----------------------------------


def test_request_round_trip_and_exact_lengths():
    source = ipaddress.ip_address("198.18.3.1")
    message = action_client.encode_request("motd", "alice", source, b"pay\nload")
    assert action_runner.parse_request(message) == action_runner.Request(
        "motd", "alice", source, b"pay\nload"
    )
    six = ipaddress.ip_address("2001:db8::1")
    assert (
        action_runner.parse_request(action_client.encode_request("m", "b", six, b"")).source == six
    )
    assert action_runner.REQUEST.format == action_client.REQUEST.format
    bad = {
        message + b"x": "request lengths do not add up",
        message[:-1]: "request lengths do not add up",
        message[:10]: "request of 10 bytes",
        b"\x02" + message[1:]: "request version 2",
        message[:1] + b"\x05" + message[2:]: "address family 5",
        message[:12] + b"\x01" + message[13:]: "address family 4",  # IPv4 with bytes 4..15 set
        message.replace(b"alice", b"al ce"): "not a name",
        message.replace(b"motd", b"m/td"): "not a name",
        bytes(action_runner.MAX_REQUEST + 1): "request of",
    }
    for raw, why in bad.items():
        assert why in action_runner.parse_request(raw), raw


def test_reply_round_trip_and_untrusted_replies():
    def through(outcome):
        return action_client.parse_reply(action_runner.encode_reply(outcome), 5)

    assert through(actions.Outcome(0, b"ok")) == actions.Outcome(0, b"ok")
    assert (
        through(actions.Outcome(3, b"x", "exited with status 3")).problem == "exited with status 3"
    )
    assert through(actions.Outcome(-9, b"", "killed by signal 9")).problem == "killed by signal 9"
    timed = through(actions.Outcome(None, b"partial", "killed after ...", True))
    assert timed == actions.Outcome(None, b"partial", "killed after its timeout of 5 s")
    assert through(actions.Outcome(None, b"", "cannot start /x: No such file")) == actions.Outcome(
        None, b"cannot start /x: No such file", "the runner could not start it"
    )
    big = action_runner.REPLY.pack(1, 0, 0) + bytes(actions.OUTPUT_LIMIT + 1)
    assert "malformed" in action_client.parse_reply(big, 5).problem
    assert "malformed" in action_client.parse_reply(b"\x01\x00", 5).problem
    assert "malformed" in action_client.parse_reply(b"\x01\x09" + bytes(4), 5).problem
    assert "malformed" in action_client.parse_reply(b"\x02\x00" + bytes(4), 5).problem


def test_an_action_is_done_when_its_process_exits_even_if_a_setsid_child_holds_the_pipe():
    from gnocchi.server.config import Action

    script = (
        "import subprocess; p = subprocess.Popen(['setsid', 'sleep', '57']); "
        "print(p.pid, flush=True)"
    )
    out = actions.run(Action("t", (PYTHON, "-c", script), 30), "a", "198.18.3.1", b"")
    child = int(out.output)
    try:
        # Reported while the child (own session, so out of the group kill) still
        # holds the pipe: here nothing else kills it; in the unit, its cgroup does.
        assert out.ok and Path(f"/proc/{child}").exists()
    finally:
        os.kill(child, 9)

"""Actions on a booted systemd: each run its own unit, user and cgroup.

The package is installed in a booted container as in test_system.py, with
two clients: alice may run actions, bob may open port 22. With the real
units (gnocchi-action.socket starting gnocchi-action@.service per run), a
hanging action with a `setsid` child, an action that exits at once leaving
a `setsid` child, and an output flood each run while bob knocks: bob's
knock opens port 22 while alice's action still runs, and once the action's
outcome is logged nothing of it is left (no unit, no process of user
gnocchi-action, an empty cgroup). An action also shows what it can reach:
it runs as gnocchi-action and cannot read the server key, the counter
store or the helper's socket.
"""

from __future__ import annotations

import json
import time

import pytest

from systemd_container import installed
from test_system import CONFIG, PROTECTED, Server, need

pytestmark = pytest.mark.system

# Each action is a config entry; {ACTION_TIMEOUT} s for the ones that hang.
ACTION_TIMEOUT = 6
PROBE = """
import json, os, socket
def can(f):
    try:
        f()
        return True
    except OSError as e:
        return e.strerror
def helper():
    with socket.socket(socket.AF_UNIX, socket.SOCK_SEQPACKET) as s:
        s.connect("/run/gnocchi/helper.sock")
print(json.dumps({"uid": os.getuid(), "groups": os.getgroups(),
    "key": can(lambda: open("/etc/gnocchi/server.key", "rb").read()),
    "state": can(lambda: os.listdir("/var/lib/gnocchi")),
    "helper": can(helper), "write_tmp": can(lambda: open("/tmp/x", "w").write("x")),
    "write_etc": can(lambda: open("/etc/gnocchi/x", "w").write("x"))}))
"""
ACTIONS = {
    # hangs, and leaves a child in a new session (out of the timeout's group kill)
    "hang": ["/bin/sh", "-c", "setsid /usr/bin/sleep 301 & echo hanging; exec /usr/bin/sleep 302"],
    # exits at once, leaving a child in a new session that holds its output pipe
    "daemonise": ["/bin/sh", "-c", "setsid /usr/bin/sleep 303 & echo left a child"],
    "flood": ["/usr/bin/yes", "flood"],
    "probe": ["/usr/bin/python3", "-c", PROBE],
}


@pytest.fixture(scope="module")
def server(deb):
    need("systemd-nspawn", "nsenter", "nft")
    with installed(deb, "a") as (net, box):
        yield install(Server(net, box))


def install(s: Server) -> Server:
    box = s.box
    s.port = int(box.run(["gnocchi", "keygen", "--server", "/etc/gnocchi/server.key"]).stdout)
    public = {}
    for name in ("alice", "bob"):
        box.run(["mkdir", "-m", "0700", f"/root/{name}"])
        public[name] = box.run(
            ["gnocchi", "keygen", "--client", f"/root/{name}/client.key"]
        ).stdout.strip()
        box.run(["install", "-m", "0600", "/etc/gnocchi/server.key", f"/root/{name}/server.key"])
    config = box.root / CONFIG.lstrip("/")
    text = config.read_text()
    text += (
        f'\n[clients.alice]\npublic_key = "{public["alice"]}"\n'
        f"actions = {json.dumps(list(ACTIONS))}\n"
        f'\n[clients.bob]\npublic_key = "{public["bob"]}"\nallow = ["{PROTECTED}/tcp"]\n'
    )
    for name, argv in ACTIONS.items():
        text += f"\n[actions.{name}]\nargv = {json.dumps(argv)}\ntimeout = {ACTION_TIMEOUT}\n"
    config.write_text(text)
    box.run(["gnocchi", "setup"])
    box.run(["systemctl", "enable", "--now", "gnocchi.socket"])  # the one switch
    s.start_listener()
    return s


def knock(s: Server, who: str, *options) -> None:
    s.box.run_in_netns(
        s.net.client.name,
        [
            "gnocchi-knock",
            "--server-key-file",
            f"/root/{who}/server.key",
            "--client-key-file",
            f"/root/{who}/client.key",
            "--state-dir",
            f"/root/{who}/state",
            *options,
            s.net.server.ip,
        ],
    )


def events(s: Server, event: str) -> list[dict]:
    return [e for e in s.journal("-u", "gnocchi") if e.get("GNOCCHI_EVENT") == event]


def wait_event(s: Server, event: str, count: int, timeout: float = 30) -> dict:
    return s.wait(
        lambda: len(events(s, event)) >= count and events(s, event)[count - 1],
        f"{count} {event} entries",
        timeout,
    )


def action_units(s: Server) -> list[str]:
    out = s.box.run(
        [
            "systemctl",
            "list-units",
            "--no-legend",
            "--plain",
            "--all",
            "--state=active,activating,deactivating",
            "gnocchi-action@*",
        ]
    ).stdout
    return [line.split()[0] for line in out.splitlines() if line.strip()]


def action_processes(s: Server) -> list[str]:
    out = s.box.run(["ps", "-u", "gnocchi-action", "-o", "pid=,args="], check=False).stdout
    return [line.strip() for line in out.splitlines() if line.strip()]


def cgroup_processes(s: Server) -> list[str]:
    """Every process in any gnocchi-action@ unit's cgroup, by the kernel's account."""
    slice_ = s.box.run(
        ["systemctl", "show", "-P", "ControlGroup", "system-gnocchi\\x2daction.slice"]
    ).stdout.strip()
    if not slice_:
        return []  # the slice is gone, and with it every cgroup below it
    pids = set()
    # cgroup v2, or the hybrid layout of this machine's image (unified + name=systemd)
    for root in ("/sys/fs/cgroup", "/sys/fs/cgroup/unified", "/sys/fs/cgroup/systemd"):
        pids |= set(
            s.box.run(
                ["find", f"{root}{slice_}", "-name", "cgroup.procs", "-exec", "cat", "{}", "+"],
                check=False,
            ).stdout.split()
        )
    return sorted(pids)


def nothing_left(s: Server) -> bool:
    return not (action_units(s) or action_processes(s) or cgroup_processes(s))


def bob_gets_in(s: Server) -> float:
    """bob knocks and connects; returns the knock's latency to its accepted entry, in s."""
    before = len(s.accepted())
    sent = time.time()
    knock(s, "bob")
    entry = s.wait_accepted(before + 1)
    assert entry["GNOCCHI_CLIENT"] == "bob"
    assert s.connect() == "hello from the protected port"
    return int(entry["__REALTIME_TIMESTAMP"]) / 1e6 - sent


def test_the_action_units_verify_clean_and_score(server):
    box = server.box
    proc = box.run(
        ["systemd-analyze", "verify", "gnocchi-action.socket", "gnocchi-action@x.service"],
        check=False,
    )
    assert proc.returncode == 0 and not proc.stderr.strip(), proc.stderr
    out = box.run(
        ["systemd-analyze", "security", "--offline=true", "--no-pager", "gnocchi-action@x.service"]
    ).stdout
    score = float(out.split("Overall exposure level for gnocchi-action@x.service: ")[1].split()[0])
    assert score <= 1.0, score


def test_a_hanging_action_with_a_setsid_child_delays_no_knock_and_dies_at_its_timeout(server):
    s = server
    baseline = bob_gets_in(s)  # no action running: for comparison only
    knock(s, "alice", "--run", "hang")
    s.wait(lambda: len(cgroup_processes(s)) >= 3, "the action runs in its unit")
    running = action_units(s)
    assert len(running) == 1 and running[0].startswith("gnocchi-action@"), running
    inside = s.box.run(["systemctl", "show", "-P", "ControlGroup", running[0]]).stdout.strip()
    assert any("sleep 301" in p for p in action_processes(s)), action_processes(s)

    latency = bob_gets_in(s)
    assert action_units(s) == running and not events(s, "action-failed"), (
        "bob got in while alice's action still ran"
    )
    print(
        f"bob's knock accepted {latency * 1000:.0f} ms after sending (with no action "
        f"running: {baseline * 1000:.0f} ms); alice's action hanging "
        f"in {inside} with {len(cgroup_processes(s))} processes"
    )

    failed = wait_event(s, "action-failed", 1)
    assert failed["GNOCCHI_CLIENT"] == "alice" and failed["GNOCCHI_REQUEST"] == "run hang"
    assert failed["GNOCCHI_REASON"] == f"killed after its timeout of {ACTION_TIMEOUT} s"
    assert failed["GNOCCHI_ACTION_OUTPUT"] == "hanging\\n"
    s.wait(lambda: nothing_left(s), "no unit, process or cgroup of the action is left", 10)
    ended = time.time() - int(failed["__REALTIME_TIMESTAMP"]) / 1e6
    print(f"nothing of the action left {ended:.1f} s after its outcome was logged")


def test_a_setsid_child_of_an_action_that_exits_at_once_is_killed_with_its_unit(server):
    s = server
    before = len(events(s, "action-run"))
    knock(s, "alice", "--run", "daemonise")
    ran = wait_event(s, "action-run", before + 1)
    assert ran["GNOCCHI_REQUEST"] == "run daemonise"
    assert ran["GNOCCHI_ACTION_OUTPUT"] == "left a child\\n"
    # Reported when the action exited, not when its child let the pipe go, and
    # the child went with the unit's cgroup, well before the action's timeout.
    s.wait(lambda: nothing_left(s), "the setsid child is gone", ACTION_TIMEOUT - 1)
    assert not any(
        "sleep 303" in line for line in s.box.run(["ps", "-eo", "args="]).stdout.splitlines()
    )


def test_an_output_flood_delays_no_knock_and_is_bounded(server):
    s = server
    before = len(events(s, "action-failed"))
    knock(s, "alice", "--run", "flood")
    s.wait(lambda: any("yes flood" in p for p in action_processes(s)), "the flood runs")
    latency = bob_gets_in(s)
    assert any("yes flood" in p for p in action_processes(s)), "bob got in during the flood"
    print(f"bob's knock accepted {latency * 1000:.0f} ms after sending, during an output flood")
    failed = wait_event(s, "action-failed", before + 1)
    assert failed["GNOCCHI_REQUEST"] == "run flood"
    assert failed["GNOCCHI_REASON"] == f"killed after its timeout of {ACTION_TIMEOUT} s"
    assert len(failed["GNOCCHI_ACTION_OUTPUT"].replace("\\n", "\n")) == 2048
    s.wait(lambda: nothing_left(s), "nothing of the flood is left", 10)


def test_an_action_runs_as_its_own_user_with_nothing_of_the_verifiers(server):
    s = server
    before = len(events(s, "action-run"))
    knock(s, "alice", "--run", "probe")
    ran = wait_event(s, "action-run", before + 1)
    seen = json.loads(ran["GNOCCHI_ACTION_OUTPUT"].replace("\\n", ""))
    box = s.box
    assert seen["uid"] == int(box.run(["id", "-u", "gnocchi-action"]).stdout)
    gnocchi_gid = int(box.run(["getent", "group", "gnocchi"]).stdout.split(":")[2])
    assert gnocchi_gid not in seen["groups"]
    assert seen["key"] is not True and seen["state"] is not True and seen["helper"] is not True
    assert seen["write_etc"] is not True
    print(f"the action saw: {seen}")
    runner = box.run(["journalctl", "--no-pager", "-u", "gnocchi-action@*"]).stdout
    assert "action probe for client alice from" in runner

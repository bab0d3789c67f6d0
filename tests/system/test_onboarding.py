"""Onboarding a client in two commands, on a booted systemd, with real ssh.

An armed server (installed from the .debs, its first client alice added
with `gnocchi add-client`) gets a second client: bob, a fresh account with
nothing in his home, runs `gnocchi-knock --keygen`; the admin runs `gnocchi
add-client bob PUBKEY`, which reloads the running verifier; the knock.toml
profile and ~/.ssh/config block it prints are written on bob's side as they
are, with a copy of the server key; and bob's plain `ssh HOST` logs in
through `ProxyCommand gnocchi-knock --proxy`. `gnocchi remove-client bob`
then shuts him out again, and alice still gets in.

bob's commands run with the container's files and the client namespace's
network (Container.run_in_netns), as the client host. sshd is Debian's
openssh-server, fetched into the host's apt cache (--download-only, nothing
installed on the host) and installed in the container only.
"""

from __future__ import annotations

import re
import shutil
import subprocess
import sys

import pytest

from systemd_container import installed

pytestmark = pytest.mark.system

BOB = "/home/bob"


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' '.join(missing)}")


def blocks(out: str) -> dict[str, str]:
    """add-client's output split at its '# ---- client NAME: WHAT ----' lines."""
    parts = re.split(r"^# ---- client \S+: (.*) ----\n", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


@pytest.fixture(scope="module")
def setup(deb):
    need("systemd-nspawn", "nsenter", "nft", "apt-get")
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ("cached lists", "fresh lists"):
        if attempt == "fresh lists":  # a machine whose apt lists are missing or stale
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, env=env)
        fetched = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--download-only", "openssh-server"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        if fetched.returncode == 0:
            break
    if fetched.returncode != 0:
        pytest.skip(f"cannot fetch openssh-server: {fetched.stderr.strip()[-300:]}")
    with installed(deb, "ob") as (net, box):
        box.run(
            [
                "env",
                "DEBIAN_FRONTEND=noninteractive",
                "apt-get",
                "install",
                "-y",
                "-q",
                "--no-download",
                "openssh-server",
            ],
            timeout=300,
        )
        box.run(["systemctl", "is-active", "ssh.service"])

        # The admin: server key, the first client (root's own key, "alice"), armed.
        box.run(["gnocchi", "keygen", "--server", "/etc/gnocchi/server.key"])
        alice = box.run(["gnocchi-knock", "--keygen", "/root/alice/client.key"]).stdout.strip()
        box.run(["install", "-m", "0600", "/etc/gnocchi/server.key", "/root/alice/server.key"])
        box.run(["gnocchi", "add-client", "alice", alice, "--allow", "22"])
        box.run(["gnocchi", "setup"])
        box.run(["systemctl", "enable", "--now", "gnocchi.socket"])
        yield net, box


def as_bob(box, net, *argv, check=True, timeout=60):
    """A command of bob's on the client host."""
    return box.run_in_netns(
        net.client.name,
        ["runuser", "-u", "bob", "--", "env", f"HOME={BOB}", *argv],
        check=check,
        timeout=timeout,
    )


def ssh(box, net, *options, check=True):
    return as_bob(
        box,
        net,
        "ssh",
        "-o",
        "BatchMode=yes",
        "-o",
        "StrictHostKeyChecking=accept-new",
        *options,
        net.server.ip,
        "id",
        "-un",
        check=check,
        timeout=120,
    )


def alice_knocks(box, net):
    box.run_in_netns(
        net.client.name,
        [
            "gnocchi-knock",
            "--server-key-file",
            "/root/alice/server.key",
            "--client-key-file",
            "/root/alice/client.key",
            "--state-dir",
            "/root/alice/state",
            net.server.ip,
        ],
    )


def alice_connects(box, net) -> str:
    """alice knocks, then connects to port 22: the first bytes of sshd's banner."""
    alice_knocks(box, net)
    probe = (
        "import socket, sys\n"
        "c = socket.create_connection((sys.argv[1], 22), timeout=3)\n"
        "print(c.recv(3).decode())\n"
    )
    return net.client.run(
        [sys.executable, "-c", probe, net.server.ip], timeout=30, check=False
    ).stdout.strip()


def test_a_second_client_in_two_commands_logs_in_with_ssh_and_is_removed_again(setup):
    net, box = setup
    # bob: a fresh account; one command makes his key (and ~/.config/gnocchi, 0700).
    box.run(["useradd", "--create-home", "--shell", "/bin/sh", "bob"])
    box.run(["usermod", "-p", "*", "bob"])  # no password: ssh keys only
    public = as_bob(box, net, "gnocchi-knock", "--keygen").stdout.strip()
    assert re.fullmatch(r"[0-9a-f]{64}", public)
    mode = box.run(["stat", "-c", "%a %U", f"{BOB}/.config/gnocchi"]).stdout.split()
    assert mode == ["700", "bob"]
    # bob's own ssh key for his account on the server (ssh's business, not gnocchi's).
    as_bob(box, net, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{BOB}/.ssh/id_ed25519")
    box.run(
        [
            "install",
            "-o",
            "bob",
            "-m",
            "0600",
            f"{BOB}/.ssh/id_ed25519.pub",
            f"{BOB}/.ssh/authorized_keys",
        ]
    )

    # Without a knock, port 22 is dark.
    dark = ssh(box, net, "-o", "ProxyCommand=none", "-o", "ConnectTimeout=5", check=False)
    assert dark.returncode != 0 and "timed out" in dark.stderr, dark.stderr

    # alice knocks and connects (spending her opening): the verifier now runs, so
    # adding bob must reload it.
    assert alice_connects(box, net) == "SSH"
    before = box.run(["systemctl", "show", "-P", "MainPID", "gnocchi.service"]).stdout
    assert before.strip() != "0"

    # The admin: one command.
    added = box.run(["gnocchi", "add-client", "bob", public, "--host", net.server.ip])
    assert "added [clients.bob]" in added.stderr and "gnocchi.service reloaded" in added.stderr
    # The reload ends the old verifier; the socket starts a new one on the next knock.
    box.run(
        [
            "sh",
            "-c",
            f'for i in $(seq 50); do [ "$(systemctl show -P MainPID '
            f'gnocchi.service)" != {before.strip()} ] && exit 0; sleep 0.2; done; exit 1',
        ]
    )
    printed = blocks(added.stdout)
    files = {
        "append to ~/.config/gnocchi/knock.toml": f"{BOB}/.config/gnocchi/knock.toml",
        "append to ~/.ssh/config": f"{BOB}/.ssh/config",
    }
    assert set(files) <= set(printed), added.stdout
    for what, path in files.items():  # written as printed
        (box.root / path.lstrip("/")).write_text(printed[what])
        box.run(["chown", "bob:bob", path])
        box.run(["chmod", "0600", path])
    server_key = re.search(r"to ~/\.config/gnocchi/(\S+)", printed["the server key"]).group(1)
    box.run(
        [
            "install",
            "-o",
            "bob",
            "-m",
            "0600",
            "/etc/gnocchi/server.key",
            f"{BOB}/.config/gnocchi/{server_key}",
        ]
    )

    # bob logs in with plain ssh: the printed ProxyCommand knocks for him.
    login = ssh(box, net)
    assert login.stdout.strip() == "bob", login.stderr
    ssh_config = as_bob(box, net, "cat", f"{BOB}/.ssh/config").stdout
    assert ssh_config == printed["append to ~/.ssh/config"]

    # The admin removes bob: his knocks open nothing any more; alice still gets in.
    removed = box.run(["gnocchi", "remove-client", "bob"])
    assert "removed [clients.bob]" in removed.stderr and "reloaded" in removed.stderr
    config = (box.root / "etc/gnocchi/gnocchi.toml").read_text()
    assert "[clients.bob]" not in config and "[clients.alice]" in config
    shut_out = ssh(box, net, check=False)
    assert shut_out.returncode != 0 and "no connection to" in shut_out.stderr, (
        shut_out.stderr
        + box.run(
            ["journalctl", "--no-pager", "-n", "60", "-o", "cat", "-u", "gnocchi*"], check=False
        ).stdout
    )
    assert alice_connects(box, net) == "SSH"

"""Onboarding in one line, on a booted systemd, with real ssh and nothing secret moved.

A fresh server with knock protocol v2 only (its private key made with `gnocchi
keygen --private`, `v1 = false`, no v1 key at all), installed from the .debs
and armed. carol, a fresh account with nothing in her home, runs exactly two
gnocchi commands: `gnocchi-knock --keygen` (its output goes to the admin, who
runs `gnocchi add-client carol PUBKEY`), then the one line add-client printed.
Her plain `ssh HOST` then logs in through the ProxyCommand that line wrote,
with /usr/bin/gnocchi-knock's absolute path. A stranger's ssh stays out.

carol's commands run with the container's files and the client namespace's
network (Container.run_in_netns). sshd is Debian's openssh-server, fetched
into the host's apt cache (--download-only) and installed in the container only.
"""

from __future__ import annotations

import re
import shlex
import shutil
import subprocess

import pytest

from systemd_container import installed

pytestmark = pytest.mark.system

CAROL = "/home/carol"


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' '.join(missing)}")


def fetch_sshd() -> None:
    """openssh-server's .debs into the host's apt cache, nothing installed on the host."""
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ("cached lists", "fresh lists"):
        if attempt == "fresh lists":
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, env=env)
        fetched = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--download-only", "openssh-server"],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        if fetched.returncode == 0:
            return
    pytest.skip(f"cannot fetch openssh-server: {fetched.stderr.strip()[-300:]}")


@pytest.fixture(scope="module")
def setup(deb):
    need("systemd-nspawn", "nsenter", "nft", "apt-get")
    fetch_sshd()
    with installed(deb, "ol") as (net, box):
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
        # The admin: a v2 key, no v1 key; the config says so; the first client
        # (root's own, "admin") so that arming finds someone who may knock.
        box.run(["gnocchi", "keygen", "--private", "/etc/gnocchi/private.key"])
        config = box.root / "etc/gnocchi/gnocchi.toml"
        config.write_text(
            'v1 = false\nprivate_key_file = "/etc/gnocchi/private.key"\n' + config.read_text()
        )
        admin = box.run(["gnocchi-knock", "--keygen", "/root/admin/client.key"]).stdout.strip()
        box.run(["gnocchi", "add-client", "admin", admin, "--allow", "22"])
        box.run(["gnocchi", "setup"])
        box.run(["systemctl", "daemon-reload"])
        box.run(["systemctl", "enable", "--now", "gnocchi.socket"])
        assert not (box.root / "etc/gnocchi/server.key").exists()
        yield net, box


def as_carol(box, net, *argv, check=True, timeout=60):
    return box.run_in_netns(
        net.client.name,
        ["runuser", "-u", "carol", "--", "env", f"HOME={CAROL}", *argv],
        check=check,
        timeout=timeout,
    )


def test_a_fresh_account_onboarded_with_two_commands_logs_in_with_plain_ssh(setup):
    net, box = setup
    box.run(["useradd", "--create-home", "--shell", "/bin/sh", "carol"])
    box.run(["usermod", "-p", "*", "carol"])
    # ssh's own business: carol's ssh key for her account on the server.
    as_carol(
        box, net, "ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", f"{CAROL}/.ssh/id_ed25519"
    )
    box.run(
        [
            "install",
            "-o",
            "carol",
            "-m",
            "0600",
            f"{CAROL}/.ssh/id_ed25519.pub",
            f"{CAROL}/.ssh/authorized_keys",
        ]
    )
    ssh = ["ssh", "-o", "BatchMode=yes", "-o", "StrictHostKeyChecking=accept-new"]
    dark = as_carol(
        box, net, *ssh, "-o", "ConnectTimeout=5", net.server.ip, "true", check=False, timeout=120
    )
    assert dark.returncode != 0 and "timed out" in dark.stderr, dark.stderr

    # gnocchi command 1 (carol): her key.
    public = as_carol(box, net, "gnocchi-knock", "--keygen").stdout.strip()
    # The admin, on the server: add her; the output is one line for her to run.
    added = box.run(["gnocchi", "add-client", "carol", public, "--host", net.server.ip])
    commands = [line for line in added.stdout.splitlines() if line and not line.startswith("#")]
    assert len(commands) == 1, added.stdout
    private = (box.root / "etc/gnocchi/private.key").read_text().strip()
    assert private not in added.stdout + added.stderr, "nothing secret leaves the server"
    # gnocchi command 2 (carol): the line, as printed.
    as_carol(box, net, *shlex.split(commands[0]))
    ssh_config = as_carol(box, net, "cat", f"{CAROL}/.ssh/config").stdout
    assert "ProxyCommand /usr/bin/gnocchi-knock --proxy %h %p" in ssh_config

    login = as_carol(box, net, *ssh, net.server.ip, "id", "-un", timeout=120)
    assert login.stdout.strip() == "carol", login.stderr
    entries = box.run(
        [
            "journalctl",
            "--no-pager",
            "-o",
            "cat",
            "-u",
            "gnocchi",
            "GNOCCHI_EVENT=accepted",
            "GNOCCHI_CLIENT=carol",
        ]
    ).stdout
    assert re.search(rf"client carol from {re.escape(net.client.ip)}: open 22/tcp", entries)
    # A stranger (root on the client host, without carol's profile) stays out.
    stranger = box.run_in_netns(
        net.client.name,
        [*ssh, "-o", "ConnectTimeout=5", "-o", "ProxyCommand=none", net.server.ip, "true"],
        check=False,
        timeout=120,
    )
    assert stranger.returncode != 0 and "timed out" in stranger.stderr, stranger.stderr


def test_doctor_self_knocks_a_v2_only_server_with_its_public_key(setup):
    net, box = setup
    proc = box.run(["gnocchi", "doctor", "--self-knock", "/root/admin/client.key"], check=False)
    assert (
        f"ok   a self-knock opens the port once, then it is closed again: admin knocked "
        f"{net.server.ip}; 22/tcp let one connection in, then dropped the next" in proc.stdout
    ), proc.stdout

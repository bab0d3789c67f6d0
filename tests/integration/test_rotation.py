"""Key rotation without a flag day, the whole stack real (table, root helper, verifier
as nobody, gnocchi-knock as the clients run it, `gnocchi rotate-key` as the admin does):

    alice: onboarded before the rotation (the current key only)
    bob:   onboarded during it (his line carries the next key, which he knocks with)

During the overlap both get in, each on its own key's knock port (the verifier listens
on both, the table limits floods on both); once it ends alice's knocks are refused,
with a journal entry naming her and the old key, and bob still gets in.
"""

from __future__ import annotations

import datetime
import os
import pwd
import shlex
import shutil
import subprocess
import tempfile
import time
from pathlib import Path

import pytest

from gnocchi.admin import nft_table
from gnocchi.server import config as server_config
from gnocchi.server import counters
from support import (
    PYTHON,
    REPO,
    EchoServices,
    Helper,
    Net,
    events,
    gnocchi_cli,
    inside,
    load_table,
    stop,
    tcp_connect,
)

OVERLAP_DAYS = 40 / 86400  # 40 s: time enough on a busy machine for both to get in


def cli(*args) -> str:
    out = gnocchi_cli(*args, check=True)
    return out.stdout.strip()


@pytest.fixture
def d():
    d = Path(tempfile.mkdtemp(prefix="gnocchi-rotation-"))
    os.chmod(d, 0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def client(d: Path, name: str) -> tuple[Path, str]:
    home = d / name
    home.mkdir()
    return home, knock(home, "--keygen").stdout.decode().strip()


def knock(home: Path, *args, net: Net | None = None, stdin=b""):
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin", "PYTHONPATH": str(REPO)}
    argv = [PYTHON, "-m", "gnocchi.client.knock", *args]
    return subprocess.run(
        net.client.argv(argv) if net else argv,
        env=env,
        cwd=REPO,
        input=stdin,
        capture_output=True,
        timeout=90,
    )


def line_of(printed: str) -> list[str]:
    return shlex.split(
        next(line for line in printed.splitlines() if line.startswith("gnocchi-knock"))
    )


def test_old_and_new_key_clients_both_get_in_during_the_overlap_and_only_new_after(d):
    cli("keygen", "--private", d / "private.key")
    alice_home, alice = client(d, "alice")
    bob_home, bob = client(d, "bob")
    with Net("rot") as net:
        helper = Helper(net.server, open_seconds=5)
        config = d / "gnocchi.toml"
        (d / "state").mkdir()
        counters.create(str(d / "state"))
        config.write_text(
            f'v1 = false\nprivate_key_file = "{d}/private.key"\n'
            f'state_dir = "{d}/state"\nhelper_socket = "{helper.path}"\n'
            f'[clients.alice]\npublic_key = "{alice}"\nallow = ["22"]\n'
            f'[clients.bob]\npublic_key = "{bob}"\nallow = ["22"]\n'
        )
        host = net.server.ip
        # alice is onboarded before the rotation, bob during it.
        before = cli("rotate-key", "--lines", "--config", config, "--host", host)
        assert knock(alice_home, *line_of(before.split("# bob")[0])[1:]).returncode == 0
        rotated = gnocchi_cli(
            "rotate-key",
            "--config",
            config,
            "--host",
            host,
            "--overlap",
            str(OVERLAP_DAYS),
            "--unit-dir",
            d / "units",
            check=True,
        )
        assert "both keys open knocks until" in rotated.stderr
        assert knock(bob_home, *line_of(rotated.stdout.split("# bob")[1])[1:]).returncode == 0
        cfg = server_config.load(str(config))
        ports = [
            int(line.split("=")[1])
            for line in (d / "units" / "gnocchi.socket.d" / "port.conf").read_text().splitlines()
            if line.startswith("ListenDatagram=") and line != "ListenDatagram="
        ]
        assert len(ports) == 2
        load_table(net.server, d)
        with inside(net.server):
            nft_table.set_knock_port(ports)
        nobody = pwd.getpwnam("nobody")
        for path in (
            d / "state",
            d / "state" / "counters",
            d / "private.key",
            Path(cfg.next_private_key_file),
        ):
            os.chown(path, nobody.pw_uid, nobody.pw_gid)
        shutil.copytree(
            REPO / "gnocchi", d / "gnocchi", ignore=shutil.ignore_patterns("__pycache__")
        )
        log = d / "verifier.log"
        with open(log, "w") as out:
            verifier = net.server.popen(
                [
                    "setpriv",
                    "--reuid=nobody",
                    "--regid=nogroup",
                    "--clear-groups",
                    PYTHON,
                    "-m",
                    "gnocchi.admin",
                    "serve",
                    "--config",
                    str(config),
                    *(a for p in ports for a in ("--listen", f"{host}:{p}")),
                ],
                cwd=d,
                stdout=out,
                stderr=out,
            )
        try:
            with EchoServices(net.server, tcp_ports=(22,)):

                def gets_in(home: Path) -> bool:
                    out = knock(
                        home,
                        "-v",
                        "--attempts",
                        "1",
                        "--connect-timeout",
                        "2",
                        "--proxy",
                        host,
                        "22",
                        net=net,
                        stdin=b"SSH-2.0-hello\r\n",
                    )
                    return out.returncode == 0 and out.stdout == b"SSH-2.0-hello\r\n"

                assert tcp_connect(net.client, host, 22) is None
                assert gets_in(alice_home), log.read_text()  # the current key, its port
                assert tcp_connect(net.client, host, 22) is None  # one connection each
                assert gets_in(bob_home), log.read_text()  # the next key, its port
                accepted = [
                    e for e in events(log.read_text()) if e.get("GNOCCHI_EVENT") == "accepted"
                ]
                assert [e["GNOCCHI_CLIENT"] for e in accepted] == ["alice", "bob"]
                assert datetime.datetime.now(datetime.UTC) < cfg.rotation_ends, (
                    "the machine was too slow for the overlap"
                )

                wait = cfg.rotation_ends - datetime.datetime.now(datetime.UTC)
                time.sleep(max(0.0, wait.total_seconds()) + 1)
                assert not gets_in(alice_home)
                refused = [
                    e
                    for e in events(log.read_text())
                    if e.get("GNOCCHI_EVENT") == "refused" and e.get("GNOCCHI_CLIENT") == "alice"
                ]
                assert refused and "sealed to the old server key" in refused[0]["MESSAGE"]
                assert gets_in(bob_home), log.read_text()
        finally:
            stop(verifier)
            helper.close()

"""The .debs as a Debian admin and lintian see them, and the upgrade from the
single gnocchi-knock package of 0.2 to the split ones, on a booted systemd.

packaging/build-deb makes gnocchi-client (the client: python3 and
python3-nacl only), gnocchi-server (everything else, depending on
gnocchi-client) and gnocchi-knock, now a transitional package depending on
gnocchi-server, so that an admin's `apt upgrade` of a 0.2 server keeps the
server. test_system.py installs the same packages on a booted systemd.
"""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
import time
from pathlib import Path

import pytest

import gnocchi
from support import REPO, Net
from systemd_container import Container


PACKAGES = ("gnocchi-client", "gnocchi-server", "gnocchi-knock")


@pytest.fixture(scope="module")
def debs(deb) -> dict[str, Path]:
    version = deb.name.split("_")[1]
    found = {p: deb.with_name(f"{p}_{version}_all.deb") for p in PACKAGES}
    assert all(path.exists() for path in found.values()), found
    return found


def dpkg_deb(*args) -> str:
    return subprocess.run(
        ["dpkg-deb", *map(str, args)], check=True, capture_output=True, text=True, timeout=60
    ).stdout


def files(deb: Path) -> set[str]:
    return {
        line.split()[-1].lstrip(".")
        for line in dpkg_deb("-c", deb).splitlines()
        if not line.endswith("/")
    }


def test_lintian_finds_no_errors_or_warnings(debs):
    if shutil.which("lintian") is None:
        pytest.skip("needs lintian")
    proc = subprocess.run(
        ["lintian", "--no-tag-display-limit", *map(str, debs.values())],
        capture_output=True,
        text=True,
        timeout=300,
    )
    bad = [line for line in proc.stdout.splitlines() if line[:2] in ("E:", "W:")]
    assert not bad, "\n".join(bad)


def in_checkout(*roles: str) -> set[str]:
    return {
        str(p.relative_to(REPO / "gnocchi"))
        for role in roles
        for p in (REPO / "gnocchi" / role).glob("*.py")
    }


def test_each_role_folder_is_in_its_package_and_stays_private(debs):
    lib = "/usr/lib/gnocchi/gnocchi/"
    modules = {
        p: {f[len(lib) :] for f in files(d) if f.startswith(lib) and f.endswith(".py")}
        for p, d in debs.items()
    }
    assert modules["gnocchi-client"] == in_checkout("shared", "client") | {"__init__.py"}
    assert modules["gnocchi-server"] == in_checkout("server", "admin")
    assert modules["gnocchi-knock"] == set()
    server = files(debs["gnocchi-server"])
    assert "/usr/lib/gnocchi/helper/__main__.py" in server and "/usr/bin/gnocchi" in server
    assert "/usr/bin/gnocchi-knock" in files(debs["gnocchi-client"])
    everything = set().union(*(files(d) for d in debs.values()))
    assert not [f for f in everything if "dist-packages" in f or "site-packages" in f]
    for package, path in debs.items():  # not OpenStack's gnocchi / python3-gnocchi
        assert dpkg_deb("-f", path, "Package").strip() == package


def test_the_client_needs_no_server_dependency_and_the_server_carries_the_config(debs):
    client = dpkg_deb("-f", debs["gnocchi-client"], "Depends")
    assert "python3-nacl" in client
    for package in ("nftables", "python3-nftables", "python3-systemd", "systemd"):
        assert package not in client.replace("python3-nacl", ""), package
    server = dpkg_deb("-f", debs["gnocchi-server"], "Depends")
    version = dpkg_deb("-f", debs["gnocchi-server"], "Version").strip()
    for package in (
        f"gnocchi-client (= {version})",
        "python3-nftables",
        "python3-systemd",
        "nftables",
        "systemd",
    ):
        assert package in server
    assert f"gnocchi-server (= {version})" in dpkg_deb("-f", debs["gnocchi-knock"], "Depends")
    for package in ("gnocchi-client", "gnocchi-server"):  # files move from the old package
        for field in ("Breaks", "Replaces"):
            assert dpkg_deb("-f", debs[package], field).strip() == "gnocchi-knock (<< 0.3.0~)"
    conffiles = subprocess.run(
        f"dpkg-deb --ctrl-tarfile {debs['gnocchi-server']} | tar -xO ./conffiles",
        shell=True,
        check=True,
        capture_output=True,
        text=True,
    ).stdout
    # The rules are the package's own (/usr/share/gnocchi/gnocchi.nft), not a conffile:
    # they change with the package; the admin's ports are [protect] in gnocchi.toml.
    assert conffiles.split() == ["/etc/gnocchi/gnocchi.toml"]
    assert "/usr/share/gnocchi/gnocchi.nft" in files(debs["gnocchi-server"])


# ---- the upgrade from 0.2's single package, on a booted systemd ---------------


@pytest.fixture(scope="module")
def old_deb(tmp_path_factory) -> Path:
    """gnocchi-knock 0.2.0, built by its own packaging/build-deb from this repository's
    history: the tree just before the version became 0.3.0."""
    git = ["git", "-C", str(REPO)]
    found = subprocess.run(
        [
            *git,
            "log",
            "--reverse",
            "--format=%H",
            "-G",
            '^__version__ = "0.3.0"',
            "--",
            "gnocchi/__init__.py",
        ],
        capture_output=True,
        text=True,
    )
    if found.returncode != 0 or not found.stdout.split():
        pytest.skip("needs the git history that holds 0.2.0")
    d = tmp_path_factory.mktemp("old")
    subprocess.run(
        f"git -C {REPO} archive {found.stdout.split()[0]}^ | tar -x -C {d}",
        shell=True,
        check=True,
        timeout=60,
    )
    assert 'version__ = "0.2.0"' in (d / "gnocchi/__init__.py").read_text()
    proc = subprocess.run(
        [str(d / "packaging/build-deb"), str(d / "out")],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    return Path(proc.stdout.split()[-1])


def sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.system
def test_apt_upgrade_from_the_single_package_keeps_the_server_armed(debs, old_deb):
    """An armed 0.2 server, its config edited by the admin, a second port protected in its
    table file, a knock pending: `apt upgrade` (from a local repository holding the new
    packages) brings in gnocchi-server and gnocchi-client; units stay enabled and armed,
    config and keys are kept, the admin's ports stay protected, knocks work; then
    `gnocchi protect`, as `gnocchi check` says, moves the ports into gnocchi.toml."""
    for tool in ("systemd-nspawn", "nsenter", "nft", "dpkg-scanpackages"):
        if shutil.which(tool) is None:
            pytest.skip(f"needs {tool}")
    with Net("up") as net:
        box = Container(net.server.name)
        try:
            box.boot()
            root = box.root / "root"
            shutil.copy(old_deb, root)
            box.run(
                ["apt-get", "install", "-y", "-q", f"./{old_deb.name}"], cwd="/root", timeout=180
            )
            assert "0.2.0" in box.run(["dpkg-query", "-W", "gnocchi-knock"]).stdout

            # An admin's 0.2 server: keys, a client, a comment of theirs, armed.
            box.run(["gnocchi", "keygen", "--server", "/etc/gnocchi/server.key"])
            box.run(["mkdir", "-m", "0700", "/root/alice"])
            public = box.run(["gnocchi", "keygen", "--client", "/root/alice/client.key"]).stdout
            box.run(["install", "-m", "0600", "/etc/gnocchi/server.key", "/root/alice/"])
            config = box.root / "etc/gnocchi/gnocchi.toml"
            config.write_text(
                config.read_text() + "\n# alice's laptop, added by hand\n"
                f'[clients.alice]\npublic_key = "{public.strip()}"\n'
                'allow = ["22/tcp"]\n'
            )
            box.run(["gnocchi", "setup"])
            box.run(["systemctl", "enable", "--now", "gnocchi.socket"])
            box.run(
                [
                    "systemd-run",
                    "--unit=protected-service",
                    "--quiet",
                    "/usr/bin/python3",
                    "-c",
                    LISTENER,
                ]
            )

            def knock_and_connect() -> str:
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
                for _ in range(50):
                    if (
                        f"{net.client.ip} . tcp . 22"
                        in net.server.nft("list", "set", "inet", "gnocchi", "knocked4").stdout
                    ):
                        break
                    time.sleep(0.2)
                return net.client.run(
                    [sys.executable, "-c", CONNECT, net.server.ip], timeout=30
                ).stdout.strip()

            # The admin protects a second port, as 0.2 said: in its table file.
            table = box.root / "etc/gnocchi/gnocchi.nft"
            table.write_text(
                table.read_text().replace("elements = { 22 }", "elements = { 22, 2222 }")
            )
            box.run(["systemctl", "reload", "gnocchi-arm.service"])

            def protected_tcp() -> str:
                return net.server.nft("list", "set", "inet", "gnocchi", "protected_tcp").stdout

            assert "elements = { 22, 2222 }" in protected_tcp()
            assert knock_and_connect() == "hello"
            kept = {
                p: sha(box.root / p)
                for p in (
                    "etc/gnocchi/gnocchi.toml",
                    "etc/gnocchi/server.key",
                    "var/lib/gnocchi/counters",
                )
            }
            verifier = box.run(["systemctl", "show", "-P", "MainPID", "gnocchi.service"]).stdout

            # The admin's apt upgrade, from a repository that now holds the split packages.
            repo = box.root / "srv/gnocchi-repo"  # readable by apt's sandbox user _apt
            repo.mkdir(parents=True)
            repo.chmod(0o755)
            for path in debs.values():
                shutil.copy(path, repo)
            box.run(["sh", "-c", "cd /srv/gnocchi-repo && dpkg-scanpackages . > Packages"])
            sources = box.root / "etc/apt/gnocchi-test.list"
            sources.write_text("deb [trusted=yes] file:/srv/gnocchi-repo ./\n")
            only_ours = [
                "-o",
                "Dir::Etc::SourceList=/etc/apt/gnocchi-test.list",
                "-o",
                "Dir::Etc::SourceParts=-",
            ]
            box.run(["apt-get", "update", "-q", *only_ours], timeout=120)
            # = `apt upgrade`; confold: a conffile the package changed keeps the admin's
            upgrade = box.run(
                [
                    "env",
                    "DEBIAN_FRONTEND=noninteractive",
                    "apt-get",
                    "upgrade",
                    "-y",
                    "-q",
                    "--with-new-pkgs",
                    "-o",
                    "Dpkg::Options::=--force-confold",
                    *only_ours,
                ],
                timeout=300,
            )
            assert "taking over from gnocchi-knock 0.2.0" in upgrade.stdout, upgrade.stdout
            assert "/etc/gnocchi/gnocchi.nft is yours" in upgrade.stdout, upgrade.stdout

            for package in PACKAGES:
                status = box.run(["dpkg-query", "-W", "-f", "${Status} ${Version}", package])
                assert status.stdout == f"install ok installed {gnocchi.__version__}", (
                    package,
                    status.stdout,
                )
            owner = box.run(
                [
                    "dpkg",
                    "-S",
                    "/etc/gnocchi/gnocchi.toml",
                    "/usr/bin/gnocchi",
                    "/usr/bin/gnocchi-knock",
                ]
            ).stdout
            assert "gnocchi-server: /etc/gnocchi/gnocchi.toml" in owner
            assert "gnocchi-server: /usr/bin/gnocchi" in owner
            assert "gnocchi-client: /usr/bin/gnocchi-knock" in owner
            conffiles = box.run(["dpkg-query", "-W", "-f", "${Conffiles}", "gnocchi-server"])
            assert "/etc/gnocchi/gnocchi.toml" in conffiles.stdout
            assert "obsolete" not in conffiles.stdout
            for path, digest in kept.items():
                assert sha(box.root / path) == digest, f"{path} kept as it was"
            for unit, what, want in (
                ("gnocchi.socket", "is-enabled", "enabled"),
                ("gnocchi.socket", "is-active", "active"),
                ("gnocchi-arm.service", "is-active", "active"),
                ("gnocchi-helper.socket", "is-active", "active"),
            ):
                got = box.run(["systemctl", what, unit], check=False).stdout.strip()
                assert got == want, (unit, what, got)
            net.server.nft("list", "table", "inet", "gnocchi")  # still armed
            after = box.run(["systemctl", "show", "-P", "MainPID", "gnocchi.service"]).stdout
            assert after != verifier, "the verifier was restarted to run the new code"
            assert knock_and_connect() == "hello", "a knock still opens the port"
            assert (
                net.client.run(
                    [sys.executable, "-c", CONNECT, net.server.ip], timeout=30
                ).stdout.strip()
                == "timeout"
            ), "once"
            # The admin's second port is still protected, read from 0.2's table file
            # while gnocchi.toml has no [protect]; check names the command that moves it.
            assert "elements = { 22, 2222 }" in protected_tcp()
            check = box.run(["gnocchi", "check"])
            assert (
                "come from /etc/gnocchi/gnocchi.nft (the table file of gnocchi 0.3 and "
                "before" in check.stderr
            ), check.stderr
            assert "fix: gnocchi protect 22/tcp 2222/tcp" in check.stderr, check.stderr
            moved = box.run(["gnocchi", "protect", "22/tcp", "2222/tcp"])
            assert "that file is no longer read: delete it" in moved.stderr, moved.stderr
            assert (
                "[protect]\ntcp = [22, 2222]\nudp = []\n"
                in (box.root / "etc/gnocchi/gnocchi.toml").read_text()
            )
            table.unlink()
            box.run(["gnocchi", "reload"])
            assert "elements = { 22, 2222 }" in protected_tcp()
            assert box.run(["gnocchi", "check"]).stderr == ""
            # Marking gnocchi-server as the admin's lets the transitional package go.
            box.run(["apt-mark", "manual", "gnocchi-server"])
            box.run(["apt-get", "remove", "-y", "-q", "gnocchi-knock"], timeout=180)
            assert (
                box.run(["systemctl", "is-active", "gnocchi.socket"], check=False).stdout.strip()
                == "active"
            )
            net.server.nft("list", "table", "inet", "gnocchi")
        finally:
            box.close()


LISTENER = (
    "import socket\n"
    "s = socket.create_server(('', 22))\n"
    "while True:\n"
    "    c, _ = s.accept()\n"
    "    c.sendall(b'hello\\n')\n"
    "    c.close()\n"
)
CONNECT = (
    "import socket, sys\n"
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], 22), timeout=1.5)\n"
    "    print(c.recv(100).decode().strip())\n"
    "except socket.timeout:\n"
    "    print('timeout')\n"
    "except OSError as e:\n"
    "    print('error', e)\n"
)

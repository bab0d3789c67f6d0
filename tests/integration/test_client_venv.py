"""The client as a user without the Debian packages installs it: `pip install`
of an sdist made from the checkout, into a venv made without system site
packages, with only PyNaCl (and what PyNaCl needs) from the package index
(a stand-in for macOS or a BSD: nothing of Debian's is there). That venv's
gnocchi-knock makes the client key and knocks a real verifier and the real
helper in network namespaces, and the protected port opens.

PyNaCl's wheel, and the build backend pyproject.toml names (setuptools), are
downloaded once into .venv/wheels (beside the test tools tests/run installs)
and installed from there, so the suite stays fast.
"""

from __future__ import annotations

import ast
import shutil
import subprocess
from pathlib import Path

import pytest

from support import (
    PYTHON,
    REPO,
    Daemon,
    EchoServices,
    Helper,
    Keys,
    Net,
    echoes,
    load_table,
    tcp_connect,
    write_config,
)

WHEELS = REPO / ".venv" / "wheels"


def run(argv, **kw) -> subprocess.CompletedProcess:
    proc = subprocess.run([*map(str, argv)], capture_output=True, text=True, timeout=300, **kw)
    assert proc.returncode == 0, f"{argv}: rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
    return proc


@pytest.fixture(scope="module")
def venv(tmp_path_factory) -> Path:
    """A venv, no system site packages, with the checkout's client pip-installed."""
    d = tmp_path_factory.mktemp("client-venv")
    if not (list(WHEELS.glob("[Pp]y[Nn]a[Cc]l-*.whl")) and list(WHEELS.glob("setuptools-*"))):
        WHEELS.mkdir(parents=True, exist_ok=True)
        run(
            [
                PYTHON,
                "-m",
                "pip",
                "download",
                "--quiet",
                "--only-binary=:all:",
                "--dest",
                WHEELS,
                "PyNaCl>=1.5",
                "setuptools>=70.1",
            ]
        )  # 70.1: bdist_wheel without wheel
    # The checkout's files an sdist holds, copied so the build leaves no
    # build/ or *.egg-info in the checkout.
    src = d / "src"
    src.mkdir()
    shutil.copy(REPO / "pyproject.toml", src)
    shutil.copy(REPO / "README.md", src)
    shutil.copytree(REPO / "gnocchi", src / "gnocchi", ignore=shutil.ignore_patterns("__pycache__"))
    # An sdist of them, as a release would ship it: what pip builds from it must be
    # complete (pipx install of the checkout builds the same way, without the tarball).
    code = "from setuptools import build_meta as b; print(b.build_sdist(sys.argv[1]))"
    sdist = (
        d
        / "dist"
        / run([PYTHON, "-c", f"import sys; {code}", d / "dist"], cwd=src).stdout.split()[-1]
    )
    run([PYTHON, "-m", "venv", d / "venv"])
    run([d / "venv/bin/pip", "install", "--quiet", "--no-index", "--find-links", WHEELS, sdist])
    return d / "venv"


def test_the_venv_holds_the_client_and_pynacl_only(venv):
    installed = run([venv / "bin/python", "-m", "pip", "list", "--format=freeze"]).stdout
    names = {line.split("==")[0].lower() for line in installed.split()}
    assert names - {"pip", "setuptools"} == {"gnocchi-knock", "pynacl", "cffi", "pycparser"}
    code = (
        "import gnocchi.client.knock, importlib.util as u, os, sys\n"
        "print(gnocchi.client.knock.__file__)\n"
        "print([m for m in ('nftables', 'systemd') if u.find_spec(m)])\n"
        "print(sorted(os.listdir(os.path.dirname(gnocchi.__file__))))\n"
    )
    out = run([venv / "bin/python", "-c", code], cwd="/").stdout.split("\n")
    assert out[0].startswith(str(venv)) and out[1] == "[]", out
    # The wheel is the client: the shared and client folders, no server or admin code.
    shipped = set(ast.literal_eval(out[2])) - {"__pycache__"}
    assert shipped == {"__init__.py", "shared", "client"}, out[2]
    assert not (venv / "bin" / "gnocchi").exists(), "the server command is the Debian package's"


def test_the_venvs_gnocchi_knock_knocks_a_real_verifier(venv, tmp_path):
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    knock_cmd = str(venv / "bin" / "gnocchi-knock")
    public = run([knock_cmd, "--keygen"], env=env, cwd=home).stdout.strip()
    client_key = home / ".config" / "gnocchi" / "client.key"
    k = Keys(tmp_path)
    with Net("cv") as net:
        load_table(net.server, tmp_path)  # protects tcp 22
        helper = Helper(net.server, peer_user="root")
        services = EchoServices(net.server, tcp_ports=(22,))
        daemon = None
        try:
            config = write_config(
                tmp_path,
                k,
                str(helper.path),
                clients=(f'[clients.laptop]\npublic_key = "{public}"\nallow = ["22/tcp"]\n'),
            )
            daemon = Daemon(
                net, config, f"{net.server.ip}:{k.port}", stderr=tmp_path / "daemon.err"
            )
            assert tcp_connect(net.client, net.server.ip, 22) is None, "closed before the knock"
            run(
                net.client.argv(
                    [
                        knock_cmd,
                        "--server-key-file",
                        k.server_file,
                        "--client-key-file",
                        client_key,
                        net.server.ip,
                    ]
                ),
                env=env,
                cwd=home,
            )
            accepted = daemon.wait_events("accepted", 1)[0]
            assert accepted["GNOCCHI_CLIENT"] == "laptop"
            conn = tcp_connect(net.client, net.server.ip, 22)
            assert conn is not None, "the knock opened the port"
            with conn:
                assert echoes(conn)
        finally:
            if daemon is not None:
                daemon.stop()
            services.close()
            helper.close()

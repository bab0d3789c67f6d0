"""A venv's (or pipx's) gnocchi-knock onboarded with the one line: the ssh block it
writes runs that venv's own gnocchi-knock by its absolute path, so ssh knocks with it
though nothing of gnocchi is on PATH. Run as ssh runs a ProxyCommand (`sh -c`, %h and
%p replaced) in a client namespace, it gets through the real table, helper and
verifier to the service behind. The venv is tests/integration/test_client_venv.py's.
"""

from __future__ import annotations

import re

from gnocchi.shared import onboarding
from integration.test_client_venv import run, venv  # noqa: F401 (venv: the fixture)
from support import Daemon, EchoServices, Helper, Keys, Net, load_table, tcp_connect, write_config


def test_the_line_makes_ssh_knock_with_the_venvs_own_gnocchi_knock(venv, tmp_path):  # noqa: F811
    home = tmp_path / "home"
    home.mkdir()
    env = {"PATH": "/usr/bin:/bin", "HOME": str(home), "LANG": "C.UTF-8"}
    knock_cmd = str(venv / "bin" / "gnocchi-knock")
    public = run([knock_cmd, "--keygen"], env=env, cwd=home).stdout.strip()
    k = Keys(tmp_path)
    with Net("vo") as net:
        line = onboarding.make_line(net.server.ip, k.public2, "open 22")
        run([knock_cmd, "--add", line], env=env, cwd=home)
        ssh_config = (home / ".ssh" / "config").read_text()
        proxy = re.search(r"ProxyCommand (.*)\n", ssh_config).group(1)
        assert proxy == f"{knock_cmd} --proxy %h %p"
        load_table(net.server, tmp_path, knock_port=k.port2)
        helper = Helper(net.server, peer_user="root")
        services = EchoServices(net.server, tcp_ports=(22,))
        daemon = None
        try:
            config = write_config(
                tmp_path,
                k,
                str(helper.path),
                extra=(f'v1 = false\nprivate_key_file = "{k.private_file}"\n'),
                clients=(f'[clients.laptop]\npublic_key = "{public}"\nallow = ["22/tcp"]\n'),
            )
            daemon = Daemon(
                net, config, f"{net.server.ip}:{k.port2}", stderr=tmp_path / "daemon.err"
            )
            assert tcp_connect(net.client, net.server.ip, 22) is None, "closed before the knock"
            command = proxy.replace("%h", net.server.ip).replace("%p", "22")
            relayed = run(
                net.client.argv(["sh", "-c", command]), env=env, cwd="/", input="SSH-2.0-venv\n"
            )
            assert relayed.stdout == "SSH-2.0-venv\n"
            assert daemon.wait_events("accepted", 1)[0]["GNOCCHI_PROTOCOL"] == "2"
        finally:
            if daemon is not None:
                daemon.stop()
            services.close()
            helper.close()

"""`gnocchi check` refuses SYN cookies always on (net.ipv4.tcp_syncookies=2):
a cookie connection starts with an ACK, which the gate does not judge
(docs/firewall.md, "SYN cookies"). The sysctl is per network namespace, so
the check runs in a server namespace of the test's own, for real."""

import os
import shutil

from support import PYTHON, REPO, Net, gnocchi_cli

TABLE = REPO / "nft" / "gnocchi.nft"


def test_syn_cookies_always_on_are_refused_with_the_fix(tmp_path):
    key = tmp_path / "server.key"
    port = int(gnocchi_cli("keygen", "--server", key).stdout)
    client = gnocchi_cli("keygen", "--client", tmp_path / "client.key").stdout.strip()
    config = tmp_path / "gnocchi.toml"
    config.write_text(
        f'server_key_file = "{key}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[clients.alice]\npublic_key = "{client}"\nallow = ["22/tcp"]\n'
    )
    table = tmp_path / "gnocchi.nft"
    shutil.copy(TABLE, table)
    os.chmod(table, 0o644)
    units = tmp_path / "units" / "gnocchi.socket.d"
    units.mkdir(parents=True)
    (units / "port.conf").write_text(f"[Socket]\nListenDatagram=\nListenDatagram={port}\n")
    check = [
        PYTHON,
        "-m",
        "gnocchi.admin",
        "check",
        "--config",
        str(config),
        "--table",
        str(table),
        "--unit-dir",
        str(tmp_path / "units"),
    ]
    with Net("sc") as net:
        assert net.server.run(check, check=False, cwd=REPO).returncode == 0
        net.server.run(["sysctl", "-q", "-w", "net.ipv4.tcp_syncookies=2"])
        proc = net.server.run(check, check=False, cwd=REPO)
        assert proc.returncode == 1
        assert "net.ipv4.tcp_syncookies is 2" in proc.stderr
        assert "fix: sysctl -w net.ipv4.tcp_syncookies=1" in proc.stderr


def test_conntrack_that_does_not_check_tcp_windows_is_warned_about_with_the_fix(tmp_path):
    # With be_liberal=1 one forged ACK completes a handshake and spends a knock.
    key = tmp_path / "server.key"
    port = int(gnocchi_cli("keygen", "--server", key).stdout)
    client = gnocchi_cli("keygen", "--client", tmp_path / "client.key").stdout.strip()
    config = tmp_path / "gnocchi.toml"
    config.write_text(
        f'server_key_file = "{key}"\nstate_dir = "{tmp_path / "state"}"\n'
        f'[clients.alice]\npublic_key = "{client}"\nallow = ["22/tcp"]\n'
    )
    table = tmp_path / "gnocchi.nft"
    shutil.copy(TABLE, table)
    os.chmod(table, 0o644)
    units = tmp_path / "units" / "gnocchi.socket.d"
    units.mkdir(parents=True)
    (units / "port.conf").write_text(f"[Socket]\nListenDatagram=\nListenDatagram={port}\n")
    check = [
        PYTHON,
        "-m",
        "gnocchi.admin",
        "check",
        "--config",
        str(config),
        "--table",
        str(table),
        "--unit-dir",
        str(tmp_path / "units"),
    ]
    with Net("lb") as net:
        net.server.run(["nft", "add", "table", "inet", "t"])  # conntrack's sysctls appear with it
        net.server.run(
            [
                "nft",
                "add",
                "chain",
                "inet",
                "t",
                "c",
                "{ type filter hook input priority 0; ct state new accept; }",
            ]
        )
        assert "be_liberal" not in net.server.run(check, check=False, cwd=REPO).stderr
        net.server.run(["sysctl", "-q", "-w", "net.netfilter.nf_conntrack_tcp_be_liberal=1"])
        proc = net.server.run(check, check=False, cwd=REPO)
        assert proc.returncode == 0  # a warning: arming goes on
        assert "nf_conntrack_tcp_be_liberal is 1" in proc.stderr
        assert "fix: sysctl -w net.netfilter.nf_conntrack_tcp_be_liberal=0" in proc.stderr

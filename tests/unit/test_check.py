"""`gnocchi check` as an admin runs it: a subprocess, exit code, stdout and stderr.

--unit-dir points it at a drop-in directory instead of a running systemd
(tests/system/test_arming.py runs it against a booted one). The table file
is test-loaded into a throwaway user+network namespace, so this needs no
systemd, only nft and unshare (and touches no firewall).
"""

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from support import root_only

REPO = Path(__file__).resolve().parents[2]
TABLE = REPO / "nft" / "gnocchi.nft"
# A check that passes needs the config and table file to be root's.
ROOTS_FILES = root_only("gnocchi check trusts only files root owns, and only root can make them")


def gnocchi(*args):
    return subprocess.run(
        [sys.executable, "-m", "gnocchi.admin", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
    )


class Server:
    """A config, a server key, a table file and a drop-in directory in tmp_path."""

    def __init__(self, tmp: Path):
        if shutil.which("nft") is None or shutil.which("unshare") is None:
            pytest.skip("needs nft and unshare")
        self.tmp = tmp
        self.key = tmp / "server.key"
        self.port = int(gnocchi("keygen", "--server", self.key).stdout)
        self.client = gnocchi("keygen", "--client", tmp / "client.key").stdout.strip()
        self.config = tmp / "gnocchi.toml"
        self.table = tmp / "rules.nft"  # the package's rules (gnocchi.nft beside the
        # config would be 0.3's table file, read for its ports)
        shutil.copy(TABLE, self.table)
        os.chmod(self.table, 0o644)
        self.units = tmp / "units"
        self.write_config()
        self.write_drop_in(self.port)

    def write_config(self, clients=None, extra=""):
        if clients is None:
            clients = f'[clients.alice]\npublic_key = "{self.client}"\nallow = ["22/tcp"]\n'
        self.config.write_text(
            f'server_key_file = "{self.key}"\n'
            f'state_dir = "{self.tmp / "state"}"\n{extra}\n{clients}'
        )
        os.chmod(self.config, 0o644)

    def write_drop_in(self, *ports):
        (self.units / "gnocchi.socket.d").mkdir(parents=True, exist_ok=True)
        lines = "".join(f"ListenDatagram={p}\n" for p in ports)
        (self.units / "gnocchi.socket.d" / "port.conf").write_text(
            f"[Socket]\nListenDatagram=\n{lines}"
        )

    def check(self):
        return gnocchi(
            "check", "--config", self.config, "--table", self.table, "--unit-dir", self.units
        )


@pytest.fixture
def s(tmp_path) -> Server:
    return Server(tmp_path)


def refused(s: Server, *expected: str) -> str:
    proc = s.check()
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert proc.stdout == ""
    for text in expected:
        assert text in proc.stderr, proc.stderr
    assert "gnocchi would not work; nothing was changed" in proc.stderr
    return proc.stderr


@ROOTS_FILES
def test_a_good_setup_passes_and_says_what_it_found(s):
    proc = s.check()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout == (
        f"gnocchi check: ok: {s.config}: 1 client; knock port {s.port}/udp "
        "(gnocchi.socket); protects 22/tcp\n"
        f"  alice: 22/tcp (from {s.config})\n"
    )
    assert proc.stderr == ""
    quiet = gnocchi(
        "check", "--quiet", "--config", s.config, "--table", s.table, "--unit-dir", s.units
    )
    assert quiet.returncode == 0 and quiet.stdout == "" and quiet.stderr == ""


def test_no_drop_in_means_no_knock_port(s):
    shutil.rmtree(s.units)
    refused(
        s,
        f"{s.units}/gnocchi.socket.d/port.conf is missing, so gnocchi.socket has no "
        "knock port; fix: run `gnocchi setup`",
    )


def test_a_drop_in_for_another_key(s):
    s.write_drop_in(s.port + 1 if s.port < 65535 else 2000)
    refused(s, f"but the server key's knock port is {s.port}; fix: run `gnocchi setup`")


def test_a_config_that_does_not_parse_is_named_with_file_and_key(s):
    s.write_config(extra='alow = ["22"]\n')
    refused(s, f"{s.config}: alow: unknown key", "(the verifier would refuse to start)")


def test_no_client(s):
    s.write_config(clients="")
    refused(
        s,
        f"{s.config}: no [clients.NAME] configured: nobody could knock, so arming "
        "would shut everyone out",
    )


def test_no_client_may_open_a_protected_port(s):
    s.write_config(clients=f'[clients.alice]\npublic_key = "{s.client}"\nallow = ["2222/tcp"]\n')
    err = refused(s, "no client may open a protected port (22/tcp)")
    assert "warning: " in err and "2222/tcp is allowed but not protected" in err
    assert "fix: gnocchi protect 2222/tcp" in err


@ROOTS_FILES
def test_an_unprotected_allow_entry_is_a_warning_naming_the_one_command_that_fixes_it(s):
    s.write_config(
        clients=f'[clients.alice]\npublic_key = "{s.client}"\nallow = ["22/tcp", "60001/udp"]\n'
    )
    proc = s.check()
    assert proc.returncode == 0, proc.stderr
    assert (
        "warning: " + f"{s.config}: clients.alice.allow: 60001/udp is allowed but not "
        "protected: it is open to everyone without a knock, and the helper refuses to open "
        "it (a knock asking for it opens nothing); fix: gnocchi protect 60001/udp"
    ) in proc.stderr
    s.write_config(
        clients=f'[clients.alice]\npublic_key = "{s.client}"\nallow = ["22/tcp", "60001/udp"]\n',
        extra="[protect]\ntcp = [22]\nudp = [60001]\n",
    )
    proc = s.check()
    assert proc.returncode == 0 and proc.stderr == "", proc.stderr
    assert proc.stdout.splitlines()[0].endswith("protects 22/tcp, 60001/udp")


def test_a_loose_server_key_is_refused_with_the_fix(s):
    os.chmod(s.key, 0o640)
    refused(s, f"chmod 600 {s.key}")


def test_a_config_others_may_change(s):
    os.chmod(s.config, 0o666)
    refused(s, f"{s.config}: may be changed by others than root", f"chmod go-w {s.config}")


def test_a_table_file_nft_refuses(s):
    s.table.write_text(TABLE.read_text().replace("elements = { 22 }", "elements = { 22 x }"))
    refused(s, f"{s.table}: nft refuses it:", "syntax error")


def test_a_table_file_without_the_knocked_sets(s):
    text = "".join(
        line for line in TABLE.read_text().splitlines(keepends=True) if "@knocked6" not in line
    )  # every rule that names the set
    s.table.write_text(text.replace("set knocked6 {", "set knocked6_old {"))
    refused(s, f"{s.table}: set knocked6 is missing (the helper adds knocks to it)")


def test_a_table_file_that_makes_another_table(s):
    s.table.write_text(TABLE.read_text() + "\ntable ip other {}\n")
    refused(
        s,
        f"{s.table}: must make exactly table inet gnocchi, makes table inet gnocchi, "
        "table ip other",
    )


def test_a_corrupt_counter_store(s):
    (s.tmp / "state").mkdir()
    (s.tmp / "state" / "counters").write_text("not a store\n")
    refused(s, f"{s.tmp / 'state' / 'counters'}", "to recover:")


@ROOTS_FILES
def test_every_problem_is_listed_not_just_the_first(s):
    os.chmod(s.key, 0o644)
    shutil.rmtree(s.units)
    s.table.write_text("table inet gnocchi { oops }\n")
    err = refused(s)
    assert err.count("gnocchi check: ") == 3 + 1, err  # 3 problems and the summary
    assert "3 problems" in err


def test_setup_names_what_check_would_refuse(s):
    """`gnocchi setup` does not say "next, arm" when arming would be refused."""
    s.write_config(clients="")
    out = gnocchi("setup", "--config", s.config, "--unit-dir", s.units).stdout
    assert "not ready to arm yet; `gnocchi check` says:" in out
    assert "no [clients.NAME] configured" in out
    assert "systemctl enable --now gnocchi.socket" in out


@ROOTS_FILES
def test_a_table_file_without_the_flood_limit_is_only_a_warning(s):
    """An old /etc/gnocchi/gnocchi.nft (a conffile the admin edited) still arms."""
    text = TABLE.read_text()
    s.table.write_text(
        text.replace("\t\tmeta l4proto udp udp dport @knock_port jump knock\n", "").replace(
            "set knock_port {", "set knock_port_old {"
        )
    )
    proc = s.check()
    assert proc.returncode == 0, proc.stderr
    assert f"warning: {s.table} has no set knock_port, so a flood from one address" in proc.stderr


def test_a_knock_port_set_of_another_type_is_refused(s):
    s.table.write_text(
        TABLE.read_text()
        .replace("set knock_port {\n\t\ttype inet_service", "set knock_port {\n\t\ttype ipv4_addr")
        .replace("\t\tmeta l4proto udp udp dport @knock_port jump knock\n", "")
    )
    refused(s, f"{s.table}: set knock_port must be of type inet_service")


def test_a_03_table_file_beside_a_config_without_protect_gives_the_ports_and_the_fix(s):
    (s.tmp / "gnocchi.nft").write_text(
        TABLE.read_text().replace("elements = { 22 }", "elements = { 22, 2222 }")
    )
    proc = s.check()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[0].endswith("protects 22/tcp, 2222/tcp")
    assert (
        f"warning: the protected ports (22/tcp, 2222/tcp) come from {s.tmp / 'gnocchi.nft'} "
        "(the table file of gnocchi 0.3 and before"
    ) in proc.stderr
    assert "fix: gnocchi protect 22/tcp 2222/tcp" in proc.stderr
    # Once the config has [protect], the old file is not read: remove it.
    s.write_config(extra="[protect]\ntcp = [22]\n")
    proc = s.check()
    assert proc.returncode == 0 and proc.stdout.splitlines()[0].endswith("protects 22/tcp")
    assert (
        f"is not read any more: the ports are in [protect] in {s.config}; fix: rm " in proc.stderr
    )


def test_the_knock_port_is_never_protected(s):
    s.write_config(extra=f"[protect]\ntcp = [22]\nudp = [{s.port}]\n")
    refused(
        s,
        f"{s.config}: protect.udp: {s.port} is the knock port, so every knock would "
        f"need a knock first; fix: gnocchi unprotect {s.port}/udp",
    )


def test_a_forward_never_listens_on_the_knock_port(s):
    s.write_config(extra=f'[forwards.vm]\nlisten = "{s.port}/udp"\nto = "198.51.100.5:53"\n')
    refused(
        s,
        f"{s.config}: forwards.vm.listen: {s.port}/udp is the knock port, so knocks "
        "would be forwarded; fix: give the forward another listen port",
    )


@ROOTS_FILES
def test_a_forwards_listen_port_is_protected_and_a_client_may_name_it(s):
    s.write_config(
        extra='[forwards.vm]\nlisten = "2222"\nto = "198.51.100.5:22"\n',
        clients=f'[clients.alice]\npublic_key = "{s.client}"\nallow = ["vm"]\n',
    )
    proc = s.check()
    assert proc.returncode == 0, proc.stderr
    assert "protects 22/tcp, 2222/tcp\n" in proc.stdout, proc.stdout
    assert "alice: 2222/tcp" in proc.stdout


def test_a_broken_config_with_a_last_good_copy_says_what_gnocchi_runs(s):
    from gnocchi.admin import last_good

    assert last_good.record(str(s.config))[0]
    s.write_config(extra='alow = ["22"]\n')
    refused(
        s,
        f"{s.config}: alow: unknown key",
        "gnocchi goes on with the last good config, "
        f"{s.tmp / 'gnocchi.last-good.toml'}: this file is not applied until it loads",
    )


@ROOTS_FILES
def test_check_lists_each_client_with_the_file_it_comes_from(s):
    bob = gnocchi("keygen", "--client", s.tmp / "bob.key").stdout.strip()
    drop_ins = s.tmp / "clients.d"
    drop_ins.mkdir(mode=0o755)
    (drop_ins / "bob.toml").write_text(f'[clients.bob]\npublic_key = "{bob}"\nallow = ["22"]\n')
    os.chmod(drop_ins / "bob.toml", 0o644)
    proc = s.check()
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.splitlines()[1:] == [
        f"  alice: 22/tcp (from {s.config})",
        f"  bob: 22/tcp (from {drop_ins / 'bob.toml'})",
    ]
    assert "2 clients" in proc.stdout.splitlines()[0]
    # A broken drop-in is the config's problem, named with its own file and key.
    (drop_ins / "bob.toml").write_text(f'[clients.bob]\npublic_key = "{bob}"\nallow = [22.5]\n')
    refused(s, f"{drop_ins / 'bob.toml'}: clients.bob.allow[0]: 22.5 is not PORT")


def test_a_secret_in_place_of_a_clients_public_key_is_refused_and_named(s):
    """The server key, or a client's private key, pasted as a public key (by hand: add-client
    refuses it) is a secret in a world-readable file: check fails, naming which it is."""
    server_key = s.key.read_text().strip()
    s.write_config(
        clients=f'[clients.alice]\npublic_key = "{s.client}"\nallow = ["22/tcp"]\n'
        f'[clients.bob]\npublic_key = "{server_key}"\nallow = ["22/tcp"]\n'
    )
    refused(
        s,
        f"{s.config}: clients.bob.public_key: it is this server's own secret key",
        "fix: on bob's machine run `gnocchi-knock --pubkey`",
    )
    alice_seed = (s.tmp / "client.key").read_text().strip()
    s.write_config(
        clients=f'[clients.alice]\npublic_key = "{s.client}"\nallow = ["22/tcp"]\n'
        f'[clients.bob]\npublic_key = "{alice_seed}"\nallow = ["22/tcp"]\n'
    )
    refused(
        s,
        f"{s.config}: clients.bob.public_key: it is a PRIVATE key: the one whose public "
        "key is client alice's",
    )
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    seed = next(
        k for k in iter(lambda: os.urandom(32), None) if not crypto_core_ed25519_is_valid_point(k)
    )
    s.write_config(clients=f'[clients.alice]\npublic_key = "{seed.hex()}"\nallow = ["22/tcp"]\n')
    refused(
        s,
        f"{s.config}: clients.alice.public_key: it is not an Ed25519 public key",
        "most likely a secret pasted by mistake",
    )


def test_a_secret_in_place_of_a_public_key_never_stops_a_start_from_arming(s):
    """At a start (boot), refusing to arm would leave the protected ports open to everyone,
    while a key no client holds lets nobody in: arming goes on, and says so."""
    from gnocchi.admin import check

    server_key = s.key.read_text().strip()
    s.write_config(
        clients=f'[clients.alice]\npublic_key = "{s.client}"\nallow = ["22/tcp"]\n'
        f'[clients.bob]\npublic_key = "{server_key}"\nallow = ["22/tcp"]\n'
    )
    report = check.run(str(s.config), str(s.table), str(s.units), last_good=True)
    assert report.ok, report.problems
    assert any(
        "clients.bob.public_key: it is this server's own secret key" in w
        and "armed all the same" in w
        for w in report.warnings
    ), report.warnings

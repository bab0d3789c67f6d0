"""`gnocchi protect` and `gnocchi unprotect` as an admin runs them (the checkout's CLI on
a config in tmp_path; no systemd here, so nothing is reloaded): [protect] edited on the
text, every other byte kept, refusals that change nothing."""

import pytest
from nacl.signing import SigningKey

from gnocchi.admin import protect
from gnocchi.admin.clients import EditError
from gnocchi.server import config
from gnocchi.shared import keys
from gnocchi.shared.protocol import knock_port
from support import gnocchi_cli

ADMIN_TEXT = """\
# my server
server_key_file = "{key}"

[protect]   # what gnocchi guards
tcp = [22]  # ssh
udp = []

[clients.alice]
public_key = "{alice}"
allow = ["22", "60001/udp"]
"""


@pytest.fixture
def server(tmp_path):
    key = keys.new_server_key()
    keys.write_secret(tmp_path / "server.key", key)
    path = tmp_path / "gnocchi.toml"
    alice = bytes(SigningKey.generate().verify_key).hex()
    path.write_text(ADMIN_TEXT.format(key=tmp_path / "server.key", alice=alice))
    return path, key


def run(command, path, *ports):
    return gnocchi_cli(command, "--config", path, *ports)


def test_protect_edits_the_one_line_and_keeps_every_other_byte(server):
    path, _ = server
    before = path.read_text()
    result = run("protect", path, "60001/udp")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == before.replace("udp = []", "udp = [60001]")
    assert "now protects 22/tcp, 60001/udp" in result.stderr
    assert config.load(str(path)).protect == {"tcp": (22,), "udp": (60001,)}
    # The applied config is the last good one (what a broken file later falls back to).
    assert (path.parent / "gnocchi.last-good.toml").read_text() == path.read_text()
    result = run("unprotect", path, "60001/udp")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == before
    assert "60001/udp is open to everyone now" in result.stderr and "alice" in result.stderr


def test_protecting_what_is_protected_changes_nothing(server):
    path, _ = server
    before = path.read_bytes()
    result = run("protect", path, "22")
    assert result.returncode == 0 and "nothing to change" in result.stderr
    assert path.read_bytes() == before


def test_a_config_without_protect_gets_one_with_the_ports_it_had(server):
    path, _ = server
    text = path.read_text().replace(
        "[protect]   # what gnocchi guards\ntcp = [22]  # ssh\nudp = []\n", ""
    )
    path.write_text(text)
    result = run("protect", path, "2222")
    assert result.returncode == 0, result.stderr
    assert path.read_text().startswith(text)
    assert config.load(str(path)).protect == {"tcp": (22, 2222), "udp": ()}
    assert "no client may open 2222/tcp: it is closed to everyone now" in result.stderr


def test_the_knock_port_is_never_protected(server):
    path, key = server
    before = path.read_bytes()
    port = knock_port(key)
    result = run("protect", path, f"{port}/udp")
    assert result.returncode == 1
    assert (
        f"{port}/udp is the knock port: protected, every knock would need a knock" in result.stderr
    )
    assert path.read_bytes() == before


def test_unprotecting_the_last_port_a_client_may_open_is_refused(server):
    path, _ = server
    before = path.read_bytes()
    result = run("unprotect", path, "22")
    assert result.returncode == 1
    assert (
        "no client could open a protected port then (no ports), so nobody could knock in"
        in result.stderr
    )
    assert path.read_bytes() == before


def test_bad_ports_and_a_protect_table_written_otherwise_change_nothing(server):
    path, _ = server
    before = path.read_bytes()
    result = run("protect", path, "22/sctp")
    assert result.returncode == 1 and "'22/sctp' is not PORT, PORT/tcp or PORT/udp" in result.stderr
    path.write_text(path.read_text().replace("tcp = [22]  # ssh", "tcp = [\n  22,\n]"))
    before = path.read_bytes()
    result = run("protect", path, "2222")
    assert result.returncode == 1
    assert "protect.tcp is not one `tcp = [...]` line; edit [protect] by hand" in result.stderr
    assert path.read_bytes() == before


@pytest.mark.parametrize(
    "text, wanted, expected",
    [
        (
            "a = 1\n",
            {"tcp": [22], "udp": []},
            "a = 1\n\n# The ports gnocchi protects (`gnocchi protect`, `gnocchi unprotect`).\n"
            "[protect]\ntcp = [22]\nudp = []\n",
        ),
        (
            "[protect]\ntcp = [22]\n\n[clients.a]\n",
            {"tcp": [22], "udp": [53]},
            "[protect]\ntcp = [22]\nudp = [53]\n\n[clients.a]\n",
        ),
        (
            "[ protect ]  # x\n  udp = [ 1 ]   # y\n",
            {"tcp": [], "udp": [1, 2]},
            "[ protect ]  # x\n  udp = [1, 2]   # y\ntcp = []\n",
        ),
        (
            "[protect]\ntcp = [22]",
            {"tcp": [22, 80], "udp": []},  # no newline at the end
            "[protect]\ntcp = [22, 80]\nudp = []\n",
        ),
    ],
)
def test_the_text_edit(text, wanted, expected):
    assert protect.edited_text(text, wanted) == expected


def test_two_protect_tables_are_left_to_the_admin():
    with pytest.raises(EditError, match=r"\[protect\] appears 2 times"):
        protect.edited_text("[protect]\n[protect]\n", {"tcp": [], "udp": []})


def test_protect_writes_no_forwards_listen_port_into_protect_and_unprotect_says_why(tmp_path):
    from gnocchi.admin import protect
    from gnocchi.server import config as server_config

    path = tmp_path / "gnocchi.toml"
    path.write_text(
        '[protect]\ntcp = [22]\n\n[forwards.vm]\nlisten = "2222"\n'
        'to = "198.51.100.5:22"\n\n[clients.alice]\npublic_key = "'
        + "00" * 32
        + '"\nallow = ["vm"]\n'
    )
    _, warnings = protect.change(str(path), protect.parse_ports(["2222"]), protect=False)
    assert warnings == [
        "2222/tcp is forwards.vm's listen port: it stays protected while that "
        "forward is in the config"
    ]
    cfg, _ = protect.change(str(path), protect.parse_ports(["443"]), protect=True)
    assert server_config.load(str(path)).protect == {"tcp": (22, 443), "udp": ()}

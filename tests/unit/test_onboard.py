"""Onboarding in one line: `gnocchi add-client` on a server with a v2 key prints one
`gnocchi-knock --add 'gnocchi://...'` line, and that line, run as a user runs it,
writes a knock.toml profile and a ~/.ssh/config block that knock the server. The
line carries nothing secret and is checked part by part (gnocchi.shared.onboarding).
"""

import hashlib
import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from gnocchi.client import profile
from gnocchi.shared import keys, onboarding, protocol

REPO = Path(__file__).resolve().parents[2]


def fixed_public_key(name: bytes) -> bytes:
    """A server public key made from name, the same on every run (test ids name it, and
    pytest-xdist's workers must collect the same tests), with a knock port above 1024."""
    for i in range(100):
        public = protocol.public_key(hashlib.sha256(name + bytes([i])).digest())
        if protocol.knock_port(public) > keys.LOWEST_KNOCK_PORT:
            return public
    raise AssertionError("no key")


PUBLIC = fixed_public_key(b"onboard")


def gnocchi(*args, **kw):
    return subprocess.run(
        [sys.executable, "-m", "gnocchi.admin", *map(str, args)],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=60,
        **kw,
    )


def knock(home: Path, *args):
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env["HOME"] = str(home)
    return subprocess.run(
        [sys.executable, "-m", "gnocchi.client.knock", *map(str, args)],
        cwd=REPO,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize(
    "host, request_text, shown",
    [
        ("server.example.org", "open 22/tcp", "server.example.org"),
        ("203.0.113.7", "", "203.0.113.7"),
        ("2001:db8::7", "open 22 60001/udp", "[2001:db8::7]"),
        ("2001:0db8:0::7", "run motd", "[2001:db8::7]"),
    ],
)
def test_a_line_carries_host_port_key_fingerprint_and_request(host, request_text, shown):
    line = onboarding.make_line(host, PUBLIC, request_text)
    assert line.startswith(
        f"gnocchi://{shown}:{protocol.knock_port(PUBLIC)}/{PUBLIC.hex()}?"
        f"fp={keys.fingerprint(PUBLIC)}"
    )
    assert re.fullmatch(r"[A-Za-z0-9:/?=&%.\[\]-]+", line), "nothing a shell or a paste mangles"
    parsed = onboarding.parse(line)
    assert parsed == onboarding.Onboarding(
        shown.strip("[]"), protocol.knock_port(PUBLIC), PUBLIC, request_text, None
    )


GOOD = onboarding.make_line("h.example", PUBLIC, "open 22")
OTHER = fixed_public_key(b"other")


@pytest.mark.parametrize(
    "line, words",
    [
        (GOOD.replace("gnocchi://", "http://"), "not a gnocchi:// line"),
        (GOOD.replace("fp=", "fp=0"), "the fingerprint is not the key's"),
        (GOOD.replace(PUBLIC.hex(), OTHER.hex()), "the fingerprint is not the key's"),
        (GOOD.replace(f":{protocol.knock_port(PUBLIC)}/", ":1234/"), "knock port 1234 is not"),
        (GOOD.replace(PUBLIC.hex(), PUBLIC.hex()[:-1]), "the server public key: expected"),
        (GOOD.replace("open%2022", "open%2022%2022"), "22/tcp named twice"),
        (GOOD + "&sign_ip=1.2.3.4", "unknown or repeated parts"),
        (GOOD + "&fp=x", "unknown or repeated parts"),
        (GOOD.replace("h.example", "h.example%0A"), "is not a host name or address"),
        (GOOD.replace("h.example", 'h"x'), "is not a host name or address"),
        (GOOD.replace("gnocchi://", "gnocchi://user@"), "not a gnocchi:// line"),
        (GOOD.replace(":" + str(protocol.knock_port(PUBLIC)), ":99999"), "cannot be read"),
        (GOOD + "&next=abc", "the next key: expected"),
    ],
)
def test_a_damaged_or_hostile_line_is_refused_saying_what_is_wrong(line, words):
    with pytest.raises(ValueError, match=re.escape(words)):
        onboarding.parse(line)


# ---- the admin's command prints it; the user's command writes the files -----------------


@pytest.fixture
def server(tmp_path):
    """A config with a v1 key and a v2 key, no clients yet."""
    assert gnocchi("keygen", "--server", tmp_path / "server.key").returncode == 0
    assert gnocchi("keygen", "--private", tmp_path / "private.key").returncode == 0
    path = tmp_path / "gnocchi.toml"
    path.write_text(
        f'server_key_file = "{tmp_path / "server.key"}"\n'
        f'private_key_file = "{tmp_path / "private.key"}"\n'
        f'state_dir = "{tmp_path}"\n'
    )
    return path


def test_add_client_prints_one_line_and_nothing_secret(server, tmp_path):
    home = tmp_path / "home"
    public = knock(home, "--keygen").stdout.strip()
    out = gnocchi("add-client", "bob", public, "--config", server, "--host", "srv.example.org")
    assert out.returncode == 0, out.stderr
    commands = [line for line in out.stdout.splitlines() if not line.startswith("#")]
    assert len(commands) == 1 and commands[0].startswith("gnocchi-knock --add 'gnocchi://")
    private = (tmp_path / "private.key").read_text().strip()
    v1_key = (tmp_path / "server.key").read_text().strip()
    assert private not in out.stdout + out.stderr and v1_key not in out.stdout + out.stderr
    server_public = protocol.public_key(bytes.fromhex(private))
    parsed = onboarding.parse(shlex.split(commands[0])[2])
    assert (parsed.host, parsed.public, parsed.request) == (
        "srv.example.org",
        server_public,
        "open 22/tcp",
    )
    assert keys.fingerprint(server_public) in out.stdout


def onboard(server, home: Path, host="srv.example.org", allow="22"):
    public = knock(home, "--keygen").stdout.strip()
    out = gnocchi("add-client", "bob", public, "--config", server, "--host", host, "--allow", allow)
    line = shlex.split(next(c for c in out.stdout.splitlines() if c.startswith("gnocchi-knock")))
    return line[2], knock(home, *line[1:])


def test_the_line_writes_a_profile_and_an_ssh_block_that_knock(server, tmp_path):
    home = tmp_path / "home"
    line, added = onboard(server, home)
    assert added.returncode == 0, added.stderr
    config = home / ".config" / "gnocchi" / "knock.toml"
    profiles, _ = profile.load(config)
    bob = profile.select(profiles, None, config, None, "srv.example.org")
    assert bob.server_public_key == onboarding.parse(line).public
    assert bob.client_key_file == config.parent / "client.key" and bob.request == "open 22/tcp"
    ssh = (home / ".ssh" / "config").read_text()
    assert re.fullmatch(r"Host srv\.example\.org\n    ProxyCommand (.*) --proxy %h %p\n", ssh)
    assert oct((home / ".ssh").stat().st_mode)[-3:] == "700"
    # The ProxyCommand is this very program, wherever it was started from: run as ssh runs
    # it (its shell, the tokens replaced), it knocks; nobody answers here, so it gives up.
    proxy = (
        ssh.split("ProxyCommand ", 1)[1]
        .strip()
        .replace("%h", "srv.example.org")
        .replace("%p", "22")
        .replace("%%", "%")
    )
    ran = subprocess.run(
        ["sh", "-c", proxy.replace(" --proxy", " --attempts 1 --connect-timeout 0.1 -v --proxy")],
        cwd="/",
        env={"HOME": str(home), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert "(v2, server public key" in ran.stderr or "does not resolve" in ran.stderr, ran.stderr


def test_the_same_line_again_replaces_the_profile_and_keeps_everything_else(server, tmp_path):
    home = tmp_path / "home"
    config = home / ".config" / "gnocchi" / "knock.toml"
    config.parent.mkdir(parents=True)
    mine = '# my own notes\n[profiles.work]\nhost = "w.example"\nserver_key_file = "w.key"\n'
    config.write_text(mine)
    line, added = onboard(server, home)
    assert added.returncode == 0, added.stderr
    after_first = config.read_text()
    assert after_first.startswith(mine)
    again = knock(home, "--add", line)
    assert again.returncode == 0 and "has `Host srv.example.org` already" in again.stderr
    assert config.read_text() == after_first
    assert (home / ".ssh" / "config").read_text().count("Host srv.example.org") == 1


def test_nothing_is_written_without_a_client_key_or_with_a_broken_profile_file(server, tmp_path):
    home = tmp_path / "home"
    line = onboarding.make_line("srv.example.org", PUBLIC, "open 22")
    no_key = knock(home, "--add", line)
    assert no_key.returncode == 1 and "make your key first: gnocchi-knock --keygen" in no_key.stderr
    assert not (home / ".config" / "gnocchi" / "knock.toml").exists()
    assert not (home / ".ssh").exists()
    knock(home, "--keygen")
    config = home / ".config" / "gnocchi" / "knock.toml"
    config.write_text("[profiles.work\n")
    broken = knock(home, "--add", line)
    assert broken.returncode == 1 and "not valid TOML" in broken.stderr
    assert config.read_text() == "[profiles.work\n" and not (home / ".ssh").exists()


@pytest.mark.parametrize("host", ["fe80::1%x *", "fe80::1%x !a", 'fe80::1%"x'])
def test_a_hostile_lines_host_never_becomes_an_ssh_pattern_for_other_hosts(tmp_path, host):
    # An IPv6 zone (RFC 6874) may hold any byte but a newline, spaces and `*` too:
    # `Host fe80::1%x *` would send every ssh connection of the user's through
    # gnocchi-knock, which then finds no profile and fails. The line is refused
    # whole, and nothing is written.
    home = tmp_path / "home"
    knock(home, "--keygen")
    line = GOOD.replace("h.example", f"[{host}]")
    added = knock(home, "--add", line)
    assert added.returncode == 1 and "is not a host name or address" in added.stderr
    assert not (home / ".ssh").exists()
    assert not (home / ".config" / "gnocchi" / "knock.toml").exists()
    with pytest.raises(ValueError, match="is not a host name or address"):
        onboarding.make_line(host, PUBLIC)


def test_a_v1_only_server_prints_the_v1_blocks_as_before(tmp_path):
    assert gnocchi("keygen", "--server", tmp_path / "server.key").returncode == 0
    path = tmp_path / "gnocchi.toml"
    path.write_text(f'server_key_file = "{tmp_path / "server.key"}"\nstate_dir = "{tmp_path}"\n')
    out = gnocchi(
        "add-client", "bob", keys.public_of(os.urandom(32)).hex(), "--config", path, "--host", "h"
    )
    assert out.returncode == 0 and "gnocchi-knock --add" not in out.stdout
    assert "# ---- client bob: append to ~/.ssh/config ----" in out.stdout

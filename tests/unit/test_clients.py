"""`gnocchi add-client` and `gnocchi remove-client` as an admin runs them (the
checkout's CLI, as root, on a config in tmp_path; no systemd here, so nothing
is reloaded): text-level edits that keep every other byte, refusals that
change nothing, and printed client files that gnocchi-knock's own profile
loader reads."""

import os
import re
import stat
import tomllib

import pytest
from nacl.signing import SigningKey

from gnocchi.server import config
from gnocchi.shared import keys
from gnocchi.client import profile
from support import gnocchi_cli, root_only

ADMIN_TEXT = """\
# my server; keep these comments
server_key_file = "{key}"

[clients.alice]   # the laptop
public_key = "{alice}"
allow = [
    "22",         # ssh
]

# bob's phone, added in May
[clients.bob]
public_key = "{bob}"
allow = ["2222/tcp"]

[actions.motd]
argv = ["/bin/true"]
"""


def public() -> str:
    return bytes(SigningKey.generate().verify_key).hex()


@pytest.fixture
def server(tmp_path):
    """(config path, server key) for a config as an admin wrote it."""
    key = keys.new_server_key()
    keys.write_secret(tmp_path / "server.key", key)
    path = tmp_path / "gnocchi.toml"
    path.write_text(ADMIN_TEXT.format(key=tmp_path / "server.key", alice=public(), bob=public()))
    return path, key


def add(path, *args):
    return gnocchi_cli("add-client", "--config", path, *args)


def remove(path, name):
    return gnocchi_cli("remove-client", "--config", path, name)


def blocks(out: str) -> dict[str, str]:
    """The printed output split at its '# ---- client NAME: ... ----' lines."""
    parts = re.split(r"^# ---- client \S+: (.*) ----\n", out, flags=re.MULTILINE)
    return dict(zip(parts[1::2], parts[2::2], strict=True))


def test_add_appends_one_table_and_prints_a_profile_gnocchi_knock_reads(server, tmp_path):
    path, server_key = server
    before = path.read_text()
    carol = public()
    result = add(path, "carol", carol, "--allow", "22", "60001/udp", "--host", "srv.example.org")
    assert result.returncode == 0, result.stderr
    assert path.read_text() == before + (
        f'\n[clients.carol]\npublic_key = "{carol}"\nallow = ["22/tcp", "60001/udp"]\n'
    )
    cfg = config.load(str(path))
    assert [c.name for c in cfg.clients] == ["alice", "bob", "carol"]
    assert "added [clients.carol]" in result.stderr
    # The config protects the default (22/tcp) alone: 60001/udp stays open to anyone.
    assert (
        "warning: clients.carol.allow: 60001/udp is allowed but not protected: it is open "
        "to everyone without a knock, and the helper refuses to open it (a knock asking for "
        "it opens nothing); fix: gnocchi protect 60001/udp"
    ) in result.stderr
    assert "22/tcp is allowed but not protected" not in result.stderr

    printed = blocks(result.stdout)
    fingerprint = keys.fingerprint(server_key)
    home = tmp_path / "home" / ".config" / "gnocchi"
    home.mkdir(parents=True)
    (home / "knock.toml").write_text(printed["append to ~/.config/gnocchi/knock.toml"])
    profiles, _ = profile.load(home / "knock.toml")
    chosen = profile.select(profiles, None, home / "knock.toml", None, "srv.example.org")
    # One knock opens every port the admin allowed, as --allow listed them.
    assert chosen.host == "srv.example.org" and chosen.request == "open 22/tcp 60001/udp"
    assert chosen.server_key_file == home / "srv.example.org.server.key"
    assert chosen.client_key_file == home / "client.key"  # where gnocchi-knock --keygen puts it
    assert fingerprint in printed["append to ~/.config/gnocchi/knock.toml"]
    ssh = printed["append to ~/.ssh/config"]
    assert ssh == "Host srv.example.org\n    ProxyCommand gnocchi-knock --proxy %h %p\n"
    how = printed["the server key"]
    assert f"Copy {tmp_path / 'server.key'}" in how and fingerprint in how
    assert server_key.hex() not in result.stdout + result.stderr, "never the secret itself"


def test_add_then_remove_gives_back_the_same_bytes(server):
    path, _ = server
    before = path.read_bytes()
    assert add(path, "carol", public(), "--host", "h").returncode == 0
    result = remove(path, "carol")
    assert result.returncode == 0, result.stderr
    assert "removed [clients.carol]" in result.stderr
    assert path.read_bytes() == before


def test_remove_takes_exactly_that_table_and_keeps_comments_about_the_next(server):
    path, _ = server
    before = path.read_text()
    assert remove(path, "alice").returncode == 0
    after = path.read_text()
    start = before.index("[clients.alice]")
    end = before.index("# bob's phone")
    assert after == before[: start - 1] + before[end - 1 :]
    assert [c.name for c in config.load(str(path)).clients] == ["bob"]
    assert "# bob's phone, added in May\n[clients.bob]" in after


def test_a_file_without_a_final_newline_gets_one_before_the_table(server):
    path, _ = server
    path.write_text(path.read_text().rstrip("\n"))
    assert add(path, "carol", public(), "--host", "h").returncode == 0
    assert tomllib.loads(path.read_text())["actions"]["motd"]["argv"] == ["/bin/true"]
    assert config.load(str(path)).clients[-1].name == "carol"


@pytest.mark.parametrize(
    "args, words",
    [
        (["bob", "PUB"], "there is already a client bob; gnocchi remove-client bob first"),
        (["carol", "ALICE"], "this key is already client alice's"),
        (["carol", "0abb"], "PUBKEY: expected a public key of 64 hex characters"),
        (["bad/name", "PUB"], "client name 'bad/name': use letters, digits"),
        (
            ["carol", "PUB", "--allow", "22/sctp"],
            "--allow '22/sctp' is not PORT, PORT/tcp or PORT/udp",
        ),
    ],
)
def test_refusals_name_the_problem_and_change_nothing(server, args, words):
    path, _ = server
    before = path.read_bytes()
    alice = config.load(str(path)).clients[0].public_key.hex()
    args = [{"PUB": public(), "ALICE": alice.upper()}.get(a, a) for a in args]
    result = add(path, *args, "--host", "h")
    assert result.returncode != 0 and result.stdout == ""
    assert words in result.stderr
    assert path.read_bytes() == before
    assert not path.with_name("gnocchi.toml.tmp").exists()


def test_a_broken_config_is_named_and_left_alone(server):
    path, _ = server
    path.write_text(path.read_text().replace('allow = ["2222/tcp"]', 'allow = ["22/sctp"]'))
    before = path.read_bytes()
    for result in (add(path, "carol", public(), "--host", "h"), remove(path, "alice")):
        assert result.returncode == 1
        assert f"{path}: clients.bob.allow[0]: '22/sctp' is not PORT" in result.stderr
        assert path.read_bytes() == before


def test_remove_of_an_unknown_client_lists_the_known_ones(server):
    path, _ = server
    result = remove(path, "carol")
    assert result.returncode == 1 and "no client carol (clients: alice, bob)" in result.stderr


def test_a_client_written_another_way_is_left_to_the_admin(server):
    """A client given as dotted keys has no [clients.NAME] header to remove: refused."""
    path, _ = server
    text = path.read_text() + f'\n[clients]\ndan.public_key = "{public()}"\n'
    path.write_text(text)
    result = remove(path, "dan")
    assert result.returncode == 1
    assert "no [clients.dan] table header in the file; edit it by hand" in result.stderr
    assert path.read_text() == text


@root_only("the config is given to root and another group first")
def test_the_new_file_keeps_owner_and_mode(server):
    path, _ = server
    os.chown(path, 0, 4242)
    os.chmod(path, 0o640)
    assert add(path, "carol", public(), "--host", "h").returncode == 0
    st = os.stat(path)
    assert (st.st_uid, st.st_gid, stat.S_IMODE(st.st_mode)) == (0, 4242, 0o640)


def test_the_command_is_listed():
    usage = gnocchi_cli("--help").stdout
    assert "add-client" in usage and "remove-client" in usage


def test_a_client_name_with_a_dot_is_added_and_removed(tmp_path):
    # A name the config allows (letters, digits, _ . -) may hold a dot, which a
    # bare TOML key would read as a table inside a table ([clients.web.01] is
    # "01" in "web"): the edit must quote it, and removing it must too.
    keys.write_secret(tmp_path / "server.key", keys.new_server_key())
    path = tmp_path / "gnocchi.toml"
    path.write_text(f'server_key_file = "{tmp_path / "server.key"}"\n')
    before = path.read_bytes()
    public = bytes(SigningKey.generate().verify_key).hex()
    added = gnocchi_cli("add-client", "--config", path, "--host", "h", "web.01", public)
    assert added.returncode == 0, added.stderr
    assert [c.name for c in config.load(str(path)).clients] == ["web.01"]
    profile = added.stdout.split("# ---- client web.01: append to ~/.ssh/config ----")[0]
    assert tomllib.loads(profile)["profiles"]["h"]["host"] == "h"
    removed = gnocchi_cli("remove-client", "--config", path, "web.01")
    assert removed.returncode == 0, removed.stderr
    assert path.read_bytes() == before


# ---- --drop-in: one file per client, clients.d/NAME.toml --------------------------


def test_add_drop_in_writes_one_file_and_remove_deletes_it_leaving_the_config_alone(server):
    path, _ = server
    before = path.read_bytes()
    carol = public()
    result = add(path, "carol", carol, "--drop-in", "--allow", "22", "--host", "h")
    assert result.returncode == 0, result.stderr
    drop_in = path.parent / "clients.d" / "carol.toml"
    assert f"added [clients.carol] to {drop_in}" in result.stderr
    assert drop_in.read_text() == f'[clients.carol]\npublic_key = "{carol}"\nallow = ["22/tcp"]\n'
    assert stat.S_IMODE(drop_in.stat().st_mode) == 0o644
    assert stat.S_IMODE(drop_in.parent.stat().st_mode) == 0o755
    assert path.read_bytes() == before
    cfg = config.load(str(path))
    assert [(c.name, c.file) for c in cfg.clients][-1] == ("carol", str(drop_in))
    assert "append to ~/.config/gnocchi/knock.toml" in blocks(result.stdout)
    # Adding a second one and removing both: remove-client finds the file by itself.
    assert add(path, "web.01", public(), "--drop-in", "--host", "h").returncode == 0
    assert [c.name for c in config.load(str(path)).clients][-2:] == ["carol", "web.01"]
    for name in ("carol", "web.01"):
        result = remove(path, name)
        assert result.returncode == 0, result.stderr
        assert f"removed {path.parent / 'clients.d' / name}.toml" in result.stderr
    assert list((path.parent / "clients.d").iterdir()) == []
    assert path.read_bytes() == before


def test_a_drop_in_name_or_key_is_refused_naming_the_drop_in(server):
    path, _ = server
    carol = public()
    assert add(path, "carol", carol, "--drop-in", "--host", "h").returncode == 0
    drop_in = path.parent / "clients.d" / "carol.toml"
    for args, words in (
        (["carol", public()], f"{drop_in}: there is already a client carol"),
        (["dave", carol], f"{drop_in}: this key is already client carol's"),
    ):
        for where in ([], ["--drop-in"]):
            result = add(path, *args, *where, "--host", "h")
            assert result.returncode == 1 and words in result.stderr, result.stderr
    assert sorted(p.name for p in drop_in.parent.iterdir()) == ["carol.toml"]
    # A client of the config itself is not a drop-in's to remove.
    before = path.read_bytes()
    result = gnocchi_cli("remove-client", "--config", path, "--drop-in", "alice")
    assert result.returncode == 1
    assert (
        f"client alice is in {path}, not in a drop-in; gnocchi remove-client alice "
        "(without --drop-in) removes it"
    ) in result.stderr
    assert path.read_bytes() == before


def test_add_drop_in_leaves_nothing_when_the_drop_ins_are_not_trusted(server):
    path, _ = server
    (path.parent / "clients.d").mkdir(mode=0o777)
    (path.parent / "clients.d").chmod(0o777)
    result = add(path, "carol", public(), "--drop-in", "--host", "h")
    assert result.returncode == 1
    assert "is writable by group or others" in result.stderr
    assert list((path.parent / "clients.d").iterdir()) == []


def not_a_point() -> bytes:
    """32 random bytes that are no Ed25519 public key: what 15 in 16 private keys are."""
    from nacl.bindings import crypto_core_ed25519_is_valid_point

    while True:
        candidate = os.urandom(32)
        if not crypto_core_ed25519_is_valid_point(candidate):
            return candidate


@pytest.mark.parametrize(
    "pasted, words",
    [
        ("SERVER_KEY", "PUBKEY: it is this server's own secret key"),
        (
            "CAROLS_PRIVATE_KEY",
            "PUBKEY: it is a PRIVATE key: the one whose public key is client carol's",
        ),
        (
            "NOT_A_POINT",
            "PUBKEY: it is not an Ed25519 public key (not a point of the curve's group",
        ),
    ],
)
def test_a_secret_given_as_the_public_key_is_refused_and_never_written(server, pasted, words):
    path, server_key = server
    carol = os.urandom(32)
    assert add(path, "carol", keys.public_of(carol).hex(), "--host", "h").returncode == 0
    before = path.read_bytes()
    secret = {"SERVER_KEY": server_key, "CAROLS_PRIVATE_KEY": carol, "NOT_A_POINT": not_a_point()}[
        pasted
    ]
    result = add(path, "dave", secret.hex(), "--host", "h")
    assert result.returncode == 1 and result.stdout == ""
    assert words in result.stderr and "nothing was written" in result.stderr
    assert "fix: on dave's machine run `gnocchi-knock --pubkey`" in result.stderr
    assert path.read_bytes() == before
    assert secret.hex() not in path.read_text().lower()


def test_add_client_may_allow_a_forward_by_its_name(tmp_path):
    from gnocchi.admin import clients
    from gnocchi.server import config as server_config

    path = tmp_path / "gnocchi.toml"
    path.write_text('[forwards.vm-ssh]\nlisten = "2222"\nto = "198.51.100.5:22"\n')
    with pytest.raises(
        clients.EditError,
        match=r"--allow 'vm' is not PORT, PORT/tcp or "
        r"PORT/udp nor a forward \(vm-ssh\)",
    ):
        clients.add(
            str(path),
            "alice",
            "0abb31e99e8341f0a2195b9db07a819684e80e6cfbfe8626ab010828ac14f27f",
            ["22", "vm"],
        )
    text = clients.added_text(path.read_text(), "alice", "00" * 32, ["22/tcp", "vm-ssh"])
    path.write_text(text)
    (alice,) = server_config.load(str(path)).clients
    assert [(o.port, o.proto) for o in alice.allow] == [(22, "tcp"), (2222, "tcp")]

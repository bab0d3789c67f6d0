"""gnocchi.server.config: the contract's example loads, defaults, and every error
names the file and the key."""

import datetime
import ipaddress

import pytest

from gnocchi.server import config
from gnocchi.shared import knock_request
from gnocchi.server.config import Action
from support import REPO

KEY_A = "0abb31e99e8341f0a2195b9db07a819684e80e6cfbfe8626ab010828ac14f27f"


def load_text(tmp_path, text: str) -> config.Config:
    path = tmp_path / "gnocchi.toml"
    path.write_text(text)
    return config.load(str(path))


def test_the_contract_example_and_the_packaged_example_load(tmp_path):
    cfg = load_text(
        tmp_path,
        f"""
server_key_file = "/etc/gnocchi/server.key"
state_dir = "/var/lib/gnocchi"
helper_socket = "/run/gnocchi/helper.sock"

[clients.alice]
public_key = "{KEY_A}"
allow = ["22/tcp", "60001/udp"]
default = "open 22"
actions = ["motd"]

[actions.motd]
argv = ["/usr/local/bin/set-motd"]
timeout = 10
""",
    )
    alice = cfg.clients[0]
    assert alice.name == "alice" and alice.public_key == bytes.fromhex(KEY_A)
    assert alice.allow == (knock_request.Open(22, "tcp"), knock_request.Open(60001, "udp"))
    assert alice.default == knock_request.Open(22, "tcp") and alice.actions == ("motd",)
    assert cfg.action("motd") == Action("motd", ("/usr/local/bin/set-motd",), 10.0)
    assert cfg.server_addresses == ()
    packaged = config.load(str(REPO / "packaging" / "gnocchi.toml"))
    assert packaged.state_dir == "/var/lib/gnocchi" and packaged.clients == ()


def test_defaults(tmp_path):
    cfg = load_text(tmp_path, f'[clients.bob]\npublic_key = "{KEY_A}"\nallow = [443, "53/udp"]\n')
    assert (cfg.server_key_file, cfg.state_dir, cfg.helper_socket) == (
        "/etc/gnocchi/server.key",
        "/var/lib/gnocchi",
        "/run/gnocchi/helper.sock",
    )
    assert cfg.clients[0].default == knock_request.Open(443, "tcp")
    cfg = load_text(tmp_path, f'[clients.bob]\npublic_key = "{KEY_A}"\n')
    assert cfg.clients[0].default is None and cfg.clients[0].allow == ()


def test_server_addresses_of_both_families_and_the_knock_versions(tmp_path):
    path = tmp_path / "gnocchi.toml"
    path.write_text('server_addresses = ["203.0.113.7", "2001:db8::7"]\n')
    cfg = config.load(str(path))
    assert [str(a) for a in cfg.server_addresses] == ["203.0.113.7", "2001:db8::7"]
    assert (cfg.v1, cfg.private_key_file) == (True, None)
    path.write_text('v1 = false\nprivate_key_file = "/etc/gnocchi/private.key"\n')
    cfg = config.load(str(path))
    assert (cfg.v1, cfg.private_key_file) == (False, "/etc/gnocchi/private.key")


CLIENT = f'[clients.alice]\npublic_key = "{KEY_A}"\n'
BAD_CONFIGS = [
    ('server_kee_file = "/x"\n', "server_kee_file: unknown key"),
    ('state_dir = "relative"\n', "state_dir: 'relative' is not an absolute path"),
    ("helper_socket = 3\n", "helper_socket: must be a non-empty string, not an integer"),
    (
        'server_addresses = ["2001:db8::7", "203.0.113"]\n',
        "server_addresses[1]: '203.0.113' is not an IP address",
    ),
    ('v1 = "no"\n', "v1: must be true or false, not a string"),
    ("v1 = false\n", "v1: is false, but there is no private_key_file: no knock could get in"),
    ('private_key_file = "private.key"\n', "private_key_file: 'private.key' is not an absolute"),
    ('server_addresses = "1.2.3.4"\n', "server_addresses: must be a list of strings"),
    ("clients = 3\n", "clients: must be a table of named tables"),
    ('[clients.alice]\nallow = ["22"]\n', "clients.alice.public_key: missing (required)"),
    ('[clients.alice]\npublic_key = "abc"\n', "clients.alice.public_key: expected a public key"),
    (
        CLIENT + 'allow = ["22", "22/sctp"]\n',
        "clients.alice.allow[1]: '22/sctp' is not PORT, PORT/tcp or PORT/udp",
    ),
    (CLIENT + 'allow = ["70000"]\n', "clients.alice.allow[0]: '70000' is not PORT"),
    (CLIENT + 'allow = "22"\n', "clients.alice.allow: must be a list"),
    (CLIENT + 'alow = ["22"]\n', "clients.alice.alow: unknown key"),
    (
        CLIENT + 'allow = ["22"]\ndefault = "open 23"\n',
        "clients.alice.default: 'open 23': 23/tcp is not in this client's allow list (22/tcp)",
    ),
    (CLIENT + 'default = "shut 22"\n', "clients.alice.default: 'shut 22': unknown request"),
    (
        CLIENT + 'allow = ["22"]\ndefault = "open 22 60001/udp"\n',
        "clients.alice.default: 'open 22 60001/udp': 60001/udp is not in this client's allow list "
        "(22/tcp)",
    ),
    (
        CLIENT + 'allow = ["22"]\ndefault = "open 53/udp 22 60001/udp"\n',
        "53/udp, 60001/udp are not in this client's allow list (22/tcp)",
    ),
    (
        CLIENT + 'allow = ["22"]\ndefault = "open 22 22"\n',
        "clients.alice.default: 'open 22 22': 22/tcp named twice",
    ),
    (
        CLIENT + 'allow = ["22"]\ndefault = ""\n',
        "clients.alice.default: must be a non-empty string, not an empty one",
    ),
    (CLIENT + 'actions = ["motd"]\n', "clients.alice.actions[0]: 'motd' is not an [actions] entry"),
    (f'[clients."a b"]\npublic_key = "{KEY_A}"\n', "clients.a b: 'a b' is not a name"),
    (
        CLIENT + f'[clients.bob]\npublic_key = "{KEY_A}"\n',
        "clients.bob.public_key: is also clients.alice's key",
    ),
    ("[actions.m]\ntimeout = 3\n", "actions.m.argv: missing (required)"),
    ("[actions.m]\nargv = []\n", "actions.m.argv: must name a program"),
    ('[actions.m]\nargv = ["set-motd"]\n', "actions.m.argv[0]: 'set-motd' is not an absolute path"),
    ('[actions.m]\nargv = ["/bin/true", 3]\n', "actions.m.argv[1]: must be a string"),
    ('[actions.m]\nargv = ["/bin/true"]\ntimeout = 0\n', "actions.m.timeout: 0 is not a number"),
    ('[actions.m]\nargv = ["/bin/true"]\ntimeout = 601\n', "actions.m.timeout: 601 is not"),
    ('[actions.m]\nargv = ["/bin/true"]\nshell = true\n', "actions.m.shell: unknown key"),
    ('state_dir = "/x"\nstate_dir = "/y"\n', "not valid TOML"),
    ("[protect]\ntcp = [22]\nsctp = [9]\n", "protect.sctp: unknown key (known here: tcp, udp)"),
    ("[protect]\ntcp = 22\n", "protect.tcp: must be a list of port numbers, not an integer"),
    ('[protect]\ntcp = ["22"]\n', "protect.tcp[0]: '22' is not a port number (1 to 65535)"),
    ("[protect]\nudp = [0]\n", "protect.udp[0]: 0 is not a port number"),
    ("[protect]\nudp = [65536]\n", "protect.udp[0]: 65536 is not a port number"),
    ("[protect]\ntcp = [true]\n", "protect.tcp[0]: True is not a port number"),
    ("[protect]\ntcp = [22, 2222, 22]\n", "protect.tcp[2]: 22 is listed twice"),
    ("protect = [22]\n", "protect: must be a table"),
    ('[forwards.vm]\nlisten = "2222"\n', "forwards.vm.to: missing (required)"),
    (
        '[forwards.vm]\nlisten = "22/sctp"\nto = "198.51.100.5:22"\n',
        "forwards.vm.listen: '22/sctp' is not PORT, PORT/tcp or PORT/udp",
    ),
    (
        '[forwards.vm]\nlisten = 2222\nto = "198.51.100.5"\n',
        "forwards.vm.to: '198.51.100.5' is not ADDRESS:PORT, such as 10.0.0.5:22",
    ),
    (
        '[forwards.vm]\nlisten = 2222\nto = "fd00::5:22"\n',
        "forwards.vm.to: 'fd00::5:22' is not ADDRESS:PORT",
    ),
    (
        '[forwards.vm]\nlisten = 2222\nto = "127.0.0.1:22"\n',
        "forwards.vm.to: 127.0.0.1 is not an address to forward to",
    ),
    (
        '[forwards.vm]\nlisten = 2222\nto = ["198.51.100.5:22", "198.51.100.6:22"]\n',
        "forwards.vm.to[1]: a second IPv4 target: a forward goes to one place per family",
    ),
    (
        '[forwards.2222]\nlisten = 2222\nto = "198.51.100.5:22"\n',
        "forwards.2222: '2222' reads as a port",
    ),
    (
        '[forwards.a]\nlisten = 2222\nto = "198.51.100.5:22"\n[forwards.b]\nlisten = "2222/tcp"\n'
        'to = "198.51.100.6:22"\n',
        "forwards.b.listen: 2222/tcp is also forwards.a's",
    ),
    (
        '[forwards.vm]\nlisten = 2222\nto = "198.51.100.5:22"\n' + CLIENT + 'allow = ["vn"]\n',
        "clients.alice.allow[0]: 'vn' is not PORT, PORT/tcp or PORT/udp nor a forward (vm)",
    ),
]


@pytest.mark.parametrize("text, message", BAD_CONFIGS)
def test_config_errors_name_the_file_and_the_key(tmp_path, text, message):
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, text)
    assert str(e.value).startswith(f"{tmp_path / 'gnocchi.toml'}: ")
    assert message in str(e.value)


def test_a_default_may_open_several_ports(tmp_path):
    cfg = load_text(
        tmp_path, CLIENT + 'allow = ["22", "60001/udp"]\ndefault = "open 22 60001/udp"\n'
    )
    default = cfg.clients[0].default
    assert default.opens == (knock_request.Open(22, "tcp"), knock_request.Open(60001, "udp"))
    assert cfg.clients[0].why_not(default) is None


def test_every_port_of_a_request_must_be_allowed(tmp_path):
    [alice] = load_text(tmp_path, CLIENT + 'allow = ["22", "60001/udp"]\n').clients
    assert alice.why_not(knock_request.parse(b"open 60001/udp 22")) is None
    assert alice.why_not(knock_request.parse(b"open 22 60002/udp")) == (
        "60002/udp is not in this client's allow list (22/tcp, 60001/udp)"
    )
    assert alice.why_not(knock_request.parse(b"open 22/udp 60001/tcp")) == (
        "22/udp, 60001/tcp are not in this client's allow list (22/tcp, 60001/udp)"
    )


@pytest.mark.parametrize(
    "content, problem",
    [
        (b'state_dir = "/var/lib/gnocchi\xff"\n', "not valid UTF-8"),
        (b"state_dir = \n", "not valid TOML"),
        (None, "no such file (the package installs a commented example there)"),
    ],
)
def test_a_file_that_is_not_toml_is_one_error_naming_it(tmp_path, content, problem):
    path = tmp_path / "gnocchi.toml"
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(config.ConfigError) as e:
        config.load(str(path))
    assert str(e.value).startswith(f"{path}: {problem}")


def load_policy(tmp_path, client_lines: str) -> config.Config:
    """A config whose one client, alice, has client_lines added (sources, expires)."""
    return load_text(
        tmp_path, f'[clients.alice]\npublic_key = "{"ab" * 32}"\nallow = ["22"]\n{client_lines}'
    )


def test_sources_and_expires_parse(tmp_path):
    [alice] = load_policy(
        tmp_path,
        'sources = ["198.51.100.0/24", "2001:db8::/48", "203.0.113.7"]\nexpires = 2026-12-31\n',
    ).clients
    assert alice.sources == (
        ipaddress.ip_network("198.51.100.0/24"),
        ipaddress.ip_network("2001:db8::/48"),
        ipaddress.ip_network("203.0.113.7/32"),
    )
    assert alice.expires == datetime.datetime(2026, 12, 31, tzinfo=datetime.UTC)
    [bob] = load_policy(tmp_path, "expires = 2026-12-31T18:00:00+01:00\n").clients
    assert bob.expires == datetime.datetime(2026, 12, 31, 17, tzinfo=datetime.UTC)
    [carol] = load_policy(tmp_path, "").clients
    assert carol.sources == () and carol.expires is None


@pytest.mark.parametrize(
    "line, key, problem",
    [
        ('sources = ["198.51.100.1/24"]', "clients.alice.sources[0]", "no host bits set"),
        ('sources = ["here"]', "clients.alice.sources[0]", "is not an address or a network"),
        ('sources = "198.51.100.0/24"', "clients.alice.sources", "must be a list"),
        ('expires = "2026-12-31"', "clients.alice.expires", "no quotes"),
        ("expires = 2026-12-31T18:00:00", "clients.alice.expires", "has no offset"),
    ],
)
def test_a_bad_policy_names_the_file_and_the_key(tmp_path, line, key, problem):
    with pytest.raises(config.ConfigError) as e:
        load_policy(tmp_path, line + "\n")
    assert str(e.value).startswith(f"{tmp_path / 'gnocchi.toml'}: {key}: ")
    assert problem in str(e.value)


def test_protect_lists_the_ports_and_a_missing_protocol_protects_none_of_it(tmp_path):
    cfg = load_text(tmp_path, "[protect]\ntcp = [22, 2222]\nudp = [60001]\n")
    assert cfg.protect == {"tcp": (22, 2222), "udp": (60001,)}
    assert load_text(tmp_path, "[protect]\nudp = [53]\n").protect == {"tcp": (), "udp": (53,)}
    # Without the table: None (the ports then come from gnocchi.admin.nft_table's fallback).
    assert load_text(tmp_path, "").protect is None
    assert config.load(str(REPO / "packaging" / "gnocchi.toml")).protect == {
        "tcp": (22,),
        "udp": (),
    }


def test_the_last_good_copy_of_the_default_config_is_roots_outside_the_verifiers_state():
    assert (
        config.last_good_path("/etc/gnocchi/gnocchi.toml")
        == "/var/lib/gnocchi-config/last-good.toml"
    )
    assert not config.LAST_GOOD.startswith(config.DEFAULTS["state_dir"] + "/")
    assert config.last_good_path("/srv/x/other.toml") == "/srv/x/other.last-good.toml"


def test_a_broken_file_runs_its_last_good_copy_and_says_why(tmp_path):
    good = f'[clients.alice]\npublic_key = "{KEY_A}"\nallow = ["22"]\n'
    path = tmp_path / "gnocchi.toml"
    (tmp_path / "gnocchi.last-good.toml").write_text(good)
    path.write_text(good + 'sorces = ["198.51.100.0/24"]\n')
    told = []
    cfg = config.load_running(
        str(path), lambda event, message, **fields: told.append((event, message, fields))
    )
    assert cfg.path == str(tmp_path / "gnocchi.last-good.toml")
    assert [c.name for c in cfg.clients] == ["alice"]
    [(event, message, fields)] = told
    assert event == "config-fell-back"
    assert message.startswith(f"CONFIG BROKEN: {path}: clients.alice.sorces: unknown key")
    assert "runs the last good config instead" in message and "`gnocchi reload`" in message
    assert fields["config"] == str(path) and fields["last_good"] == cfg.path
    # A file that loads is what runs, whatever the copy says.
    path.write_text(good.replace('"22"', '"2222"'))
    assert config.load_running(str(path)).path == str(path)


def test_without_a_good_copy_a_broken_file_is_refused_as_before(tmp_path):
    path = tmp_path / "gnocchi.toml"
    path.write_text("alow = 1\n")
    with pytest.raises(config.ConfigError, match="alow: unknown key"):
        config.load_running(str(path))
    # A copy that does not load, or that others may write, is no good copy either.
    copy = tmp_path / "gnocchi.last-good.toml"
    copy.write_text("also broken\n")
    with pytest.raises(config.ConfigError, match="alow: unknown key"):
        config.load_running(str(path))
    copy.write_text("")
    copy.chmod(0o666)
    with pytest.raises(config.ConfigError, match="alow: unknown key"):
        config.load_running(str(path))


# ---- drop-in clients: clients.d/NAME.toml beside the config -------------------------

KEY_B = "1bcd" * 16
KEY_C = "2cde" * 16


def drop_in(tmp_path, name: str, text: str, mode: int = 0o644):
    directory = tmp_path / "clients.d"
    directory.mkdir(exist_ok=True)
    path = directory / f"{name}.toml"
    path.write_text(text)
    path.chmod(mode)
    return path


def test_drop_ins_add_clients_in_name_order_each_knowing_its_file(tmp_path):
    bob = drop_in(tmp_path, "bob", f'[clients.bob]\npublic_key = "{KEY_B}"\nallow = ["2222"]\n')
    carol = drop_in(
        tmp_path,
        "carol",
        f'# carol\'s laptop\n[clients.carol]\npublic_key = "{KEY_C}"\nactions = ["motd"]\n',
    )
    # Not drop-ins: a deploy tool's hidden temporary copy, a backup, another suffix.
    drop_in(tmp_path, ".ansible_tmpx1dave", "garbage =")
    (tmp_path / "clients.d" / "erin.toml~").write_text("garbage =")
    (tmp_path / "clients.d" / "frank.toml.tmp").write_text("garbage =")
    cfg = load_text(tmp_path, CLIENT + 'allow = ["22"]\n[actions.motd]\nargv = ["/bin/true"]\n')
    assert [(c.name, c.file) for c in cfg.clients] == [
        ("alice", str(tmp_path / "gnocchi.toml")),
        ("bob", str(bob)),
        ("carol", str(carol)),
    ]
    assert cfg.clients[1].allow == (knock_request.Open(2222, "tcp"),)
    assert cfg.clients[2].actions == ("motd",)
    # The same client in the config itself is the same client, wherever it is written.
    moved = load_text(
        tmp_path / "clients.d", f'[clients.bob]\npublic_key = "{KEY_B}"\nallow = ["2222"]\n'
    )
    assert moved.clients[0] == cfg.clients[1]
    # The config file alone (drop_ins=False: how the last good copy is read).
    assert [
        c.name for c in config.load(str(tmp_path / "gnocchi.toml"), drop_ins=False).clients
    ] == ["alice"]


def test_drop_ins_alone_hold_every_client(tmp_path):
    drop_in(tmp_path, "bob", f'[clients.bob]\npublic_key = "{KEY_B}"\n')
    assert [c.name for c in load_text(tmp_path, "").clients] == ["bob"]


@pytest.mark.parametrize(
    "name, text, key, problem",
    [
        (
            "bob",
            f'[clients.bob]\npublic_key = "{KEY_B}"\nalow = ["22"]\n',
            "clients.bob.alow",
            "unknown key",
        ),
        (
            "bob",
            f'[clients.bob]\npublic_key = "{KEY_B}"\nallow = ["22/sctp"]\n',
            "clients.bob.allow[0]",
            "'22/sctp' is not PORT, PORT/tcp or PORT/udp",
        ),
        (
            "bob",
            f'[clients.bob]\npublic_key = "{KEY_B}"\nactions = ["reboot"]\n',
            "clients.bob.actions[0]",
            "'reboot' is not an [actions] entry",
        ),
        (
            "bob",
            f'[clients.carol]\npublic_key = "{KEY_B}"\n',
            "clients",
            "a drop-in holds one [clients.bob] table (its header first), named as the "
            "file; found [clients.carol]",
        ),
        (
            "bob",
            f'[clients.bob]\npublic_key = "{KEY_B}"\n[clients.carol]\npublic_key = "{KEY_C}"\n',
            "clients",
            "found [clients.bob], [clients.carol]",
        ),
        (
            "bob",
            f'[clients.bob]\npublic_key = "{KEY_B}"\n[actions.x]\nargv = ["/bin/true"]\n',
            "",
            "a drop-in holds one [clients.bob] table",
        ),
        (
            "bob",
            f'state_dir = "/tmp"\n[clients.bob]\npublic_key = "{KEY_B}"\n',
            "",
            "found clients, state_dir",
        ),
        (
            "bob",
            f'clients.bob.public_key = "{KEY_B}"\n',
            "clients.bob",
            "its keys go below the [clients.bob] line (the drop-in is appended",
        ),
        ("bob", "", "", "found nothing"),
        ("bob", "[clients.bob\n", "", "not valid TOML"),
        (
            "a b",
            f'[clients."a b"]\npublic_key = "{KEY_B}"\n',
            "the file name a b.toml",
            "'a b' is not a name",
        ),
    ],
)
def test_a_bad_drop_in_is_an_error_naming_the_drop_in_and_the_key(
    tmp_path, name, text, key, problem
):
    path = drop_in(tmp_path, name, text)
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, CLIENT + 'allow = ["22"]\n')
    assert str(e.value).startswith(f"{path}: {key}: " if key else f"{path}: "), str(e.value)
    assert problem in str(e.value)


def test_a_name_or_key_in_two_files_is_an_error_naming_both(tmp_path):
    main = tmp_path / "gnocchi.toml"
    path = drop_in(tmp_path, "alice", f'[clients.alice]\npublic_key = "{KEY_B}"\n')
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, CLIENT)
    assert str(e.value) == (
        f"{path}: clients.alice: is also configured in {main}; a client is in one file only"
    )
    path.unlink()
    carol = drop_in(tmp_path, "carol", f'[clients.carol]\npublic_key = "{KEY_A}"\n')
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, CLIENT)
    assert str(e.value) == (
        f"{carol}: clients.carol.public_key: is also clients.alice's key ({main})"
    )
    carol.unlink()
    bob = drop_in(tmp_path, "bob", f'[clients.bob]\npublic_key = "{KEY_B}"\n')
    dave = drop_in(tmp_path, "dave", f'[clients.dave]\npublic_key = "{KEY_B}"\n')
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, CLIENT)
    assert str(e.value) == f"{dave}: clients.dave.public_key: is also clients.bob's key ({bob})"


@pytest.mark.parametrize("mode", [0o664, 0o666])
def test_a_drop_in_others_may_write_is_refused_with_the_fix(tmp_path, mode):
    path = drop_in(tmp_path, "bob", f'[clients.bob]\npublic_key = "{KEY_B}"\n', mode)
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, CLIENT)
    assert str(e.value).startswith(f"{path}: {path} is writable by group or others")
    assert f"fix: chmod go-w {path}" in str(e.value)
    path.chmod(0o644)
    (tmp_path / "clients.d").chmod(0o777)
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, CLIENT)
    assert f"fix: chmod go-w {tmp_path / 'clients.d'}" in str(e.value)


def test_clients_written_as_an_inline_table_cannot_take_drop_ins(tmp_path):
    drop_in(tmp_path, "bob", f'[clients.bob]\npublic_key = "{KEY_B}"\n')
    with pytest.raises(config.ConfigError) as e:
        load_text(tmp_path, f'clients = {{ alice = {{ public_key = "{KEY_A}" }} }}\n')
    assert str(e.value).startswith(
        f"{tmp_path / 'gnocchi.toml'}: clients: the drop-ins of "
        f"{tmp_path / 'clients.d'}, appended to this file, do not "
        "read as they do alone"
    )


def test_the_bundle_is_the_config_and_each_drop_in_each_ending_in_a_newline(tmp_path):
    assert config.bundle(b"a = 1", []) == b"a = 1"
    assert config.bundle(b"a = 1", [b"[clients.b]\n", b"[clients.c]"]) == (
        b"a = 1\n[clients.b]\n[clients.c]\n"
    )
    path = tmp_path / "gnocchi.toml"
    path.write_text(CLIENT)
    drop_in(tmp_path, "bob", f'[clients.bob]\npublic_key = "{KEY_B}"')  # no final newline
    copy = tmp_path / "copy.toml"
    copy.write_bytes(config.read_bundle(str(path)))
    alone = config.load(str(copy), drop_ins=False)
    assert alone.clients == config.load(str(path)).clients


def test_a_forward_by_its_name_in_an_allow_list_and_the_family_it_reaches(tmp_path):
    cfg = load_text(
        tmp_path,
        f"""
[forwards.vm-ssh]
listen = "2222"
to = ["198.51.100.5:22", "[2001:db8::5]:22"]

[forwards.vm-dns]
listen = "5353/udp"
to = "198.51.100.5:53"

[clients.alice]
public_key = "{KEY_A}"
allow = ["22", "vm-ssh", "vm-dns"]
""",
    )
    ssh, dns = cfg.forwards
    assert (ssh.listen, [str(t) for t in ssh.to]) == (
        knock_request.Open(2222, "tcp"),
        ["198.51.100.5:22", "[2001:db8::5]:22"],
    )
    assert cfg.clients[0].allow == (knock_request.Open(22, "tcp"), ssh.listen, dns.listen)
    v4, v6 = ipaddress.ip_address("203.0.113.9"), ipaddress.ip_address("2001:db8:1::9")
    request = knock_request.parse(b"open 2222 5353/udp")
    assert cfg.unreachable(request, v4) is None
    assert cfg.unreachable(request, v6) == (
        "forward vm-dns (5353/udp) reaches only 198.51.100.5:53: knock over IPv4"
    )
    assert cfg.unreachable(knock_request.parse(b"open 2222"), v6) is None
    assert cfg.unreachable(knock_request.parse(b"run motd"), v6) is None

"""gnocchi-knock run as a user runs it (a subprocess of `python3 -m gnocchi.client.knock`),
its packets captured on loopback and checked by an independent reading of
PROTOCOL.md written here with nacl.bindings, not through gnocchi.shared.protocol.

Every socket is on 127.0.0.1 and every file under tmp_path; HOME and XDG_*
point into tmp_path so the user's real config and state are never read.
"""

import os
import select
import socket
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl import bindings as sodium
from nacl.exceptions import BadSignatureError

from support.client import LOOPBACK, knock_catcher, knock_port, write_key

REPO = Path(__file__).resolve().parents[2]


# ---- an independent reading of PROTOCOL.md -------------------------------------------

MAGIC = bytes.fromhex("42f9708e2f1369d9")


def fingerprint(server_key: bytes) -> str:
    """The server key's short name both sides print: personalised BLAKE2b, 8 bytes."""
    h = sodium.crypto_generichash_blake2b_salt_personal(
        server_key, digest_size=8, person=b"gnocchi-fprint".ljust(16, b"\0")
    ).hex()
    return "-".join(h[i : i + 4] for i in range(0, 16, 4))


@dataclass
class Knock:
    client: bytes
    counter: int
    data: bytes
    body_len: int  # L


def verify(packet: bytes, server_key: bytes, server_ip: str) -> Knock:
    """PROTOCOL.md's packet, read field by field; raises if anything is off."""
    assert 160 <= len(packet) <= 1024
    nonce = packet[:24]
    plain = sodium.crypto_secretbox_open(packet[24:], nonce, server_key)  # MAC || CIPHERTEXT
    assert plain[:8] == MAGIC
    signpub, sig = plain[8:40], plain[40:104]
    counter_and_body = plain[104:]
    signed = nonce + MAGIC + signpub + counter_and_body + server_key + socket.inet_aton(server_ip)
    assert sodium.crypto_sign_open(sig + signed, signpub) == signed  # detached Ed25519
    counter = int.from_bytes(counter_and_body[:14], "big")
    data_len = int.from_bytes(counter_and_body[14:16], "big")
    body = counter_and_body[16:]
    assert data_len <= len(body)
    return Knock(signpub, counter, body[:data_len], len(body))


# ---- fixtures: keys, a knock listener, the client as a subprocess -------------------


@dataclass
class Setup:
    tmp: Path
    server_key: bytes
    server_key_file: Path
    client_key_file: Path
    client_public: bytes
    state_dir: Path
    udp: socket.socket
    env: dict

    def knock(self, *args, host=LOOPBACK, keyfiles=True, stdin=None, timeout=30):
        argv = [sys.executable, "-m", "gnocchi.client.knock"]
        if keyfiles:
            argv += [
                "--server-key-file",
                str(self.server_key_file),
                "--client-key-file",
                str(self.client_key_file),
                "--state-dir",
                str(self.state_dir),
            ]
        argv += [*map(str, args)] + ([host] if host else [])
        return subprocess.run(
            argv, cwd=REPO, env=self.env, capture_output=True, timeout=timeout, input=stdin
        )

    def receive(self, timeout=5.0) -> bytes:
        ready, _, _ = select.select([self.udp], [], [], timeout)
        assert ready, "no knock arrived"
        return self.udp.recv(2048)

    def nothing_received(self) -> bool:
        return not select.select([self.udp], [], [], 0)[0]


@pytest.fixture
def setup(tmp_path):
    udp, server_key = knock_catcher()
    seed = os.urandom(32)
    public, _ = sodium.crypto_sign_seed_keypair(seed)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    try:
        yield Setup(
            tmp_path,
            server_key,
            write_key(tmp_path / "server.key", server_key),
            write_key(tmp_path / "client.key", seed),
            public,
            tmp_path / "state",
            udp,
            env,
        )
    finally:
        udp.close()


# ---- the packet --------------------------------------------------------------------


def test_captured_knocks_verify_and_pad_randomly(setup):
    knocks = []
    for _ in range(6):
        result = setup.knock("--request", "open 22")
        assert result.returncode == 0, result.stderr
        assert result.stdout == b"" and result.stderr == b""
        knocks.append(verify(setup.receive(), setup.server_key, LOOPBACK))
    counters = [k.counter for k in knocks]
    assert counters == sorted(set(counters)), "counters did not increase"
    assert all(k.client == setup.client_public and k.data == b"open 22" for k in knocks)
    assert all(k.body_len % 16 == 0 for k in knocks)
    assert len({k.body_len for k in knocks}) > 1, "padding length did not vary in 6 knocks"


def test_a_fresh_state_starts_from_the_clock_and_a_lost_one_recovers(setup):
    before = time.time_ns()
    assert setup.knock().returncode == 0
    first = verify(setup.receive(), setup.server_key, LOOPBACK).counter
    assert before <= first <= time.time_ns()
    assert setup.knock().returncode == 0
    second = verify(setup.receive(), setup.server_key, LOOPBACK).counter
    assert first < second <= time.time_ns()  # max(last + 1, clock): the clock
    for path in setup.state_dir.iterdir():  # the client loses its state
        path.unlink()
    assert setup.knock().returncode == 0
    assert verify(setup.receive(), setup.server_key, LOOPBACK).counter > second


def test_the_state_file_names_no_secret(setup):
    assert setup.knock().returncode == 0
    setup.receive()
    names = " ".join(p.name for p in setup.state_dir.iterdir())
    contents = b" ".join(p.read_bytes() for p in setup.state_dir.iterdir())
    for secret in (setup.server_key.hex(), setup.client_key_file.read_text().strip()):
        assert secret not in names and secret.encode() not in contents


def test_counters_are_kept_apart_per_server_key(setup, tmp_path):
    other_key = next(k for k in iter(lambda: os.urandom(32), None) if knock_port(k) > 1024)
    other = write_key(tmp_path / "other.key", other_key)
    assert setup.knock().returncode == 0
    first = verify(setup.receive(), setup.server_key, LOOPBACK).counter
    # a knock for another server (on its own port, where nobody listens: UDP does not care)
    assert setup.knock("--server-key-file", other).returncode == 0
    assert setup.knock().returncode == 0
    assert verify(setup.receive(), setup.server_key, LOOPBACK).counter > first
    assert len(list(setup.state_dir.glob("*.counter"))) == 2


def test_concurrent_knocks_never_reuse_a_counter(setup):
    n = 20
    argv = [
        sys.executable,
        "-m",
        "gnocchi.client.knock",
        "--server-key-file",
        setup.server_key_file,
        "--client-key-file",
        setup.client_key_file,
        "--state-dir",
        setup.state_dir,
        LOOPBACK,
    ]
    procs = [
        subprocess.Popen(argv, cwd=REPO, env=setup.env, stderr=subprocess.PIPE) for _ in range(n)
    ]
    try:
        for p in procs:
            assert p.wait(timeout=60) == 0, p.stderr.read()
    finally:
        for p in procs:
            p.kill()
            p.wait()
            p.stderr.close()
    counters = sorted(verify(setup.receive(), setup.server_key, LOOPBACK).counter for _ in range(n))
    assert len(set(counters)) == n


def test_a_counter_ahead_of_the_clock_steps_by_one(setup):
    assert setup.knock().returncode == 0
    setup.receive()
    [state] = setup.state_dir.glob("*.counter")
    ahead = time.time_ns() + 10**18  # a clock that went back, or a counter from the future
    state.write_text(f"{ahead}\n")
    assert setup.knock().returncode == 0
    assert verify(setup.receive(), setup.server_key, LOOPBACK).counter == ahead + 1


def test_sign_ip_is_the_address_signed(setup):
    assert setup.knock("--sign-ip", "198.18.0.7").returncode == 0
    packet = setup.receive()
    assert verify(packet, setup.server_key, "198.18.0.7").client == setup.client_public
    with pytest.raises(BadSignatureError):
        verify(packet, setup.server_key, LOOPBACK)


def test_with_sign_ip_an_ipv6_host_is_knocked_over_ipv6(setup):
    with socket.socket(socket.AF_INET6, socket.SOCK_DGRAM) as udp6:
        udp6.bind(("::1", knock_port(setup.server_key)))
        assert setup.knock("--sign-ip", "198.18.0.7", host="::1").returncode == 0
        assert select.select([udp6], [], [], 5)[0]
        assert verify(udp6.recv(2048), setup.server_key, "198.18.0.7").client == setup.client_public


# ---- requests ------------------------------------------------------------------------


@pytest.mark.parametrize(
    "args, stdin, data",
    [
        ((), None, b""),
        (("--request", "open 22"), None, b"open 22"),
        (("--open", "60001/udp"), None, b"open 60001/udp"),
        (("--open", "443/tcp"), None, b"open 443/tcp"),
        (("--run", "motd"), None, b"run motd"),
        (
            ("--run", "motd", "--payload", "-"),
            b"Back at 5\nGone fishing",
            b"run motd\nBack at 5\nGone fishing",
        ),
        (("--run", "motd", "--payload", "-"), b"", b"run motd"),
        (("--request", "open 22 60001/udp"), None, b"open 22 60001/udp"),
        (("--open", "22", "--open", "60001/udp"), None, b"open 22 60001/udp"),
    ],
)
def test_requests(setup, args, stdin, data):
    result = setup.knock(*args, stdin=stdin)
    assert result.returncode == 0, result.stderr
    assert verify(setup.receive(), setup.server_key, LOOPBACK).data == data


def test_payload_from_a_file(setup, tmp_path):
    (tmp_path / "motd").write_text("héllo\n")
    result = setup.knock("--run", "motd", "--payload", tmp_path / "motd")
    assert result.returncode == 0, result.stderr
    assert verify(setup.receive(), setup.server_key, LOOPBACK).data == "run motd\nhéllo\n".encode()


@pytest.mark.parametrize(
    "args, stdin, words",
    [
        (
            ("--request", "open 0"),
            None,
            "request 'open 0': not open PORT[/tcp|/udp] ... (PORT 1..65535; 1 to 8 ports",
        ),
        (("--request", "open 65536"), None, "not open PORT"),
        (("--request", "open 22/sctp"), None, "not open PORT"),
        (("--request", "open 022"), None, "not open PORT"),
        (("--request", "shutdown"), None, "request 'shutdown': unknown request (known: open, run)"),
        (("--open", "ssh"), None, "request 'open ssh': not open PORT"),
        (
            ("--run", "../x"),
            None,
            "request 'run ../x': not run NAME (NAME: letters, digits, _ . -)",
        ),
        (("--run", "motd now"), None, "not run NAME"),
        (("--run", "motd", "--payload", "-"), b"x" * 900, "at most 864 fit"),
        (("--run", "motd", "--payload", "-"), b"\xff\xfe", "not UTF-8"),
        (("--payload", "-"), b"x", "--payload goes with --run"),
        (("--request", "open 22 22/tcp"), None, "request 'open 22 22/tcp': 22/tcp named twice"),
        (("--open", "22", "--open", "22"), None, "request 'open 22 22': 22/tcp named twice"),
        (("--request", "open 22  60001/udp"), None, "1 to 8 ports, one space apart"),
        (("--request", "open " + " ".join(map(str, range(1, 10)))), None, ": more than 8 ports"),
    ],
)
def test_bad_requests_are_refused_before_anything_is_sent(setup, args, stdin, words):
    result = setup.knock(*args, stdin=stdin)
    assert result.returncode == 1
    assert words in result.stderr.decode()
    assert result.stderr.decode().startswith("gnocchi-knock: ")
    assert setup.nothing_received()
    assert not setup.state_dir.exists() or not list(setup.state_dir.glob("*.counter"))


# ---- clear errors --------------------------------------------------------------------


def test_error_cases(setup, tmp_path):
    loose = write_key(tmp_path / "loose.key", os.urandom(32))
    loose.chmod(0o644)
    cases = [
        ((), "gnocchi-test.invalid", "gnocchi-test.invalid does not resolve"),
        ((), "::1", "::1 has no IPv4 address; knock protocol v1 signs the server's IPv4"),
        (
            ("--client-key-file", tmp_path / "nope"),
            LOOPBACK,
            f"{tmp_path / 'nope'}: no such secret key file",
        ),
        (("--server-key-file", loose), LOOPBACK, f"fix: chmod 600 {loose}"),
        (("--sign-ip", "fd00::1"), LOOPBACK, "--sign-ip: 'fd00::1' is not an IPv4 address"),
        (("--profile", "work"), None, "unknown profile 'work'"),
    ]
    for args, host, words in cases:
        result = setup.knock(*args, host=host)
        err = result.stderr.decode()
        assert result.returncode == 1, (args, err)
        assert words in err, err
        assert err.count("\n") == 1 and "Traceback" not in err
    assert setup.nothing_received()


def test_no_keys_given(setup):
    result = setup.knock(keyfiles=False)
    assert result.returncode == 1
    assert (
        b"no server key: give --server-public-key HEX (v2), --server-key-file FILE (v1), "
        b"or a profile"
    ) in result.stderr


# ---- profiles ------------------------------------------------------------------------


def write_config(setup, text: str | bytes, where=None) -> Path:
    path = where or setup.tmp / "home" / ".config" / "gnocchi" / "knock.toml"
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(text if isinstance(text, bytes) else text.encode())
    return path


def profile_text(setup, name="work", extra=""):
    os.rename(setup.server_key_file, setup.tmp / "home" / "work-server.key")
    return f"""
[profiles.{name}]
host = "{LOOPBACK}"
server_key_file = "~/work-server.key"
client_key_file = "{setup.client_key_file}"
request = "open 2222"
{extra}
"""


def test_a_profile_named_like_the_host(setup):
    write_config(setup, profile_text(setup))
    result = setup.knock(host="work", keyfiles=False)
    assert result.returncode == 0, result.stderr
    knock = verify(setup.receive(), setup.server_key, LOOPBACK)
    assert knock.data == b"open 2222" and knock.client == setup.client_public
    # the counter went to the default state dir
    assert list((setup.tmp / "home" / ".local" / "state" / "gnocchi").glob("*.counter"))


def test_flags_override_the_profile(setup):
    write_config(setup, profile_text(setup, extra='sign_ip = "198.18.0.9"'))
    result = setup.knock(
        "--profile",
        "work",
        "--open",
        "22",
        "--state-dir",
        setup.state_dir,
        host=None,
        keyfiles=False,
    )
    assert result.returncode == 0, result.stderr
    knock = verify(setup.receive(), setup.server_key, "198.18.0.9")
    assert knock.data == b"open 22"


def test_a_profile_found_by_its_host_and_relative_key_paths(setup):
    config_dir = setup.tmp / "conf"
    config_dir.mkdir()
    os.rename(setup.client_key_file, config_dir / "me.key")
    config = write_config(
        setup,
        f"""
default = "work"
[profiles.work]
host = "{LOOPBACK}"
server_key_file = "{setup.server_key_file}"
client_key_file = "me.key"
""",
        where=config_dir / "knock.toml",
    )
    for host in (LOOPBACK, None):  # by host, then the default profile
        result = setup.knock("--config", config, host=host, keyfiles=False)
        assert result.returncode == 0, result.stderr
        assert verify(setup.receive(), setup.server_key, LOOPBACK).data == b""


@pytest.mark.parametrize(
    "text, words",
    [
        ("[profiles.work]\nhost = 1\n", "profiles.work.host: must be a non-empty string"),
        ("[profiles.work]\nsever_key_file = 'x'\n", "profiles.work.sever_key_file: unknown key"),
        (
            "[profiles.work]\nsign_ip = '::1'\n",
            "profiles.work.sign_ip: '::1' is not an IPv4 address",
        ),
        (
            "[profiles.work]\nrequest = 'open 22 22/tcp'\n",
            "profiles.work.request: 'open 22 22/tcp': 22/tcp named twice",
        ),
        ("[profiles.work\n", "not valid TOML"),
        ("default = 'home'\n[profiles.work]\n", "default: 'home' names no [profiles.NAME] table"),
        ("port = 1\n", "port: unknown key"),
        ("profiles = 1\n", "profiles: must be a table of named tables"),
        (b"[profiles.work]\nhost = 'caf\xe9'\n", "not valid UTF-8"),  # Latin-1, not UTF-8
        (b"\x89PNG\r\n\x1a\n\x00\x00", "not valid UTF-8"),  # a picture saved over it
    ],
)
def test_bad_config_names_the_file_and_key(setup, text, words):
    config = write_config(setup, text)
    result = setup.knock("--profile", "work", keyfiles=False, host=None)
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith(f"gnocchi-knock: {config}: {words}"), err
    assert err.count("\n") == 1 and "Traceback" not in err


def test_a_bad_request_in_a_profile_names_the_profile(setup):
    config = write_config(setup, profile_text(setup).replace("open 2222", "open ssh"))
    result = setup.knock(host="work", keyfiles=False)
    assert result.returncode == 1
    assert result.stderr.startswith(
        f"gnocchi-knock: {config}: profiles.work.request: 'open ssh': not open PORT".encode()
    )
    assert setup.nothing_received()


def test_a_profile_may_open_several_ports(setup):
    write_config(setup, profile_text(setup).replace("open 2222", "open 2222 60001/udp"))
    result = setup.knock(host="work", keyfiles=False)
    assert result.returncode == 0, result.stderr
    assert verify(setup.receive(), setup.server_key, LOOPBACK).data == b"open 2222 60001/udp"


def test_unknown_profile_lists_the_known_ones(setup):
    write_config(setup, profile_text(setup))
    result = setup.knock("--profile", "home", keyfiles=False, host=None)
    assert result.returncode == 1
    assert b"unknown profile 'home'" in result.stderr and b"profiles: work" in result.stderr


# ---- --proxy for ssh's ProxyCommand ------------------------------------------------------


def echo_server(listener: socket.socket, log: list):
    """Accept one connection, echo until the client's EOF, then say bye and close."""
    listener.settimeout(20)
    try:
        conn, _ = listener.accept()
    except OSError as e:
        log.append(e)
        return
    with conn:
        conn.settimeout(20)
        while data := conn.recv(4096):
            conn.sendall(data)
        conn.sendall(b"bye\n")
        log.append("done")


def proxy_argv(setup, port, *extra):
    return [
        sys.executable,
        "-m",
        "gnocchi.client.knock",
        "--server-key-file",
        setup.server_key_file,
        "--client-key-file",
        setup.client_key_file,
        "--state-dir",
        setup.state_dir,
        *extra,
        "--proxy",
        LOOPBACK,
        str(port),
    ]


def test_proxy_knocks_then_relays_both_ways(setup):
    with socket.create_server((LOOPBACK, 0)) as listener:
        log = []
        server = threading.Thread(target=echo_server, args=(listener, log), daemon=True)
        server.start()
        message = b"SSH-2.0-test\r\n" + os.urandom(100000)
        result = subprocess.run(
            proxy_argv(setup, listener.getsockname()[1]),
            cwd=REPO,
            env=setup.env,
            input=message,
            capture_output=True,
            timeout=30,
        )
        server.join(20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == message + b"bye\n"  # and the server's last words after our EOF
    assert log == ["done"]
    knock = verify(setup.receive(timeout=0), setup.server_key, LOOPBACK)
    assert knock.client == setup.client_public
    assert setup.nothing_received(), "one knock, no retry, when the first connect works"


def test_proxy_knocks_again_when_the_connect_fails(setup):
    """The first knock "is lost": the port opens only after it, as a slow server's
    firewall would. The client sees the refused connect, knocks again with the
    next counter, and then connects."""
    listener = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    listener.bind((LOOPBACK, 0))  # bound, not listening: connects are refused
    proc = subprocess.Popen(
        proxy_argv(setup, listener.getsockname()[1], "-v"),
        cwd=REPO,
        env=setup.env,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
    )
    try:
        first = verify(setup.receive(timeout=20), setup.server_key, LOOPBACK)
        line = proc.stderr.readline()  # "knocked ... attempt 1/3"
        line += proc.stderr.readline()
        assert b"attempt 1/3" in line and b"failed" in line, line
        assert f"server key {fingerprint(setup.server_key)}".encode() in line  # as the server's
        listener.listen()
        log = []
        server = threading.Thread(target=echo_server, args=(listener, log), daemon=True)
        server.start()
        out, err = proc.communicate(b"hello\n", timeout=30)
        server.join(20)
        assert proc.returncode == 0, err
        assert out == b"hello\nbye\n"
        second = verify(setup.receive(timeout=0), setup.server_key, LOOPBACK)
        assert second.counter > first.counter
    finally:
        proc.kill()
        proc.wait()
        for f in (proc.stdin, proc.stdout, proc.stderr):
            f.close()
        listener.close()


def test_proxy_gives_up_after_the_attempts(setup):
    with socket.socket() as closed:
        closed.bind((LOOPBACK, 0))  # never listens
        result = subprocess.run(
            proxy_argv(setup, closed.getsockname()[1], "--attempts", "2"),
            cwd=REPO,
            env=setup.env,
            capture_output=True,
            timeout=30,
        )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.count("\n") == 1
    assert f"after 2 knocks on UDP port {knock_port(setup.server_key)}" in err
    assert f"server key {fingerprint(setup.server_key)}" in err
    for cause in ("drop UDP", "gnocchi doctor", "another server key", "journalctl -u gnocchi"):
        assert cause in err
    counters = [verify(setup.receive(), setup.server_key, LOOPBACK).counter for _ in range(2)]
    assert counters[1] > counters[0] and setup.nothing_received()


def test_proxy_with_several_ports_connects_to_the_one_given(setup):
    with socket.create_server((LOOPBACK, 0)) as listener:
        port = listener.getsockname()[1]
        log = []
        server = threading.Thread(target=echo_server, args=(listener, log), daemon=True)
        server.start()
        result = subprocess.run(
            proxy_argv(setup, port, "--request", f"open 60001/udp {port}"),
            cwd=REPO,
            env=setup.env,
            input=b"hi\n",
            capture_output=True,
            timeout=30,
        )
        server.join(20)
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi\nbye\n"
    assert (
        verify(setup.receive(timeout=0), setup.server_key, LOOPBACK).data
        == f"open 60001/udp {port}".encode()
    )


@pytest.mark.parametrize(
    "request_args",
    [("--open", "60001/udp"), ("--open", "2222/udp"), ("--request", "open 60001/udp 2223")],
)
def test_proxy_refuses_a_request_that_does_not_open_its_port(setup, request_args):
    """ssh would wait for a port the knock never opens: refused before a counter is spent."""
    result = subprocess.run(
        proxy_argv(setup, 2222, *request_args),
        cwd=REPO,
        env=setup.env,
        capture_output=True,
        timeout=30,
    )
    assert result.returncode == 1
    err = result.stderr.decode()
    assert err.startswith("gnocchi-knock: --proxy connects to TCP port 2222, but the request "), err
    assert "does not open it" in err and err.count("\n") == 1
    assert setup.nothing_received()
    assert not setup.state_dir.exists() or not list(setup.state_dir.glob("*.counter"))


@pytest.mark.parametrize("port", ["0", "65536", "ssh", "022", "22/udp"])
def test_proxy_port_is_read_as_the_grammar_reads_a_tcp_port(setup, port):
    result = subprocess.run(
        proxy_argv(setup, port), cwd=REPO, env=setup.env, capture_output=True, timeout=30
    )
    assert result.returncode == 1
    assert result.stderr.decode() == (
        f"gnocchi-knock: --proxy port {port!r} is not a TCP port number\n"
    )
    assert setup.nothing_received()

"""gnocchi-knock with knock protocol v2, run as a user runs it (a subprocess), its
packets caught on loopback and read by an independent reading of PROTOCOL.md's
"Version 2" written here with nacl.bindings, not through gnocchi.shared.protocol.

Every socket is on 127.0.0.1 or ::1 and every file under tmp_path.
"""

import os
import select
import socket
import subprocess
import sys
import threading
from dataclasses import dataclass
from pathlib import Path

import pytest
from nacl import bindings as sodium

from support.client import LOOPBACK, knock_port, write_key

REPO = Path(__file__).resolve().parents[2]
MAGIC2 = bytes.fromhex("177fd314bf5dbb67")


def v1_key() -> bytes:
    """A v1 server key whose knock port is above 1024, as keygen draws them (the client
    refuses the others, 1 in 64)."""
    while knock_port(key := os.urandom(32)) <= 1024:
        pass
    return key


def address16(text: str) -> bytes:
    if ":" in text:
        return socket.inet_pton(socket.AF_INET6, text)
    return bytes(10) + b"\xff\xff" + socket.inet_aton(text)


def fingerprint(key: bytes) -> str:
    h = sodium.crypto_generichash_blake2b_salt_personal(
        key, digest_size=8, person=b"gnocchi-fprint".ljust(16, b"\0")
    ).hex()
    return "-".join(h[i : i + 4] for i in range(0, 16, 4))


@dataclass
class Knock:
    client: bytes
    counter: int
    data: bytes


def verify2(packet: bytes, public: bytes, private: bytes, address: str) -> Knock:
    """A v2 knock, read field by field; raises if anything is off."""
    assert 184 <= len(packet) <= 1048 and packet[:8] == MAGIC2
    sealed = packet[24:]
    assert (
        sodium.crypto_generichash_blake2b_salt_personal(
            sealed, digest_size=16, key=public, person=b"gnocchi-mac1".ljust(16, b"\0")
        )
        == packet[8:24]
    )
    plain = sodium.crypto_box_seal_open(sealed, public, private)
    signpub, sig, tail = plain[:32], plain[32:96], plain[96:]
    signed = MAGIC2 + signpub + tail + public + address16(address)
    assert sodium.crypto_sign_open(sig + signed, signpub) == signed
    data_len = int.from_bytes(tail[14:16], "big")
    assert data_len <= len(tail) - 16 and (len(tail) - 16) % 16 == 0
    return Knock(signpub, int.from_bytes(tail[:14], "big"), tail[16 : 16 + data_len])


@dataclass
class Setup:
    tmp: Path
    public: bytes
    private: bytes
    client_key_file: Path
    client_public: bytes
    udp: dict  # family -> socket on the knock port
    env: dict

    def knock(self, *args, host=LOOPBACK, public=True, **kw):
        argv = [
            sys.executable,
            "-m",
            "gnocchi.client.knock",
            "--client-key-file",
            str(self.client_key_file),
            "--state-dir",
            str(self.tmp / "state"),
            *(["--server-public-key", self.public.hex()] if public else []),
            *map(str, args),
            *([host] if host else []),
        ]
        return subprocess.run(argv, cwd=REPO, env=self.env, capture_output=True, timeout=30, **kw)

    def receive(self, family=socket.AF_INET, timeout=5.0) -> bytes:
        assert select.select([self.udp[family]], [], [], timeout)[0], "no knock arrived"
        return self.udp[family].recv(2048)

    def nothing_received(self) -> bool:
        return not select.select(list(self.udp.values()), [], [], 0.2)[0]


@pytest.fixture
def setup(tmp_path):
    for _ in range(20):  # a key pair whose knock port is free on both loopbacks
        private = os.urandom(32)
        public = sodium.crypto_scalarmult_base(private)
        port = knock_port(public)
        if port <= 1024:
            continue
        socks = {}
        try:
            for family, address in ((socket.AF_INET, LOOPBACK), (socket.AF_INET6, "::1")):
                socks[family] = socket.socket(family, socket.SOCK_DGRAM)
                socks[family].bind((address, port))
            break
        except OSError:
            for s in socks.values():
                s.close()
    else:
        pytest.fail("no free knock port")
    seed = os.urandom(32)
    env = {k: v for k, v in os.environ.items() if not k.startswith("XDG_")}
    env["HOME"] = str(tmp_path / "home")
    (tmp_path / "home").mkdir()
    try:
        yield Setup(
            tmp_path,
            public,
            private,
            write_key(tmp_path / "client.key", seed),
            sodium.crypto_sign_seed_keypair(seed)[0],
            socks,
            env,
        )
    finally:
        for s in socks.values():
            s.close()


def test_a_server_public_key_makes_a_v2_knock_that_signs_the_mapped_ipv4_address(setup):
    result = setup.knock("-v", "--open", "22")
    assert result.returncode == 0, result.stderr
    knock = verify2(setup.receive(), setup.public, setup.private, LOOPBACK)
    assert (knock.client, knock.data) == (setup.client_public, b"open 22")
    assert f"v2, server public key {fingerprint(setup.public)}".encode() in result.stderr


def test_an_ipv6_address_is_knocked_over_ipv6_and_signed_as_it_is(setup):
    """What v1 could not do without sign_ip on the client and server_addresses on the server."""
    assert setup.knock(host="::1").returncode == 0
    assert (
        verify2(setup.receive(socket.AF_INET6), setup.public, setup.private, "::1").client
        == setup.client_public
    )
    assert setup.nothing_received()


def test_sign_ip_may_be_ipv6_in_v2_only(setup):
    assert setup.knock("--sign-ip", "2001:db8::7").returncode == 0
    verify2(setup.receive(), setup.public, setup.private, "2001:db8::7")
    write_key(setup.tmp / "server.key", v1_key())
    v1 = setup.knock(
        "--sign-ip", "2001:db8::7", "--server-key-file", setup.tmp / "server.key", public=False
    )
    assert v1.returncode == 1
    assert b"'2001:db8::7' is not an IPv4 address (knock protocol v1 signs" in v1.stderr


def test_minus_4_and_minus_6_choose_the_family_as_ssh_does(setup):
    refused = setup.knock("-4", host="::1")
    assert refused.returncode == 1 and b"::1 has no IPv4 address" in refused.stderr
    assert setup.knock("-6", host="::1").returncode == 0
    setup.receive(socket.AF_INET6)


def test_a_profile_with_a_server_public_key_knocks_v2_and_a_v1_flag_overrides_it(setup):
    server_key = v1_key()
    write_key(setup.tmp / "server.key", server_key)
    config = setup.tmp / "knock.toml"
    config.write_text(
        f'[profiles.work]\nhost = "{LOOPBACK}"\nclient_key_file = "client.key"\n'
        f'server_key_file = "server.key"\n'
        f'server_public_key = "{setup.public.hex()}"\n'
    )
    assert setup.knock("--config", config, "work", host=None, public=False).returncode == 0
    verify2(setup.receive(), setup.public, setup.private, LOOPBACK)
    # --server-key-file on the command line: v1, to the v1 key's own port (nobody there).
    v1 = setup.knock(
        "-v",
        "--config",
        config,
        "--server-key-file",
        setup.tmp / "server.key",
        "work",
        host=None,
        public=False,
    )
    assert v1.returncode == 0 and f"port {knock_port(server_key)} (server key".encode() in v1.stderr
    both = setup.knock("--server-key-file", setup.tmp / "server.key")
    assert both.returncode == 1 and b"give either --server-public-key (v2) or" in both.stderr


def test_a_bad_server_public_key_is_refused_naming_where_it_came_from(setup):
    bad = setup.knock("--server-public-key", "abc", public=False)
    assert bad.returncode == 1 and b"--server-public-key: expected a public key" in bad.stderr
    config = setup.tmp / "knock.toml"
    config.write_text('[profiles.work]\nserver_public_key = "zz"\n')
    bad = setup.knock("--config", config, "work", host=None, public=False)
    assert bad.returncode == 1
    assert (
        f"{config}: profiles.work.server_public_key: expected a public key".encode() in bad.stderr
    )
    assert setup.nothing_received()


def test_proxy_knocks_and_connects_over_ipv6(setup):
    with socket.create_server(("::1", 0), family=socket.AF_INET6) as listener:
        accepted = []
        threading.Thread(
            target=lambda: accepted.append(listener.accept()[0].sendall(b"hi")), daemon=True
        ).start()
        argv = [
            sys.executable,
            "-m",
            "gnocchi.client.knock",
            "--client-key-file",
            setup.client_key_file,
            "--state-dir",
            setup.tmp / "state",
            "--server-public-key",
            setup.public.hex(),
            "--proxy",
            "::1",
            str(listener.getsockname()[1]),
        ]
        result = subprocess.run(
            argv, cwd=REPO, env=setup.env, capture_output=True, timeout=30, input=b""
        )
    assert result.returncode == 0, result.stderr
    assert result.stdout == b"hi"
    verify2(setup.receive(socket.AF_INET6, timeout=0), setup.public, setup.private, "::1")


def test_a_profile_with_a_rotations_next_key_knocks_with_it_then_falls_back(setup):
    """The next key first (the server takes it from the start of the overlap); when
    --proxy's connect fails, the next attempt uses the current key (a rotation undone)."""
    for _ in range(20):
        next_private = os.urandom(32)
        next_public = sodium.crypto_scalarmult_base(next_private)
        if knock_port(next_public) > 1024 and knock_port(next_public) != knock_port(setup.public):
            catcher = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                catcher.bind((LOOPBACK, knock_port(next_public)))
                break
            except OSError:
                catcher.close()
    else:
        pytest.fail("no free port for the next key")
    config = setup.tmp / "knock.toml"
    config.write_text(
        f'[profiles.work]\nhost = "{LOOPBACK}"\nclient_key_file = "client.key"\n'
        f'server_public_key = "{setup.public.hex()}"\n'
        f'next_server_public_key = "{next_public.hex()}"\n'
    )
    with catcher, socket.socket(socket.AF_INET, socket.SOCK_STREAM) as refusing:
        refusing.bind((LOOPBACK, 0))  # bound, not listening: each connect is refused
        out = setup.knock(
            "--config",
            config,
            "--attempts",
            "2",
            "--connect-timeout",
            "1",
            "--proxy",
            LOOPBACK,
            str(refusing.getsockname()[1]),
            host=None,
            public=False,
        )
        assert out.returncode == 1 and b"after 2 knocks" in out.stderr
        assert select.select([catcher], [], [], 5)[0]
        first = verify2(catcher.recv(2048), next_public, next_private, LOOPBACK)
    second = verify2(setup.receive(), setup.public, setup.private, LOOPBACK)
    assert first.client == second.client == setup.client_public

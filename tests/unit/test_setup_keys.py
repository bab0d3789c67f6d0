"""`gnocchi setup` and `gnocchi check` for a server with a v2 key (docs/PROTOCOL.md,
"Moving a v1 deployment to v2"): gnocchi.socket listens on every key's knock port,
gnocchi.service is handed every key file as a credential, and check refuses a unit
that would not give the verifier its keys. Subprocesses, as an admin runs them,
against a drop-in directory (--unit-dir) instead of a running systemd.
"""

from test_check import Server, gnocchi

import pytest


@pytest.fixture
def s(tmp_path) -> Server:
    return Server(tmp_path)


def add_v2(s: Server, *args) -> int:
    out = gnocchi("keygen", "--private", s.tmp / "private.key", *args)
    assert out.returncode == 0, out.stderr
    s.write_config(extra=f'private_key_file = "{s.tmp / "private.key"}"\n')
    return int(out.stdout)


def setup(s: Server) -> str:
    out = gnocchi("setup", "--config", s.config, "--unit-dir", s.units)
    assert out.returncode == 0, out.stderr
    return out.stdout


def test_a_v2_key_on_its_own_port_needs_setup_for_the_socket_and_the_service(s):
    port2 = add_v2(s)
    refused = s.check()
    assert refused.returncode == 1
    assert (
        f"sets UDP {s.port}, but the knock ports of the server's keys are {s.port}, "
        f"{port2}; fix: run `gnocchi setup`"
    ) in refused.stderr
    assert "keys.conf does not hand gnocchi.service the key files" in refused.stderr
    said = setup(s)
    assert f"gnocchi.socket listens on UDP port {s.port}, {port2}" in said
    assert (
        (s.units / "gnocchi.socket.d" / "port.conf")
        .read_text()
        .endswith(f"ListenDatagram=\nListenDatagram={s.port}\nListenDatagram={port2}\n")
    )
    assert (
        (s.units / "gnocchi.service.d" / "keys.conf")
        .read_text()
        .endswith(
            f"[Service]\nLoadCredential=\nLoadCredential=server.key:{s.key}\n"
            f"LoadCredential=private.key:{s.tmp / 'private.key'}\n"
        )
    )
    passed = s.check()
    assert passed.returncode == 0, passed.stderr
    assert f"knock port {s.port}/udp, {port2}/udp (gnocchi.socket)" in passed.stdout


def test_a_v2_key_drawn_for_the_v1_port_keeps_one_port(s):
    assert add_v2(s, "--same-port-as", s.key) == s.port
    refused = s.check()
    assert refused.returncode == 1 and "sets UDP" not in refused.stderr  # the port is right
    assert "keys.conf does not hand gnocchi.service" in refused.stderr  # the credential is not
    setup(s)
    assert s.check().returncode == 0


def test_with_v1_off_the_v1_key_is_neither_read_nor_handed_over(s):
    port2 = add_v2(s)
    s.write_config(extra=f'v1 = false\nprivate_key_file = "{s.tmp / "private.key"}"\n')
    s.key.unlink()
    setup(s)
    assert (
        (s.units / "gnocchi.socket.d" / "port.conf")
        .read_text()
        .endswith(f"ListenDatagram=\nListenDatagram={port2}\n")
    )
    assert "server.key" not in (s.units / "gnocchi.service.d" / "keys.conf").read_text()
    passed = s.check()
    assert passed.returncode == 0, passed.stderr

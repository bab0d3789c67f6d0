"""`gnocchi setup` as an admin runs it: the drop-in it writes, and its refusals.

Runs the checkout's CLI as a subprocess with --unit-dir in a temporary
directory; no systemd needed (the booted-systemd test, test_system.py, runs
the same command on a real one).
"""

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]


def gnocchi(*args, check=True):
    proc = subprocess.run(
        [sys.executable, "-m", "gnocchi.admin", *args],
        cwd=ROOT,
        text=True,
        capture_output=True,
        timeout=60,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"gnocchi {args}: rc {proc.returncode}\n{proc.stderr}")
    return proc


@pytest.fixture
def server(tmp_path):
    key = tmp_path / "server.key"
    port = int(gnocchi("keygen", "--server", str(key)).stdout)
    config = tmp_path / "gnocchi.toml"
    config.write_text(f'server_key_file = "{key}"\nstate_dir = "{tmp_path}/state"\n')
    units = tmp_path / "units"
    return key, port, config, units


def drop_in(units: Path) -> Path:
    return units / "gnocchi.socket.d" / "port.conf"


def test_writes_the_drop_in_for_the_keys_port_and_says_so(server):
    key, port, config, units = server
    out = gnocchi("setup", "--config", str(config), "--unit-dir", str(units)).stdout
    text = drop_in(units).read_text()
    # Clearing first, then the port: the drop-in is the only place it is set.
    assert "[Socket]\nListenDatagram=\nListenDatagram=%d\n" % port in text
    assert str(drop_in(units)) in out and f"UDP port {port}" in out
    assert "systemctl enable --now" in out
    assert drop_in(units).stat().st_mode & 0o777 == 0o644
    assert sorted(p.name for p in drop_in(units).parent.iterdir()) == ["port.conf"]


def test_second_run_changes_nothing_and_a_new_key_moves_the_port(server):
    key, port, config, units = server
    gnocchi("setup", "--config", str(config), "--unit-dir", str(units))
    again = gnocchi("setup", "--config", str(config), "--unit-dir", str(units)).stdout
    assert "already sets" in again and str(port) in again
    for _ in range(20):  # a fresh key with another port (2 in 65536 chance to repeat)
        os.unlink(key)
        new_port = int(gnocchi("keygen", "--server", str(key)).stdout)
        if new_port != port:
            break
    out = gnocchi("setup", "--config", str(config), "--unit-dir", str(units)).stdout
    assert f"ListenDatagram={new_port}\n" in drop_in(units).read_text()
    assert "restart gnocchi.socket" in out


def test_the_verifier_helper_and_actions_name_the_server_key_in_every_journal_entry(server):
    key, port, config, units = server
    fingerprint = gnocchi("port", str(key)).stderr.split()[-1]
    out = gnocchi("setup", "--config", str(config), "--unit-dir", str(units)).stdout
    for unit in ("gnocchi.service", "gnocchi-helper.service", "gnocchi-action@.service"):
        path = units / f"{unit}.d" / "server-key.conf"
        assert f"[Service]\nLogExtraFields=GNOCCHI_SERVER_KEY={fingerprint}\n" in path.read_text()
        assert str(path) in out
    again = gnocchi("setup", "--config", str(config), "--unit-dir", str(units)).stdout
    assert "server-key.conf" not in again


def test_creates_the_counter_store_once_and_never_touches_it_again(server, tmp_path):
    key, port, config, units = server
    out = gnocchi("setup", "--config", str(config), "--unit-dir", str(units)).stdout
    store = tmp_path / "state" / "counters"
    assert f"created the counter store {store}" in out
    assert store.read_text() == "# gnocchi counters v1\n"
    assert store.stat().st_mode & 0o777 == 0o600
    assert (tmp_path / "state").stat().st_mode & 0o777 == 0o700
    store.write_text("# gnocchi counters v1\n" + "ab" * 32 + " 7\n")  # knocks happened
    out = gnocchi("setup", "--config", str(config), "--unit-dir", str(units)).stdout
    assert "created" not in out and store.read_text().endswith(" 7\n")


def test_missing_config_is_named_and_nothing_is_written(tmp_path):
    units = tmp_path / "units"
    proc = gnocchi(
        "setup", "--config", str(tmp_path / "nope.toml"), "--unit-dir", str(units), check=False
    )
    assert proc.returncode == 1
    assert str(tmp_path / "nope.toml") in proc.stderr
    assert not units.exists()


def test_loose_server_key_is_refused_with_the_fix(server):
    key, port, config, units = server
    os.chmod(key, 0o644)
    proc = gnocchi("setup", "--config", str(config), "--unit-dir", str(units), check=False)
    assert proc.returncode == 1
    assert f"chmod 600 {key}" in proc.stderr
    assert not drop_in(units).exists()


def test_missing_server_key_is_named(server):
    key, port, config, units = server
    os.unlink(key)
    proc = gnocchi("setup", "--config", str(config), "--unit-dir", str(units), check=False)
    assert proc.returncode == 1 and str(key) in proc.stderr
    assert "gnocchi keygen" in proc.stderr

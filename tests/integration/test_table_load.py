"""gnocchi/admin/nft_table.py in a real kernel: loading and reloading table inet gnocchi
never opens a window and never forgets, or revives, a pending knock.

Runs nft_table.load()/unload() inside the server namespace of a tests/netns.py Net
(subprocesses such as nft inherit that namespace); knocks are elements added
the way the helper adds them, and a client connection proves one still works.
"""

import shutil
import subprocess

import pytest

from gnocchi.admin import nft_table
from support import TABLE_FILE, EchoServices, Net, inside, tcp_connect

KNOCK_SECONDS = 30


@pytest.fixture
def net():
    if shutil.which("unshare") is None:
        pytest.skip("needs unshare")
    with Net("tl") as net, EchoServices(net.server, tcp_ports=(22, 2222)):
        yield net


def write(tmp_path, name: str, text: str):
    path = tmp_path / name
    path.write_text(text)
    return str(path)


def knock(net, ip=None, port=22):
    """An element as the helper adds it (helper/nft.py: one add with its timeout)."""
    ip = ip or net.client.ip
    net.server.nft(
        "add",
        "element",
        "inet",
        "gnocchi",
        "knocked4",
        f"{{ {ip} . tcp . {port} timeout {KNOCK_SECONDS}s }}",
    )


def pending(net) -> list:
    with inside(net.server):
        live = nft_table.live()
    return [] if live is None else live.pending()


def load(net, path: str) -> nft_table.Loaded:
    with inside(net.server):
        return nft_table.load(path)


def handles(net) -> str:
    """The rules with their kernel handles: equal only if no rule was replaced."""
    return net.server.nft("-a", "list", "chain", "inet", "gnocchi", "admit").stdout


def test_first_load_arms_and_a_second_changes_nothing(net):
    loaded = load(net, str(TABLE_FILE))
    assert loaded.how == "armed" and loaded.table.protected() == {"tcp": [22], "udp": []}
    assert tcp_connect(net.client, net.server.ip, 22) is None, "armed: no knock, no connection"
    knock(net)
    before = handles(net)
    again = load(net, str(TABLE_FILE))
    assert (again.how, again.kept) == ("unchanged", 1)
    assert handles(net) == before
    assert tcp_connect(net.client, net.server.ip, 22) is not None, "the pending knock still works"
    assert tcp_connect(net.client, net.server.ip, 22) is None, "and only once"


def test_changing_the_protected_ports_touches_nothing_else(net, tmp_path):
    load(net, str(TABLE_FILE))
    knock(net)
    before = handles(net)
    edited = write(
        tmp_path,
        "ports.nft",
        TABLE_FILE.read_text().replace("elements = { 22 }", "elements = { 22, 2222 }"),
    )
    loaded = load(net, edited)
    assert (loaded.how, loaded.kept) == ("ports", 1)
    assert loaded.table.protected() == {"tcp": [22, 2222], "udp": []}
    assert handles(net) == before, "the rules were not reloaded"
    assert [(p.address.exploded, p.port) for p in pending(net)] == [(net.client.ip, 22)]
    assert tcp_connect(net.client, net.server.ip, 2222) is None, "2222 is protected now"
    assert tcp_connect(net.client, net.server.ip, 22) is not None


def test_new_rules_replace_the_table_and_carry_pending_knocks(net, tmp_path):
    load(net, str(TABLE_FILE))
    knock(net)
    knock(net, ip="198.18.0.99")
    left = {p.address.exploded: p.expires for p in pending(net)}
    changed = write(
        tmp_path, "rules.nft", TABLE_FILE.read_text().replace("\t\tdrop\n", "\t\tcounter drop\n")
    )
    loaded = load(net, changed)
    assert (loaded.how, loaded.kept) == ("replaced", 2)
    assert "counter packets" in net.server.nft("list", "chain", "inet", "gnocchi", "admit").stdout
    carried = {p.address.exploded: p for p in pending(net)}
    assert set(carried) == set(left)
    for address, p in carried.items():
        # Never less time than it had, never more than the helper gave it.
        assert left[address] <= p.expires + 1 and p.timeout <= KNOCK_SECONDS
    assert tcp_connect(net.client, net.server.ip, 22) is not None
    assert tcp_connect(net.client, net.server.ip, 22) is None
    # Loading the same file again is recognised as unchanged (counters are state).
    assert load(net, changed).how == "unchanged"


def test_a_knock_used_while_the_table_is_replaced_is_not_revived(net, tmp_path, monkeypatch):
    load(net, str(TABLE_FILE))
    knock(net)
    with inside(net.server):
        stale = nft_table.live()
    assert len(stale.pending()) == 1
    # The knock is used (its element deleted by the first SYN) after the loader read it.
    assert tcp_connect(net.client, net.server.ip, 22) is not None
    assert pending(net) == []
    reads = []
    real_live = nft_table.live

    def live_first_stale():
        reads.append(1)
        return stale if len(reads) == 1 else real_live()

    monkeypatch.setattr(nft_table, "live", live_first_stale)
    changed = write(
        tmp_path, "rules.nft", TABLE_FILE.read_text().replace("\t\tdrop\n", "\t\tcounter drop\n")
    )
    loaded = load(net, changed)
    assert len(reads) == 2, "the first transaction failed on its guard and was retried"
    assert (loaded.how, loaded.kept) == ("replaced", 0)
    assert pending(net) == []
    assert tcp_connect(net.client, net.server.ip, 22) is None, "no second connection"


def test_a_broken_file_is_refused_and_the_live_table_stays(net, tmp_path):
    load(net, str(TABLE_FILE))
    knock(net)
    before = net.server.nft("list", "table", "inet", "gnocchi").stdout
    broken = write(
        tmp_path,
        "broken.nft",
        TABLE_FILE.read_text().replace("elements = { 22 }", "elements = { 22 x }"),
    )
    with pytest.raises(nft_table.TableError, match="nft refuses it"):
        load(net, broken)
    after = net.server.nft("list", "table", "inet", "gnocchi").stdout

    def strip(text):
        return [line for line in text.splitlines() if "expires" not in line]

    assert strip(after) == strip(before) and len(pending(net)) == 1


def test_unload_removes_the_table_and_may_run_twice(net):
    load(net, str(TABLE_FILE))
    with inside(net.server):
        assert nft_table.unload() is True
        assert nft_table.live() is None
        assert nft_table.unload() is False
    assert tcp_connect(net.client, net.server.ip, 22) is not None, "disarmed: open again"


def test_the_replacement_script_guards_each_carried_knock():
    old = nft_table.Table(())
    new = nft_table.Table(
        ({"set": {"name": "knocked4", "type": ["ipv4_addr", "inet_proto", "inet_service"]}},)
    )
    p4 = nft_table._pending(
        {"elem": {"val": {"concat": ["198.18.0.1", "tcp", 22]}, "timeout": 30, "expires": 29}}
    )
    p6 = nft_table._pending(
        {"elem": {"val": {"concat": ["fd00::1", "udp", 53]}, "timeout": 30, "expires": 0}}
    )
    script, dropped = nft_table.replacement("FILE", new, [p4, p6])
    assert script.splitlines() == [
        "delete element inet gnocchi knocked4 { 198.18.0.1 . tcp . 22 }",
        "delete element inet gnocchi knocked6 { fd00::1 . udp . 53 }",
        "FILE",
        "add element inet gnocchi knocked4 { 198.18.0.1 . tcp . 22 timeout 30s }",
    ]
    assert dropped == 1  # the new table has no knocked6 of that type
    assert old.pending() == []
    # Not what the helper makes: ignored, never carried.
    assert nft_table._pending({"elem": {"val": {"concat": ["x", "tcp", 22]}}}) is None
    assert nft_table._pending({"elem": {"val": {"concat": ["198.18.0.1", "sctp", 22]}}}) is None


def test_the_test_load_needs_no_firewall_of_ours():
    """It runs in a scratch namespace: the caller's ruleset is never touched."""
    loaded = nft_table.test_load(str(TABLE_FILE))
    assert set(loaded.sets()) == {
        "protected_tcp",
        "protected_udp",
        "knocked4",
        "knocked6",
        "knock_port",
        "knock_sources4",
        "knock_sources6",
        "knock_sites6",
        "known_sites6",
        "knockers6",
    }
    assert loaded.knock_ports() == [], "the file leaves the knock port to the loader"
    assert subprocess.run(["unshare", "--user", "--net", "--keep-caps", "true"]).returncode == 0


def config_file(tmp_path, protect: str = "") -> str:
    """A config (and its server key) in tmp_path; protect: its [protect] table, if any."""
    from gnocchi.shared import keys

    keys.write_secret(tmp_path / "server.key", keys.new_server_key())
    return write(
        tmp_path, "gnocchi.toml", f'server_key_file = "{tmp_path / "server.key"}"\n' + protect
    )


def test_the_protected_ports_are_the_configs_loaded_with_the_rules(net, tmp_path):
    """[protect] in the config decides the ports, not the rules file (whose own default
    is 22): they are filled in the transaction that loads the rules, and a change of
    them alone touches neither the rules nor a pending knock."""
    config = config_file(tmp_path, "[protect]\ntcp = [2222]\nudp = [60001]\n")
    want = nft_table.wanted(config, str(TABLE_FILE))
    with inside(net.server):
        loaded = nft_table.load_wanted(want)
    assert loaded.how == "armed"
    with inside(net.server):
        assert nft_table.live().protected() == {"tcp": [2222], "udp": [60001]}
        assert nft_table.live().knock_ports() == want.knock_ports
    assert tcp_connect(net.client, net.server.ip, 22) is not None, "22 is not protected"
    assert tcp_connect(net.client, net.server.ip, 2222) is None
    knock(net, port=2222)
    before = handles(net)
    (tmp_path / "gnocchi.toml").write_text(
        (tmp_path / "gnocchi.toml").read_text().replace("tcp = [2222]", "tcp = [22, 2222]")
    )
    with inside(net.server):
        again = nft_table.load_wanted(nft_table.wanted(config, str(TABLE_FILE)))
    assert (again.how, again.kept) == ("ports", 1) and handles(net) == before
    assert tcp_connect(net.client, net.server.ip, 22) is None, "22 is protected now"
    assert tcp_connect(net.client, net.server.ip, 2222) is not None, "the knock kept"


def test_a_03_table_file_beside_a_config_without_protect_still_gives_the_ports(net, tmp_path):
    """An upgrade from 0.3 keeps an admin's /etc/gnocchi/gnocchi.nft (its protected sets
    edited) until `gnocchi protect` writes [protect]: its ports are still protected."""
    config = config_file(tmp_path)
    write(
        tmp_path,
        "gnocchi.nft",
        TABLE_FILE.read_text().replace("elements = { 22 }", "elements = { 22, 2222 }"),
    )
    want = nft_table.wanted(config, str(TABLE_FILE))
    assert want.protected == {"tcp": [22, 2222], "udp": []}
    assert "the table file of gnocchi 0.3 and before" in want.ports.source
    with inside(net.server):
        nft_table.load_wanted(want)
    assert tcp_connect(net.client, net.server.ip, 2222) is None
    # Without that file, and without [protect]: tcp 22, as 0.3 shipped it.
    (tmp_path / "gnocchi.nft").unlink()
    assert nft_table.wanted(config, str(TABLE_FILE)).protected == {"tcp": [22], "udp": []}

"""Issue 10: per-client `sources` and `expires`, from the config to the verifier's
decision. A refused knock costs no write: its counter is not stored, and its
entry shares the budget of entries for packets whose counter was not stored."""
import datetime
import ipaddress

import pytest

from support import HelperRecorder, Keys
from support.verifier import handle

from gnocchi.server import config, counters, events, keyring, verifier
from gnocchi.shared import protocol

UTC = datetime.timezone.utc


def load(tmp_path, client_lines: str, key="ab" * 32, allow='["22"]') -> config.Config:
    path = tmp_path / "gnocchi.toml"
    path.write_text(f'state_dir = "{tmp_path}"\nhelper_socket = "{tmp_path}/h.sock"\n'
                    f'[clients.alice]\npublic_key = "{key}"\nallow = {allow}\n{client_lines}')
    return config.load(str(path))


def test_sources_and_expires_parse(tmp_path):
    [alice] = load(tmp_path, 'sources = ["198.51.100.0/24", "2001:db8::/48", "203.0.113.7"]\n'
                             'expires = 2026-12-31\n').clients
    assert alice.sources == (ipaddress.ip_network("198.51.100.0/24"),
                             ipaddress.ip_network("2001:db8::/48"),
                             ipaddress.ip_network("203.0.113.7/32"))
    assert alice.expires == datetime.datetime(2026, 12, 31, tzinfo=UTC)
    [bob] = load(tmp_path, "expires = 2026-12-31T18:00:00+01:00\n").clients
    assert bob.expires == datetime.datetime(2026, 12, 31, 17, tzinfo=UTC)
    [carol] = load(tmp_path, "").clients
    assert carol.sources == () and carol.expires is None


@pytest.mark.parametrize("line, key, problem", [
    ('sources = ["198.51.100.1/24"]', "clients.alice.sources[0]", "no host bits set"),
    ('sources = ["here"]', "clients.alice.sources[0]", "is not an address or a network"),
    ('sources = "198.51.100.0/24"', "clients.alice.sources", "must be a list"),
    ('expires = "2026-12-31"', "clients.alice.expires", "no quotes"),
    ("expires = 2026-12-31T18:00:00", "clients.alice.expires", "has no offset"),
])
def test_a_bad_policy_names_the_file_and_the_key(tmp_path, line, key, problem):
    with pytest.raises(config.ConfigError) as e:
        load(tmp_path, line + "\n")
    assert str(e.value).startswith(f"{tmp_path / 'gnocchi.toml'}: {key}: ")
    assert problem in str(e.value)


class Stack:
    """The real Verifier, in process, with a recording helper socket and a set clock."""

    def __init__(self, tmp_path, policy: str, allow='["22"]'):
        self.k = Keys(tmp_path)
        cfg = load(tmp_path, policy, key=self.k.public("alice"), allow=allow)
        self.helper = HelperRecorder(tmp_path / "h.sock")
        self.sent: list[dict] = []
        counters.create(str(tmp_path))
        self.store = counters.Store(str(tmp_path)).load()
        self.clock = datetime.datetime(2026, 6, 1, tzinfo=UTC)
        self.v = verifier.Verifier(cfg, keyring.Keyring(self.k.server, ()), self.store,
                                   events.EventLog(send=self.sent.append), now=lambda: self.clock)
        self.dst = ipaddress.IPv4Address("198.18.3.2")
        self.counter = 0

    def knock(self, source: str, data: bytes = b"open 22"):
        self.counter += 1
        packet = protocol.build_packet(self.k.server, self.k.seeds["alice"], self.counter,
                                       data, self.dst.packed)
        handle(self.v, packet, ipaddress.ip_address(source), self.dst)
        return self.sent[-1]


@pytest.fixture
def stack(tmp_path):
    s = Stack(tmp_path, 'sources = ["198.51.100.0/24", "2001:db8::/48"]\nexpires = 2026-12-31\n')
    yield s
    s.helper.close()


def test_a_knock_from_outside_the_sources_is_refused_and_not_stored(stack):
    entry = stack.knock("203.0.113.9")
    assert entry["GNOCCHI_EVENT"] == "refused" and "GNOCCHI_COUNTER" not in entry
    assert "203.0.113.9 is not among the client's sources" in entry["MESSAGE"]
    assert stack.store.last(bytes.fromhex(stack.k.public("alice"))) == 0
    assert stack.helper.messages == []
    assert stack.knock("198.51.100.20")["GNOCCHI_EVENT"] == "accepted"
    assert stack.knock("2001:db8:0:1::5")["GNOCCHI_EVENT"] == "accepted"
    assert len(stack.helper.messages) == 2


def test_a_knock_from_a_source_no_client_may_use_is_refused_before_anything_is_stored(tmp_path):
    # The source rule (an IPv6 source embedding IPv4, loopback, multicast...) is the
    # same check point as the client's own sources: no write, no helper request,
    # and the real client's next knock (a lower counter) is not made a replay.
    s = Stack(tmp_path, "")
    try:
        s.counter = 10
        entry = s.knock("::ffff:198.51.100.7")
        assert entry["GNOCCHI_EVENT"] == "refused" and "GNOCCHI_COUNTER" not in entry
        assert "embeds an IPv4 address" in entry["MESSAGE"]
        assert s.store.last(bytes.fromhex(s.k.public("alice"))) == 0
        assert s.helper.messages == []
        s.counter = 1
        assert s.knock("198.51.100.7")["GNOCCHI_EVENT"] == "accepted"
    finally:
        s.helper.close()


def test_an_expired_client_is_refused_from_that_day_on(stack):
    stack.clock = datetime.datetime(2026, 12, 30, 23, 59, tzinfo=UTC)
    assert stack.knock("198.51.100.20")["GNOCCHI_EVENT"] == "accepted"
    stack.clock = datetime.datetime(2026, 12, 31, 0, 0, tzinfo=UTC)
    entry = stack.knock("198.51.100.20")
    assert entry["GNOCCHI_EVENT"] == "refused" and "expired" in entry["MESSAGE"]
    assert "GNOCCHI_COUNTER" not in entry
    assert len(stack.helper.messages) == 1


def test_policy_refusals_share_the_budget_of_unstored_entries(stack):
    stack.v.client_limit.burst = stack.v.address_limit.burst = 10**6  # the budget alone
    for _ in range(events.BUDGET + 30):
        stack.knock("203.0.113.9")
    refused = [e for e in stack.sent if e["GNOCCHI_EVENT"] == "refused"]
    assert len(refused) == events.BUDGET


def test_one_clients_flood_costs_it_alone(tmp_path):
    s = Stack(tmp_path, "")
    try:
        alice = bytes.fromhex(s.k.public("alice"))
        for _ in range(61):                    # 61 knocks at once: the lockout
            s.knock("198.51.100.20")
        accepted = [e for e in s.sent if e["GNOCCHI_EVENT"] == "accepted"]
        assert len(accepted) == verifier.CLIENT_BURST == len(s.helper.messages)
        on_disk = counters.Store(str(tmp_path)).load()
        assert on_disk.last(alice) == verifier.CLIENT_BURST   # one write per accepted knock
        assert s.store.last(alice) == 61       # the dropped ones are spent all the same
        s.v.log.flush()
        [summary] = [e for e in s.sent if e["GNOCCHI_EVENT"] == "dropped-summary"]
        assert summary["GNOCCHI_DROPPED_RATE_LIMITED"] == str(61 - verifier.CLIENT_BURST)
        assert f"(alice {61 - verifier.CLIENT_BURST})" in summary["MESSAGE"]
        assert len(s.sent) == verifier.CLIENT_BURST + 1
    finally:
        s.helper.close()



def test_several_ports_are_one_decision_and_one_helper_request(tmp_path):
    """Issue 12: every port of an `open` must be allowed; then the verifier asks
    the helper once for all of them and logs one entry naming them all."""
    s = Stack(tmp_path, "", allow='["22", "60001/udp"]')
    try:
        refused = s.knock("198.51.100.20", b"open 22 60002/udp")
        assert refused["GNOCCHI_EVENT"] == "refused"
        assert refused["GNOCCHI_REQUEST"] == "open 22/tcp 60002/udp"
        assert refused["GNOCCHI_REASON"] == ("60002/udp is not in this client's allow list "
                                             "(22/tcp, 60001/udp)")
        assert s.helper.messages == []                  # not even the allowed port
        accepted = s.knock("198.51.100.20", b"open 22 60001/udp")
        assert accepted["GNOCCHI_EVENT"] == "accepted"
        assert accepted["GNOCCHI_REQUEST"] == "open 22/tcp 60001/udp"
        assert "open 22/tcp 60001/udp" in accepted["MESSAGE"]
        assert len(s.helper.messages) == 1              # one request for both ports
        assert len(s.sent) == 2                         # one entry per knock
    finally:
        s.helper.close()

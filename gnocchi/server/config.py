"""The server config (docs/contracts.md, "Server config"), parsed into frozen dataclasses.

Trusts the config file's author, not the file's spelling: every key is checked,
unknown keys are errors (a typo must not silently drop a restriction), and
every ConfigError names the file and the key path, e.g.
"/etc/gnocchi/gnocchi.toml: clients.alice.allow[1]: '22/sctp' is not PORT,
PORT/tcp or PORT/udp" (gnocchi.shared.checked_toml, shared with the client's
profiles). A Config that loads is consistent: every client's actions exist,
its default request (one port or several) is one it is allowed, and no public
key belongs to two clients.

A broken file never changes what runs: load_running() falls back to the last
good copy of the file (last_good_path), which only root writes, and only with
a file that loaded (gnocchi/admin/last_good.py). The verifier cannot write it:
it sits outside the verifier's StateDirectory, and it passes StrictModes before
it is trusted, like the file itself.
"""
from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Callable
from dataclasses import dataclass

from gnocchi.server import DEFAULT_CONFIG, strict
from gnocchi.shared import checked_toml, knock_request
from gnocchi.shared.keys import parse_public_hex

# The last good copy of DEFAULT_CONFIG: root's, outside the verifier's StateDirectory.
LAST_GOOD = "/var/lib/gnocchi-config/last-good.toml"
PROTOCOLS = ("tcp", "udp")
DEFAULTS = {
    "server_key_file": "/etc/gnocchi/server.key",
    "state_dir": "/var/lib/gnocchi",
    "helper_socket": "/run/gnocchi/helper.sock",
    "action_socket": "/run/gnocchi/action.sock",
}
# Names end up in logs and in actions' environment: keep them plain.
NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_ACTION_TIMEOUT = 600  # seconds; gnocchi-action@.service's RuntimeMaxSec= is above it
DEFAULT_ACTION_TIMEOUT = 10


# The wall clock that clients' expiry is read against (the verifier's tests set their own).
Clock = Callable[[], datetime.datetime]


def utc_now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


class ConfigError(Exception):
    """str() is "FILE: KEY: what is wrong"."""


@dataclass(frozen=True)
class Action:
    name: str
    argv: tuple[str, ...]
    timeout: float


@dataclass(frozen=True)
class Client:
    name: str
    public_key: bytes
    allow: tuple[knock_request.Open, ...]
    default: knock_request.Request | None  # what an empty DATA means; None: refused
    actions: tuple[str, ...]
    sources: tuple = ()                       # ip_networks; empty: any source
    expires: datetime.datetime | None = None  # aware; knocks from then on are refused

    def refusal(self, source: ipaddress.IPv4Address | ipaddress.IPv6Address,
                now: datetime.datetime) -> str | None:
        """Why this client's knock from source at now is refused by its own policy, or None."""
        if self.expires is not None and now >= self.expires:
            return f"the client expired at {self.expires.isoformat()}"
        if self.sources and not any(source in net for net in self.sources):
            return f"{source} is not among the client's sources"
        return None

    def why_not(self, request: knock_request.Request) -> str | None:
        """None if this client may make request, else why not."""
        if isinstance(request, (knock_request.Open, knock_request.OpenPorts)):
            # Every port must be allowed: a request is opened whole or not at all.
            refused = [f"{o.port}/{o.proto}" for o in request.opens if o not in self.allow]
            if refused:
                allowed = ", ".join(f"{o.port}/{o.proto}" for o in self.allow) or "none"
                return (f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not in "
                        f"this client's allow list ({allowed})")
        if isinstance(request, knock_request.Run) and request.name not in self.actions:
            allowed = ", ".join(self.actions) or "none"
            return f"action {request.name!r} is not in this client's actions ({allowed})"
        return None


@dataclass(frozen=True)
class Target:
    """Where a forward goes: a port of another host."""
    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    port: int

    def __str__(self) -> str:
        return f"{self.address}:{self.port}" if self.address.version == 4 else \
            f"[{self.address}]:{self.port}"


@dataclass(frozen=True)
class Forward:
    """[forwards.NAME]: a port of this host (listen) that a knock maps, for that knock's
    source only, to a port of another host, one per family (docs/firewall.md,
    "Forwards")."""
    name: str
    listen: knock_request.Open
    to: tuple[Target, ...]  # one or two, of different families


@dataclass(frozen=True)
class Config:
    path: str
    server_key_file: str
    server_addresses: tuple[ipaddress.IPv4Address, ...]  # empty: each knock's destination
    state_dir: str
    helper_socket: str
    clients: tuple[Client, ...]
    actions: tuple[Action, ...]
    action_socket: str = DEFAULTS["action_socket"]
    # [protect]: {"tcp": (22,), "udp": ()}; None without the table (then the ports of a
    # 0.3 table file beside the config, or tcp 22: gnocchi.admin.nft_table.protected_ports)
    protect: dict[str, tuple[int, ...]] | None = None
    forwards: tuple[Forward, ...] = ()

    def unreachable(self, request: knock_request.Request,
                    source: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str | None:
        """Why a knock from source cannot reach a forward that request opens, or None:
        the kernel translates within one family, and the forward may have no target of
        the source's."""
        opens = getattr(request, "opens", ())
        for f in self.forwards:
            if f.listen in opens and all(t.address.version != source.version for t in f.to):
                return (f"forward {f.name} ({f.listen.port}/{f.listen.proto}) reaches only "
                        f"{', '.join(map(str, f.to))}: knock over IPv{f.to[0].address.version}")
        return None

    def client_by_key(self) -> dict[bytes, Client]:
        return {c.public_key: c for c in self.clients}

    def action(self, name: str) -> Action:
        return next(a for a in self.actions if a.name == name)


class _Where(checked_toml.Where):
    """Errors that name the file and the key path, and the config's own names."""

    def __init__(self, path: str):
        super().__init__(path, ConfigError)

    def name(self, value: str, key: str) -> str:
        if not NAME.fullmatch(value):
            raise self.error(key, f"{value!r} is not a name (letters, digits, _ . -; "
                                  f"at most 64; starts with a letter or digit)")
        return value


def load(path: str = DEFAULT_CONFIG) -> Config:
    where = _Where(path)
    return parse(where.read(missing="no such file (the package installs a commented example "
                                    "there)"), where)


def parse(doc: dict, where: _Where) -> Config:
    where.table(doc, "", {"server_key_file", "server_addresses", "state_dir", "helper_socket",
                          "action_socket", "clients", "actions", "protect", "forwards"})
    paths = {k: where.path_string(doc.get(k, v), k) for k, v in DEFAULTS.items()}
    addresses = []
    for i, text in enumerate(where.string_list(doc.get("server_addresses", []),
                                               "server_addresses")):
        try:
            addresses.append(ipaddress.IPv4Address(text))
        except ValueError:
            raise where.error(f"server_addresses[{i}]", f"{text!r} is not an IPv4 address "
                              "(knocks sign the IPv4 address they were sent to)") from None
    actions = tuple(_action(where, name, value)
                    for name, value in where.entries(doc.get("actions", {}), "actions"))
    action_names = {a.name for a in actions}
    forwards: list[Forward] = []
    for name, value in where.entries(doc.get("forwards", {}), "forwards"):
        forward = _forward(where, name, value)
        if twin := next((f for f in forwards if f.listen == forward.listen), None):
            raise where.error(f"forwards.{name}.listen", f"{forward.listen.port}/"
                              f"{forward.listen.proto} is also forwards.{twin.name}'s: a port "
                              "forwards to one place")
        forwards.append(forward)
    clients = []
    seen_keys: dict[bytes, str] = {}
    for name, value in where.entries(doc.get("clients", {}), "clients"):
        client = _client(where, name, value, action_names, forwards)
        if client.public_key in seen_keys:
            raise where.error(f"clients.{name}.public_key",
                              f"is also clients.{seen_keys[client.public_key]}'s key")
        seen_keys[client.public_key] = name
        clients.append(client)
    protect = _protect(where, doc["protect"]) if "protect" in doc else None
    return Config(where.path, paths["server_key_file"], tuple(addresses), paths["state_dir"],
                  paths["helper_socket"], tuple(clients), actions, paths["action_socket"],
                  protect, tuple(forwards))


def _action(where: _Where, name: str, entry: object) -> Action:
    key = f"actions.{name}"
    where.name(name, key)
    value = where.table(entry, key, {"argv", "timeout"}, {"argv"})
    argv = where.string_list(value["argv"], f"{key}.argv")
    if not argv:
        raise where.error(f"{key}.argv", "must name a program")
    if not os.path.isabs(argv[0]):
        raise where.error(f"{key}.argv[0]", f"{argv[0]!r} is not an absolute path "
                          "(actions run without a shell or PATH search)")
    timeout = value.get("timeout", DEFAULT_ACTION_TIMEOUT)
    if (isinstance(timeout, bool) or not isinstance(timeout, (int, float))
            or not 0 < timeout <= MAX_ACTION_TIMEOUT):
        raise where.error(f"{key}.timeout", f"{timeout!r} is not a number of seconds "
                          f"above 0 and at most {MAX_ACTION_TIMEOUT}")
    return Action(name, tuple(argv), float(timeout))


def _forward(where: _Where, name: str, entry: object) -> Forward:
    """[forwards.NAME]: listen = "2222/tcp", to = "10.0.0.5:22" (or "[fd00::5]:22", or a
    list of one of each)."""
    key = f"forwards.{name}"
    where.name(name, key)
    if knock_request.parse_port(name) is not None:
        raise where.error(key, f"{name!r} reads as a port: an allow list names a forward by "
                          "its name, so the name must have a letter")
    value = where.table(entry, key, {"listen", "to"}, {"listen", "to"})
    listen = value["listen"]
    listen = knock_request.parse_port(listen) if isinstance(listen, (str, int)) else None
    if listen is None:
        raise where.error(f"{key}.listen", f"{value['listen']!r} is not PORT, PORT/tcp or "
                          "PORT/udp (the port of this host that clients connect to)")
    texts = value["to"] if isinstance(value["to"], list) else [value["to"]]
    if not 1 <= len(texts) <= 2:
        raise where.error(f"{key}.to", "must be one ADDRESS:PORT, or a list of one IPv4 and "
                          "one IPv6 ADDRESS:PORT")
    to: list[Target] = []
    for i, text in enumerate(texts):
        where_to = f"{key}.to" + (f"[{i}]" if isinstance(value["to"], list) else "")
        target = _target(where, where.string(text, where_to), where_to)
        if any(t.address.version == target.address.version for t in to):
            raise where.error(where_to, f"a second IPv{target.address.version} target: a "
                              "forward goes to one place per family")
        to.append(target)
    return Forward(name, listen, tuple(to))


def _target(where: _Where, text: str, key: str) -> Target:
    """ADDRESS:PORT: 10.0.0.5:22 or [fd00::5]:22, of a host behind this one."""
    host, _, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(host[1:-1] if host.startswith("[") and
                                       host.endswith("]") else host)
        if address.version == 6 and not host.startswith("["):
            raise ValueError
        number = int(port)
    except ValueError:
        address, number = None, 0
    if address is None or not port.isdigit() or not 0 < number < 65536 or port != str(number):
        raise where.error(key, f"{text!r} is not ADDRESS:PORT, such as 10.0.0.5:22 or "
                          "[fd00::5]:22")
    if address.is_loopback or address.is_multicast or address.is_unspecified or \
            address.is_link_local or getattr(address, "ipv4_mapped", None):
        raise where.error(key, f"{address} is not an address to forward to (a host behind "
                          "this one: a container, a VM, a LAN host)")
    return Target(address, number)


def _client(where: _Where, name: str, entry: object, action_names: set[str],
            forwards: list[Forward] | tuple[Forward, ...] = ()) -> Client:
    key = f"clients.{name}"
    where.name(name, key)
    value = where.table(entry, key, {"public_key", "allow", "default", "actions", "sources",
                                     "expires"}, {"public_key"})
    try:
        public_key = parse_public_hex(value["public_key"], f"{where.path}: {key}.public_key")
    except ValueError as e:
        raise ConfigError(str(e)) from None
    allow = []
    raw_allow = value.get("allow", [])
    if not isinstance(raw_allow, list):
        raise where.error(f"{key}.allow", f"must be a list, not {checked_toml.kind(raw_allow)}")
    by_name = {f.name: f.listen for f in forwards}
    for i, item in enumerate(raw_allow):
        port = knock_request.parse_port(item) if isinstance(item, (str, int)) else None
        port = by_name.get(item) if port is None and isinstance(item, str) else port
        if port is None:
            raise where.error(f"{key}.allow[{i}]", f"{item!r} is not PORT, PORT/tcp or PORT/udp"
                              + (f" nor a forward ({', '.join(by_name)})" if by_name else ""))
        allow.append(port)
    actions = where.string_list(value.get("actions", []), f"{key}.actions")
    for i, action in enumerate(actions):
        if action not in action_names:
            raise where.error(f"{key}.actions[{i}]", f"{action!r} is not an [actions] entry")
    sources = []
    for i, text in enumerate(where.string_list(value.get("sources", []), f"{key}.sources")):
        try:
            sources.append(ipaddress.ip_network(text))
        except ValueError:
            raise where.error(f"{key}.sources[{i}]", f"{text!r} is not an address or a "
                              "network such as 198.51.100.0/24 or 2001:db8::/48 (no host bits "
                              "set)") from None
    expires = _expiry(where, value.get("expires"), f"{key}.expires")
    client = Client(name, public_key, tuple(allow), None, tuple(actions))
    if "default" in value:
        text = where.string(value["default"], f"{key}.default")
        parsed = knock_request.parse(text.encode())
        if isinstance(parsed, knock_request.Bad):
            raise where.error(f"{key}.default", f"{text!r}: {parsed.why}")
        refusal = client.why_not(parsed)
        if refusal:
            raise where.error(f"{key}.default", f"{text!r}: {refusal}")
        default: knock_request.Request | None = parsed
    else:
        default = allow[0] if allow else None
    return Client(name, public_key, tuple(allow), default, tuple(actions), tuple(sources), expires)


def _expiry(where: _Where, value: object, key: str) -> datetime.datetime | None:
    """A TOML date (from 00:00 UTC that day) or an offset date-time; None if absent."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise where.error(key, f"{value.isoformat()} has no offset: write "
                              f"{value.isoformat()}Z (UTC) or +HH:MM")
        return value
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.UTC)
    raise where.error(key, f"must be a TOML date such as 2026-12-31 (no quotes) or a date-time "
                      f"with an offset, not {checked_toml.kind(value)}")


def _protect(where: _Where, entry: object) -> dict[str, tuple[int, ...]]:
    """[protect]: tcp = [22], udp = [] (a missing key: no port of that protocol)."""
    value = where.table(entry, "protect", set(PROTOCOLS))
    protect = {}
    for proto in PROTOCOLS:
        key = f"protect.{proto}"
        ports = value.get(proto, [])
        if not isinstance(ports, list):
            raise where.error(key, "must be a list of port numbers, not "
                              + checked_toml.kind(ports))
        for i, port in enumerate(ports):
            if isinstance(port, bool) or not isinstance(port, int) or not 0 < port < 65536:
                raise where.error(f"{key}[{i}]", f"{port!r} is not a port number (1 to 65535)")
            if port in ports[:i]:
                raise where.error(f"{key}[{i}]", f"{port} is listed twice")
        protect[proto] = tuple(ports)
    return protect


def last_good_path(path: str) -> str:
    """Where root keeps the last good copy of the config at path: LAST_GOOD for the
    default config; beside any other (tests, a second instance) as NAME.last-good.toml."""
    if os.path.abspath(path) == DEFAULT_CONFIG:
        return LAST_GOOD
    stem = os.path.basename(path).removesuffix(".toml")
    return os.path.join(os.path.dirname(os.path.abspath(path)), f"{stem}.last-good.toml")


def load_running(path: str = DEFAULT_CONFIG, log: Callable[..., None] | None = None) -> Config:
    """The config gnocchi runs: the file at path, or, when it does not load, its last
    good copy (a Config whose .path is the copy's), after the file's error is told to
    log (an EventLog.event: one config-fell-back entry). No good copy, or one that
    does not load: the file's own error is raised, as by load()."""
    try:
        return load(path)
    except ConfigError as broken:
        good = last_good_path(path)
        try:
            strict.check(good)
            cfg = load(good)
        except (ConfigError, strict.StrictModeError):
            raise broken from None
        if log is not None:
            log("config-fell-back", fell_back(broken, good), config=path, last_good=good,
                reason=broken)
        return cfg


def fell_back(broken: ConfigError, good: str) -> str:
    """What to tell the admin when gnocchi runs the last good copy good instead of a
    broken file: the file, the key, what gnocchi does instead, and the fix."""
    return (f"CONFIG BROKEN: {broken}; gnocchi runs the last good config instead ({good}), "
            "so nothing changed; fix: correct the file, then `gnocchi reload` (it checks "
            "first)")

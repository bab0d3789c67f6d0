"""The server config (docs/contracts.md, "Server config"), parsed into frozen dataclasses.

Trusts the config file's author, not the file's spelling: every key is checked,
unknown keys are errors (a typo must not silently drop a restriction), and
every ConfigError names the file and the key path, e.g.
"/etc/gnocchi/gnocchi.toml: clients.alice.allow[1]: '22/sctp' is not PORT,
PORT/tcp or PORT/udp" (gnocchi.shared.checked_toml, shared with the client's
profiles). A Config that loads is consistent: every client's actions exist,
its default request (one port or several) is one it is allowed, and no public
key belongs to two clients.

Clients may also come one per file from the drop-in directory clients.d
beside the config (/etc/gnocchi/clients.d/NAME.toml holding [clients.NAME]),
so a config-management tool can own one file per client. A drop-in is read
with the same grammar and validator, must pass StrictModes itself (a drop-in
others may write is an error, not a client), and a name or key found in two
files is an error naming both. What runs is one document: the config file
with each drop-in appended (bundle()), checked to mean exactly what the
files mean one by one; that is also what the last good copy holds.

A broken file never changes what runs: load_running() falls back to the last
good copy of the files (last_good_path), which only root writes, and only with
files that loaded (gnocchi/admin/last_good.py). The verifier cannot write it:
it sits outside the verifier's StateDirectory, and it passes StrictModes before
it is trusted, like the file itself.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from gnocchi.server import DEFAULT_CONFIG, strict
from gnocchi.shared import checked_toml, knock_request
from gnocchi.shared.keys import parse_public_hex

# The last good copy of DEFAULT_CONFIG: root's, outside the verifier's StateDirectory.
LAST_GOOD = "/var/lib/gnocchi-config/last-good.toml"
DROP_INS = "clients.d"  # beside the config: one client per NAME.toml
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
    sources: tuple = ()  # ip_networks; empty: any source
    expires: datetime.datetime | None = None  # aware; knocks from then on are refused
    # Where it is configured (the config or a drop-in); not what the client may do.
    file: str = field(default="", compare=False)

    def refusal(
        self, source: ipaddress.IPv4Address | ipaddress.IPv6Address, now: datetime.datetime
    ) -> str | None:
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
                return (
                    f"{', '.join(refused)} {'is' if len(refused) == 1 else 'are'} not in "
                    f"this client's allow list ({allowed})"
                )
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
        return (
            f"{self.address}:{self.port}"
            if self.address.version == 4
            else f"[{self.address}]:{self.port}"
        )


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
    server_addresses: tuple  # ip_addresses, IPv4 and IPv6; empty: each knock's destination
    state_dir: str
    helper_socket: str
    clients: tuple[Client, ...]
    actions: tuple[Action, ...]
    action_socket: str = DEFAULTS["action_socket"]
    # [protect]: {"tcp": (22,), "udp": ()}; None without the table (then the ports of a
    # 0.3 table file beside the config, or tcp 22: gnocchi.admin.nft_table.protected_ports)
    protect: dict[str, tuple[int, ...]] | None = None
    v1: bool = True  # accept v1 knocks (server_key_file)
    private_key_file: str | None = None  # v2's server private key; None: no v2
    next_private_key_file: str | None = None  # a rotation's next key (`gnocchi rotate-key`)
    rotation_ends: datetime.datetime | None = None  # aware; private_key_file refused then
    forwards: tuple[Forward, ...] = ()

    def unreachable(
        self, request: knock_request.Request, source: ipaddress.IPv4Address | ipaddress.IPv6Address
    ) -> str | None:
        """Why a knock from source cannot reach a forward that request opens, or None:
        the kernel translates within one family, and the forward may have no target of
        the source's."""
        opens = getattr(request, "opens", ())
        for f in self.forwards:
            if f.listen in opens and all(t.address.version != source.version for t in f.to):
                return (
                    f"forward {f.name} ({f.listen.port}/{f.listen.proto}) reaches only "
                    f"{', '.join(map(str, f.to))}: knock over IPv{f.to[0].address.version}"
                )
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
            raise self.error(
                key,
                f"{value!r} is not a name (letters, digits, _ . -; "
                f"at most 64; starts with a letter or digit)",
            )
        return value


def load(path: str = DEFAULT_CONFIG, drop_ins: bool = True) -> Config:
    """The config at path, with the clients of its drop-in directory (drop_ins=False: the
    file alone, as for the last good copy, which holds them already)."""
    where = _Where(path)
    data = where.read_bytes(missing="no such file (the package installs a commented example there)")
    doc = where.parse(data)
    if not drop_ins:
        return parse(doc, where)
    extra = [(_Where(file), raw) for file, raw in read_drop_ins(path)]
    cfg = parse(doc, where, [(w, _drop_in(w, raw)) for w, raw in extra])
    if extra and not _same_as_bundle(where, data, doc, extra):
        raise where.error(
            "clients",
            f"the drop-ins of {drop_in_dir(path)}, appended to this "
            "file, do not read as they do alone; write each client, here and "
            "there, as a [clients.NAME] table",
        )
    return cfg


def drop_in_dir(path: str) -> str:
    return os.path.join(os.path.dirname(os.path.abspath(path)), DROP_INS)


def drop_in_files(path: str) -> list[str]:
    """The drop-ins of the config at path, in the order they load: NAME.toml in
    drop_in_dir(path), by name; hidden files (an editor's or a deploy tool's
    temporary copy) and other names are not drop-ins."""
    directory = drop_in_dir(path)
    try:
        names = os.listdir(directory)
    except FileNotFoundError:
        return []
    except OSError as e:
        raise ConfigError(f"{directory}: cannot read: {e.strerror}") from None
    return [
        os.path.join(directory, n)
        for n in sorted(names)
        if n.endswith(".toml") and not n.startswith(".")
    ]


def read_drop_ins(path: str) -> list[tuple[str, bytes]]:
    """(file, bytes) of each drop-in, each file and its directory passing StrictModes:
    a drop-in others may write is refused, never read (so it is a broken config, and
    the last good one runs)."""
    found = []
    for file in drop_in_files(path):
        try:
            strict.check(file)
        except strict.StrictModeError as e:
            raise ConfigError(f"{file}: {e}") from None
        found.append((file, _Where(file).read_bytes()))
    return found


def bundle(config: bytes, drop_ins: list[bytes]) -> bytes:
    """The one document that runs: the config's bytes, then each drop-in's, each
    ending in a newline (the bytes alone when there is no drop-in). The last good
    copy holds exactly this, so it is one file, replaced in one rename."""
    if not drop_ins:
        return config
    return b"".join(d if d.endswith(b"\n") or not d else d + b"\n" for d in [config, *drop_ins])


def read_bundle(path: str) -> bytes:
    """bundle() of the config at path and its drop-ins, as load() reads them."""
    where = _Where(path)
    return bundle(where.read_bytes(), [raw for _, raw in read_drop_ins(path)])


def _same_as_bundle(
    where: _Where, data: bytes, doc: dict, extra: list[tuple[_Where, bytes]]
) -> bool:
    """The bundle (what the last good copy holds) reads as the files do one by one."""
    clients = dict(doc.get("clients", {}))
    for w, raw in extra:
        clients.update(w.parse(raw)["clients"])  # type: ignore[call-overload]
    try:
        return where.parse(bundle(data, [raw for _, raw in extra])) == {**doc, "clients": clients}
    except ConfigError:
        return False


# Parsed after "[_]": any key before the drop-in's own header would land in table _,
# as it would land in the table before it once appended to the config.
_PROBE = b"[_]\n"


def _drop_in(where: _Where, data: bytes) -> tuple[str, object]:
    """(NAME, its table) of a drop-in NAME.toml: [clients.NAME] alone, header first."""
    name = os.path.basename(where.path).removesuffix(".toml")
    doc = where.parse(data)
    where.name(name, f"the file name {name}.toml")
    shape = f"a drop-in holds one [clients.{name}] table (its header first), named as the file"
    if set(doc) != {"clients"} or not isinstance(doc["clients"], dict):
        raise where.error("", f"{shape}; found {', '.join(sorted(doc)) or 'nothing'}")
    if list(doc["clients"]) != [name]:
        found = ", ".join(f"[clients.{n}]" for n in doc["clients"])
        raise where.error("clients", f"{shape}; found {found}")
    if where.parse(_PROBE + data).get("_"):
        raise where.error(
            f"clients.{name}",
            f"{shape}: its keys go below the "
            f"[clients.{name}] line (the drop-in is appended to the config)",
        )
    return name, doc["clients"][name]


def parse(
    doc: dict, where: _Where, drop_ins: Sequence[tuple[_Where, tuple[str, object]]] = ()
) -> Config:
    where.table(
        doc,
        "",
        {
            "server_key_file",
            "server_addresses",
            "state_dir",
            "helper_socket",
            "action_socket",
            "clients",
            "actions",
            "protect",
            "forwards",
            *KEY_SETTINGS,
        },
    )
    paths = {k: where.path_string(doc.get(k, v), k) for k, v in DEFAULTS.items()}
    addresses = []
    for i, text in enumerate(
        where.string_list(doc.get("server_addresses", []), "server_addresses")
    ):
        try:
            addresses.append(ipaddress.ip_address(text))
        except ValueError:
            raise where.error(
                f"server_addresses[{i}]",
                f"{text!r} is not an IP address (knocks sign the address they were sent to)",
            ) from None
    actions = tuple(
        _action(where, name, value)
        for name, value in where.entries(doc.get("actions", {}), "actions")
    )
    action_names = {a.name for a in actions}
    forwards: list[Forward] = []
    for name, value in where.entries(doc.get("forwards", {}), "forwards"):
        forward = _forward(where, name, value)
        if twin := next((f for f in forwards if f.listen == forward.listen), None):
            raise where.error(
                f"forwards.{name}.listen",
                f"{forward.listen.port}/"
                f"{forward.listen.proto} is also forwards.{twin.name}'s: a port "
                "forwards to one place",
            )
        forwards.append(forward)
    clients: list[Client] = []
    entries = [
        (where, name, value) for name, value in where.entries(doc.get("clients", {}), "clients")
    ]
    for client_where, name, value in entries + [(w, *entry) for w, entry in drop_ins]:
        client = _client(client_where, name, value, action_names, forwards)
        for other in clients:
            # Two files: name both (the file in the error, the other in the text).
            elsewhere = f" ({other.file})" if other.file != client.file else ""
            if other.name == name:
                raise client_where.error(
                    f"clients.{name}",
                    f"is also configured in {other.file}; a client is in one file only",
                )
            if other.public_key == client.public_key:
                raise client_where.error(
                    f"clients.{name}.public_key", f"is also clients.{other.name}'s key{elsewhere}"
                )
        clients.append(client)
    protect = _protect(where, doc["protect"]) if "protect" in doc else None
    return Config(
        where.path,
        paths["server_key_file"],
        tuple(addresses),
        paths["state_dir"],
        paths["helper_socket"],
        tuple(clients),
        actions,
        paths["action_socket"],
        protect,
        **_key_settings(where, doc),
        forwards=tuple(forwards),
    )


KEY_SETTINGS = ("v1", "private_key_file", "next_private_key_file", "rotation_ends")


def _key_settings(where: _Where, doc: dict) -> dict:
    """Which knock versions the server takes, and v2's keys (docs/PROTOCOL.md): the
    private key, and during a rotation the next one and when the overlap ends."""
    v1 = doc.get("v1", True)
    if not isinstance(v1, bool):
        raise where.error("v1", f"must be true or false, not {checked_toml.kind(v1)}")
    private = doc.get("private_key_file")
    if private is not None:
        private = where.path_string(private, "private_key_file")
    if not v1 and private is None:
        raise where.error(
            "v1",
            "is false, but there is no private_key_file: no knock could "
            "get in; make a v2 key (gnocchi keygen --private FILE) first",
        )
    rotation = {k: doc.get(k) for k in ("next_private_key_file", "rotation_ends")}
    given = [v is not None for v in rotation.values()]
    if any(given) and not (all(given) and private is not None):
        raise where.error(
            "next_private_key_file",
            "a rotation needs private_key_file, "
            "next_private_key_file and rotation_ends together (gnocchi "
            "rotate-key writes them)",
        )
    if rotation["next_private_key_file"] is not None:
        rotation["next_private_key_file"] = where.path_string(
            rotation["next_private_key_file"], "next_private_key_file"
        )
        rotation["rotation_ends"] = _expiry(where, rotation["rotation_ends"], "rotation_ends")
    return {"v1": v1, "private_key_file": private, **rotation}


def _action(where: _Where, name: str, entry: object) -> Action:
    key = f"actions.{name}"
    where.name(name, key)
    value = where.table(entry, key, {"argv", "timeout"}, {"argv"})
    argv = where.string_list(value["argv"], f"{key}.argv")
    if not argv:
        raise where.error(f"{key}.argv", "must name a program")
    if not os.path.isabs(argv[0]):
        raise where.error(
            f"{key}.argv[0]",
            f"{argv[0]!r} is not an absolute path (actions run without a shell or PATH search)",
        )
    timeout = value.get("timeout", DEFAULT_ACTION_TIMEOUT)
    if (
        isinstance(timeout, bool)
        or not isinstance(timeout, (int, float))
        or not 0 < timeout <= MAX_ACTION_TIMEOUT
    ):
        raise where.error(
            f"{key}.timeout",
            f"{timeout!r} is not a number of seconds above 0 and at most {MAX_ACTION_TIMEOUT}",
        )
    return Action(name, tuple(argv), float(timeout))


def _forward(where: _Where, name: str, entry: object) -> Forward:
    """[forwards.NAME]: listen = "2222/tcp", to = "10.0.0.5:22" (or "[fd00::5]:22", or a
    list of one of each)."""
    key = f"forwards.{name}"
    where.name(name, key)
    if knock_request.parse_port(name) is not None:
        raise where.error(
            key,
            f"{name!r} reads as a port: an allow list names a forward by "
            "its name, so the name must have a letter",
        )
    value = where.table(entry, key, {"listen", "to"}, {"listen", "to"})
    listen = value["listen"]
    listen = knock_request.parse_port(listen) if isinstance(listen, (str, int)) else None
    if listen is None:
        raise where.error(
            f"{key}.listen",
            f"{value['listen']!r} is not PORT, PORT/tcp or "
            "PORT/udp (the port of this host that clients connect to)",
        )
    texts = value["to"] if isinstance(value["to"], list) else [value["to"]]
    if not 1 <= len(texts) <= 2:
        raise where.error(
            f"{key}.to", "must be one ADDRESS:PORT, or a list of one IPv4 and one IPv6 ADDRESS:PORT"
        )
    to: list[Target] = []
    for i, text in enumerate(texts):
        where_to = f"{key}.to" + (f"[{i}]" if isinstance(value["to"], list) else "")
        target = _target(where, where.string(text, where_to), where_to)
        if any(t.address.version == target.address.version for t in to):
            raise where.error(
                where_to,
                f"a second IPv{target.address.version} target: a "
                "forward goes to one place per family",
            )
        to.append(target)
    return Forward(name, listen, tuple(to))


def _target(where: _Where, text: str, key: str) -> Target:
    """ADDRESS:PORT: 10.0.0.5:22 or [fd00::5]:22, of a host behind this one."""
    host, _, port = text.rpartition(":")
    try:
        address = ipaddress.ip_address(
            host[1:-1] if host.startswith("[") and host.endswith("]") else host
        )
        if address.version == 6 and not host.startswith("["):
            raise ValueError
        number = int(port)
    except ValueError:
        address, number = None, 0
    if address is None or not port.isdigit() or not 0 < number < 65536 or port != str(number):
        raise where.error(key, f"{text!r} is not ADDRESS:PORT, such as 10.0.0.5:22 or [fd00::5]:22")
    if (
        address.is_loopback
        or address.is_multicast
        or address.is_unspecified
        or address.is_link_local
        or getattr(address, "ipv4_mapped", None)
    ):
        raise where.error(
            key,
            f"{address} is not an address to forward to (a host behind "
            "this one: a container, a VM, a LAN host)",
        )
    return Target(address, number)


def _client(
    where: _Where,
    name: str,
    entry: object,
    action_names: set[str],
    forwards: list[Forward] | tuple[Forward, ...] = (),
) -> Client:
    key = f"clients.{name}"
    where.name(name, key)
    value = where.table(
        entry,
        key,
        {"public_key", "allow", "default", "actions", "sources", "expires"},
        {"public_key"},
    )
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
            raise where.error(
                f"{key}.allow[{i}]",
                f"{item!r} is not PORT, PORT/tcp or PORT/udp"
                + (f" nor a forward ({', '.join(by_name)})" if by_name else ""),
            )
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
            raise where.error(
                f"{key}.sources[{i}]",
                f"{text!r} is not an address or a "
                "network such as 198.51.100.0/24 or 2001:db8::/48 (no host bits "
                "set)",
            ) from None
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
    return Client(
        name, public_key, tuple(allow), default, tuple(actions), tuple(sources), expires, where.path
    )


def _expiry(where: _Where, value: object, key: str) -> datetime.datetime | None:
    """A TOML date (from 00:00 UTC that day) or an offset date-time; None if absent."""
    if value is None:
        return None
    if isinstance(value, datetime.datetime):
        if value.tzinfo is None:
            raise where.error(
                key,
                f"{value.isoformat()} has no offset: write {value.isoformat()}Z (UTC) or +HH:MM",
            )
        return value
    if isinstance(value, datetime.date):
        return datetime.datetime(value.year, value.month, value.day, tzinfo=datetime.UTC)
    raise where.error(
        key,
        f"must be a TOML date such as 2026-12-31 (no quotes) or a date-time "
        f"with an offset, not {checked_toml.kind(value)}",
    )


def _protect(where: _Where, entry: object) -> dict[str, tuple[int, ...]]:
    """[protect]: tcp = [22], udp = [] (a missing key: no port of that protocol)."""
    value = where.table(entry, "protect", set(PROTOCOLS))
    protect = {}
    for proto in PROTOCOLS:
        key = f"protect.{proto}"
        ports = value.get(proto, [])
        if not isinstance(ports, list):
            raise where.error(
                key, "must be a list of port numbers, not " + checked_toml.kind(ports)
            )
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
            cfg = load(good, drop_ins=False)  # the copy holds the drop-ins it ran with
        except (ConfigError, strict.StrictModeError):
            raise broken from None
        if log is not None:
            log(
                "config-fell-back",
                fell_back(broken, good),
                config=path,
                last_good=good,
                reason=broken,
            )
        return cfg


def fell_back(broken: ConfigError, good: str) -> str:
    """What to tell the admin when gnocchi runs the last good copy good instead of a
    broken file: the file, the key, what gnocchi does instead, and the fix."""
    return (
        f"CONFIG BROKEN: {broken}; gnocchi runs the last good config instead ({good}), "
        "so nothing changed; fix: correct the file, then `gnocchi reload` (it checks "
        "first)"
    )

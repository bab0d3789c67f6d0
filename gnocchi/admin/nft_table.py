"""table inet gnocchi seen from the admin's side: test-load, load, unload, read.

Trusts the package's rules file (/usr/share/gnocchi/gnocchi.nft, never edited:
it changes with the package), the admin's config for the ports, and nft(8).
Reads the live table only through `nft -j` (JSON, parsed into typed values),
and writes only what the rules file says plus elements rebuilt from typed
values. What gnocchi loads is one thing, wanted(): the rules file, with sets
protected_tcp/protected_udp filled from the config gnocchi runs ([protect] and
the listen ports of [forwards]; see protected_ports), maps forwards4/forwards6
from its [forwards], and set knock_port from its server key.
Guarantees:
- every change to the live table is one nft transaction: a packet meets the
  old table or the new one, never none (no unprotected window);
- a (re)load keeps the knocks pending in knocked4/knocked6. When only the
  protected ports changed (or nothing did), the knocked sets are not touched
  at all. When the rules changed (an upgrade, an edited chain), the pending
  elements are carried into the new table with their remaining time, and the
  same transaction first deletes each carried element from the old table, so
  one that was used or expired meanwhile makes the transaction fail (and the
  load is retried) rather than come back to life;
- the file is first loaded into a throwaway user+network namespace, so a
  broken or foreign file is refused before the live table is touched;
- the protected ports, the forwards and set knock_port (the flood limit's port)
  are written in the same transaction as the file (docs/firewall.md, "Floods"):
  the table never protects other ports, nor forwards to other places, than the
  config's, not even for a moment; a file without set knock_port loads as it is.
"""

from __future__ import annotations

import ipaddress
import json
import os
import subprocess
from dataclasses import dataclass

from gnocchi.server import config as server_config

# The rules, as the package ships them (nft/gnocchi.nft in the checkout).
DEFAULT_FILE = "/usr/share/gnocchi/gnocchi.nft"
# gnocchi 0.3's table file, the admin's copy beside the config: read for its
# protected ports alone while the config has no [protect] (protected_ports).
LEGACY_NAME = "gnocchi.nft"
DEFAULT_PROTECTED = {"tcp": [22], "udp": []}  # the config's without [protect] (and 0.3's)
NFT = "nft"  # found on PATH: /usr/sbin in units and root's shell
FAMILY, NAME = "inet", "gnocchi"
PROTECTED = {"tcp": "protected_tcp", "udp": "protected_udp"}
KNOCKED = {4: "knocked4", 6: "knocked6"}
KNOCK_PORT = "knock_port"  # the flood limit's port: load() fills it from the server key
# listen (proto . port) : target (address . port), filled from [forwards] (chain reach)
FORWARDS = {4: "forwards4", 6: "forwards6"}
FORWARD_TYPES = {"forwards4": "ipv4_addr . inet_service", "forwards6": "ipv6_addr . inet_service"}
KNOCKED_TYPES = {
    "knocked4": ["ipv4_addr", "inet_proto", "inet_service"],
    "knocked6": ["ipv6_addr", "inet_proto", "inet_service"],
}
_REFUSED = 3  # test_load's exit status when nft refuses the file
RETRIES = 5  # a carried element used between our read and our write: read again


class TableError(Exception):
    """The table file or nft refused; str() says which and why."""


@dataclass(frozen=True)
class Pending:
    """One knock waiting in a knocked set: (address . proto . port), its seconds left,
    and the client whose knock it is (the element's comment, written by the helper)."""

    address: ipaddress.IPv4Address | ipaddress.IPv6Address
    proto: str
    port: int
    expires: int  # whole seconds left, as nft -j shows them (rounded down)
    timeout: int  # the helper's timeout for it
    client: str = ""  # a client's name (server_config.NAME), or "" when it has none

    def nft_value(self) -> str:
        return f"{self.address} . {self.proto} . {self.port}"

    def nft_comment(self) -> str:
        return f' comment "{self.client}"' if self.client else ""


@dataclass(frozen=True)
class Table:
    """A table inet gnocchi as nft -j lists it (from the kernel or a scratch load)."""

    objects: tuple  # the JSON objects: table, sets, chains, rules

    def handle(self) -> int | None:
        """The kernel's handle of the table: a new one each time the table is made anew."""
        return next((o["table"].get("handle") for o in self.objects if "table" in o), None)

    def sets(self) -> dict[str, dict]:
        return {o["set"]["name"]: o["set"] for o in self.objects if "set" in o}

    def maps(self) -> dict[str, dict]:
        return {o["map"]["name"]: o["map"] for o in self.objects if "map" in o}

    def forwards(self) -> list[tuple[str, int, str, int]]:
        """(proto, listen port, target address, target port) of each forward in the maps."""
        found = []
        for name in FORWARDS.values():
            for elem in self.maps().get(name, {}).get("elem", []):
                try:
                    (proto, port), (address, to) = (e["concat"] for e in elem)
                    found.append((proto, port, address, to))
                except (KeyError, TypeError, ValueError):
                    continue
        return sorted(found)

    def with_forwards(self, forwards) -> Table:
        """This table as it is once load() has filled the forwards maps with forwards
        (config.Forward objects; None: as they are)."""
        if forwards is None:
            return self
        elems = forward_elements(forwards)

        def filled(body: dict) -> dict:
            body = {k: v for k, v in body.items() if k != "elem"}
            return dict(body, elem=elems[body["name"]]) if elems[body["name"]] else body

        return Table(
            tuple(
                {"map": filled(o["map"])} if o.get("map", {}).get("name") in elems else o
                for o in self.objects
            )
        )

    def protected(self) -> dict[str, list]:
        """{"tcp": [22, [8000, 8100]], "udp": []}: ports, and ranges as [low, high]."""
        sets = self.sets()
        return {
            proto: [_port_or_range(e) for e in sets.get(name, {}).get("elem", [])]
            for proto, name in PROTECTED.items()
        }

    def knock_ports(self) -> list[int] | None:
        """The ports in set knock_port (the flood limit's), or None without that set."""
        found = self.sets().get(KNOCK_PORT)
        return None if found is None else [_port_or_range(e) for e in found.get("elem", [])]

    def with_knock_port(self, port: int | list[int] | None) -> Table:
        """This table as it is once load() has filled set knock_port with port (or
        ports: a rotation's two keys have one each)."""
        if not port or self.knock_ports() is None:
            return self
        ports = [port] if isinstance(port, int) else sorted(port)
        return Table(
            tuple(
                {"set": dict(o["set"], elem=ports)}
                if o.get("set", {}).get("name") == KNOCK_PORT
                else o
                for o in self.objects
            )
        )

    def with_protected(self, protected: dict | None) -> Table:
        """This table as it is once load() has filled the protected sets with protected."""
        if protected is None:
            return self
        by_set = {PROTECTED[proto]: sorted(ports) for proto, ports in protected.items()}

        def filled(body: dict) -> dict:
            body = {k: v for k, v in body.items() if k != "elem"}
            return dict(body, elem=by_set[body["name"]]) if by_set[body["name"]] else body

        return Table(
            tuple(
                {"set": filled(o["set"])} if o.get("set", {}).get("name") in by_set else o
                for o in self.objects
            )
        )

    def element_counts(self) -> dict[str, int]:
        """How many elements each set holds now (knocks pending, flood sources...)."""
        return {name: len(body.get("elem", [])) for name, body in self.sets().items()}

    def pending(self) -> list[Pending]:
        found = []
        for name in KNOCKED.values():
            for elem in self.sets().get(name, {}).get("elem", []):
                pending = _pending(elem)
                if pending is not None:
                    found.append(pending)
        return found


def forward_elements(forwards) -> dict[str, list]:
    """{"forwards4": [elements as nft -j lists them], "forwards6": [...]} for forwards."""
    elems: dict[str, list] = {name: [] for name in FORWARDS.values()}
    for f in forwards:
        for to in f.to:
            elems[FORWARDS[to.address.version]].append(
                [
                    {"concat": [f.listen.proto, f.listen.port]},
                    {"concat": [str(to.address), to.port]},
                ]
            )
    return elems


def _port_or_range(elem):
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"]["val"]
    if isinstance(elem, dict) and "range" in elem:
        return list(elem["range"])
    return elem


def _pending(elem) -> Pending | None:
    """A knocked element from nft -j, or None if it is not one gnocchi's helper makes."""
    try:
        inner = elem["elem"]
        address, proto, port = inner["val"]["concat"]
        address = ipaddress.ip_address(address)
        if proto not in PROTECTED or not isinstance(port, int) or not 0 < port < 65536:
            return None
        timeout = int(inner.get("timeout", 0))
        client = inner.get("comment", "")  # quoted into nft text below: a client's name only
        client = client if isinstance(client, str) and server_config.NAME.fullmatch(client) else ""
        return Pending(address, proto, port, int(inner.get("expires", 0)), timeout, client)
    except (KeyError, TypeError, ValueError):
        return None


def covers(ports: list, port: int) -> bool:
    return any(p == port if isinstance(p, int) else p[0] <= port <= p[1] for p in ports)


def show_ports(protected: dict[str, list]) -> str:
    parts = [
        f"{p if isinstance(p, int) else f'{p[0]}-{p[1]}'}/{proto}"
        for proto, ports in protected.items()
        for p in ports
    ]
    return ", ".join(parts) or "no ports"


def show_forwards(forwards: list[tuple[str, int, str, int]]) -> str:
    """ "2222/tcp to 10.0.0.5:22, ..." for Table.forwards()."""
    return ", ".join(
        f"{port}/{proto} to " + (f"[{a}]" if ":" in a else a) + f":{to}"
        for proto, port, a, to in forwards
    )


# ---- nft ---------------------------------------------------------------------


def nft(*args: str, input: str | None = None) -> subprocess.CompletedProcess:
    try:
        return subprocess.run([NFT, *args], input=input, capture_output=True, text=True, timeout=60)
    except FileNotFoundError:
        raise TableError("nft not found (Debian package nftables)") from None


def _objects(listing: str) -> tuple:
    return tuple(o for o in json.loads(listing)["nftables"] if "metainfo" not in o)


def live() -> Table | None:
    """The kernel's table inet gnocchi, or None when it is not loaded (not armed)."""
    proc = nft("-j", "list", "table", FAMILY, NAME)
    if proc.returncode != 0:
        if "No such file or directory" in proc.stderr:
            return None
        raise TableError(f"nft list table {FAMILY} {NAME}: {proc.stderr.strip()}")
    return Table(_objects(proc.stdout))


def test_load(path: str = DEFAULT_FILE) -> Table:
    """Load path into an empty scratch user+network namespace and list what it made.
    Refuses a file that nft rejects or that makes anything but a usable gnocchi table."""
    objects = _scratch_load(path)
    _validate(objects, path)
    return Table(objects)


def _scratch_load(path: str) -> tuple:
    """What nft makes of path in an empty scratch namespace (TableError if it refuses)."""
    # No uid map (mapping uid 0 needs CAP_SETFCAP since Linux 5.12, which the
    # arming unit lacks): --keep-caps keeps the new namespace's capabilities.
    try:
        proc = subprocess.run(
            [
                "unshare",
                "--user",
                "--net",
                "--keep-caps",
                "--",
                "sh",
                "-c",
                f'{NFT} -f "$1" || exit {_REFUSED}; exec {NFT} -j list ruleset',
                "sh",
                path,
            ],
            capture_output=True,
            text=True,
            timeout=60,
        )
    except FileNotFoundError:
        raise TableError("unshare not found (Debian package util-linux)") from None
    if proc.returncode == _REFUSED:
        raise TableError(f"{path}: nft refuses it:\n{proc.stderr.strip()}")
    if proc.returncode != 0:
        raise TableError(f"cannot test-load {path} in a scratch namespace: {proc.stderr.strip()}")
    return _objects(proc.stdout)


def expected(path: str = DEFAULT_FILE) -> Table:
    """What gnocchi loads from path, as the kernel lists it: the one reference the live
    table is compared with (gnocchi/admin/gate.py: its rules, chains and set
    definitions; the elements are filled at loading and not compared)."""
    return test_load(path)


def _validate(objects: tuple, path: str) -> None:
    tables = [(o["table"]["family"], o["table"]["name"]) for o in objects if "table" in o]
    if tables != [(FAMILY, NAME)]:
        shown = ", ".join(f"table {f} {n}" for f, n in tables) or "no table"
        raise TableError(f"{path}: must make exactly table {FAMILY} {NAME}, makes {shown}")
    sets = Table(objects).sets()
    for name in PROTECTED.values():
        if name not in sets:
            raise TableError(
                f"{path}: set {name} is missing (the helper reads the protected ports from it)"
            )
        if sets[name].get("type") != "inet_service":
            raise TableError(f"{path}: set {name} must be of type inet_service")
    for name, kind in KNOCKED_TYPES.items():
        if name not in sets:
            raise TableError(f"{path}: set {name} is missing (the helper adds knocks to it)")
        if sets[name].get("type") != kind or "timeout" not in sets[name].get("flags", []):
            raise TableError(
                f"{path}: set {name} must be `type {' . '.join(kind)}` with `flags timeout`"
            )
    maps = Table(objects).maps()
    for name, data in FORWARD_TYPES.items():
        if (
            maps.get(name, {}).get("type") != ["inet_proto", "inet_service"]
            or maps[name].get("map") != data
        ):
            raise TableError(
                f"{path}: map {name} must be `type inet_proto . inet_service : "
                f"{data}` (gnocchi puts the config's forwards in it)"
            )
    if KNOCK_PORT in sets and sets[KNOCK_PORT].get("type") != "inet_service":
        raise TableError(
            f"{path}: set {KNOCK_PORT} must be of type inet_service (gnocchi "
            "puts the knock port in it)"
        )
    hooks = {o["chain"].get("hook") for o in objects if "chain" in o}
    for hook in ("input", "forward"):
        if hook not in hooks:
            raise TableError(f"{path}: no chain hooks {hook}, so nothing would be protected there")
    from gnocchi.admin import gate  # it reads this module's names

    if open_to := gate.unguarded(objects):
        raise TableError(
            f"{path}: the gate is not there: it would let in someone who never "
            f"knocked: {gate.summary(open_to)}; gnocchi refuses a table that "
            'does not drop them (docs/firewall.md, "How the gate decides"); '
            "the original: /usr/share/gnocchi/gnocchi.nft"
        )


# ---- what gnocchi loads -------------------------------------------------------


@dataclass(frozen=True)
class Ports:
    """The ports a config protects, and where they came from (for the admin)."""

    protected: dict[str, list]  # {"tcp": [22], "udp": []}
    source: str


def legacy_file(config_path: str) -> str:
    """gnocchi 0.3's table file for the config at config_path: /etc/gnocchi/gnocchi.nft."""
    return os.path.join(os.path.dirname(os.path.abspath(config_path)), LEGACY_NAME)


def protected_ports(cfg, config_path: str, forwards: bool = True) -> Ports:
    """The ports cfg (a gnocchi.server.config.Config, which config_path names or is the
    last good copy of) protects: its [protect] table; without one, the protected sets
    of 0.3's table file beside config_path (an admin's edit that an upgrade keeps
    honouring until `gnocchi protect` writes [protect]); without that, tcp 22. And in
    every case (forwards=False: but for `gnocchi protect`, which edits [protect]) the
    listen port of each of its [forwards]: a forward is a protected port that a knock
    maps elsewhere."""
    ports = _protected_ports(cfg, config_path)
    listens = [f.listen for f in getattr(cfg, "forwards", ())] if forwards else []
    if not listens:
        return ports
    protected = {
        proto: sorted(set(found) | {o.port for o in listens if o.proto == proto})
        for proto, found in ports.protected.items()
    }
    return Ports(protected, ports.source + " and the listen ports of [forwards]")


def _protected_ports(cfg, config_path: str) -> Ports:
    if cfg.protect is not None:
        return Ports(
            {proto: list(ports) for proto, ports in cfg.protect.items()}, f"[protect] in {cfg.path}"
        )
    legacy = legacy_file(config_path)
    if not os.path.exists(legacy):
        return Ports(
            {k: list(v) for k, v in DEFAULT_PROTECTED.items()},
            f"the default: {cfg.path} has no [protect]",
        )
    ports = Table(_scratch_load(legacy)).protected()
    for proto, found in ports.items():
        if any(not isinstance(p, int) for p in found):
            raise TableError(
                f"{legacy}: set {PROTECTED[proto]} holds a range; gnocchi now "
                f"protects the single ports listed in [protect] in {config_path}: "
                "list them there (`gnocchi protect PORT...`)"
            )
    return Ports(
        ports,
        f"{legacy} (the table file of gnocchi 0.3 and before, read while "
        f"{config_path} has no [protect]; `gnocchi protect` moves them there)",
    )


@dataclass(frozen=True)
class Wanted:
    """What gnocchi loads as table inet gnocchi: the rules file, the protected ports of
    the config gnocchi runs, and the knock ports of its server keys (None: unknown)."""

    rules: str
    config: str  # the config the ports come from: the file, or its last good copy
    ports: Ports
    knock_ports: list[int] | None
    forwards: tuple = ()  # the config's [forwards] (config.Forward)

    @property
    def protected(self) -> dict[str, list]:
        return self.ports.protected

    def table(self) -> Table:
        """The table as the kernel should list it once loaded (test-loads the rules)."""
        return (
            test_load(self.rules)
            .with_protected(self.protected)
            .with_knock_port(self.knock_ports)
            .with_forwards(self.forwards)
        )

    def script(self, knock_port: bool = True) -> str:
        """The rules file and the sets filled (knock_port=False: set knock_port left
        empty, for a rules file that may lack it): one nft transaction."""
        try:
            with open(self.rules, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise TableError(f"{self.rules}: cannot read: {e}") from None
        return (
            text.rstrip("\n")
            + "\n"
            + fill_script(self.protected, self.knock_ports if knock_port else None, self.forwards)
        )


def fill_script(protected: dict | None, knock_port: int | list[int] | None, forwards=None) -> str:
    """nft commands that make the protected sets hold protected (None: as they are),
    set knock_port hold knock_port (None: as it is) and the forwards maps hold forwards
    (config.Forward objects; None: as they are); run after the rules, in the same
    transaction."""
    fills = {PROTECTED[proto]: sorted(ports) for proto, ports in (protected or {}).items()}
    if knock_port is not None:
        fills[KNOCK_PORT] = [knock_port] if isinstance(knock_port, int) else sorted(knock_port)
    out = []
    for name, elements in fills.items():
        ref = f"{FAMILY} {NAME} {name}"
        out.append(f"flush set {ref}\n")
        if elements:
            out.append(f"add element {ref} {{ {', '.join(map(str, elements))} }}\n")
    for version, name in FORWARDS.items() if forwards is not None else ():
        ref = f"{FAMILY} {NAME} {name}"
        # Typed values only (config.Forward: a checked proto, ints, an ipaddress).
        mine = [
            f"{f.listen.proto} . {f.listen.port} : {to.address} . {to.port}"
            for f in forwards
            for to in f.to
            if to.address.version == version
        ]
        out.append(
            f"flush map {ref}\n" + (f"add element {ref} {{ {', '.join(mine)} }}\n" if mine else "")
        )
    return "".join(out)


def wanted(config_path: str, rules: str = DEFAULT_FILE, cfg=None, log=None) -> Wanted:
    """What gnocchi loads for the config at config_path: the ports and server key of
    the config gnocchi runs (cfg, or config.load_running(config_path, log): a broken
    file's last good copy). ConfigError when no config loads; TableError for a 0.3
    table file that cannot be read."""
    from gnocchi.server import config as server_config
    from gnocchi.server import keyring
    from gnocchi.shared import keys

    cfg = cfg or server_config.load_running(config_path, log)
    try:
        port: list[int] | None = keyring.ports(keyring.load(cfg))
    except keys.KeyFileError:
        port = None
    return Wanted(
        rules,
        cfg.path,
        protected_ports(cfg, config_path),
        port,
        tuple(getattr(cfg, "forwards", ())),
    )


# ---- loading -----------------------------------------------------------------


@dataclass(frozen=True)
class Loaded:
    how: str  # "armed" (was not loaded), "unchanged", "ports" or "replaced"
    table: Table  # what was loaded (from the scratch load)
    kept: int  # pending knocks kept in place or carried over
    dropped: int = 0  # pending knocks the new table has no set for

    def describe(self, path: str) -> str:
        forwards = show_forwards(self.table.forwards())
        ports = show_ports(self.table.protected()) + (
            f" (forwarding {forwards})" if forwards else ""
        )
        return {
            "armed": f"armed: loaded table {FAMILY} {NAME} from {path}, protecting {ports}",
            "unchanged": f"armed: table {FAMILY} {NAME} already matches {path} "
            f"(protecting {ports}; {self.kept} pending knocks untouched)",
            "ports": f"armed: protected ports now {ports}; the rules ({path}) and "
            f"{self.kept} pending knocks were not touched",
            "replaced": f"armed: table {FAMILY} {NAME} replaced from {path} in one "
            f"transaction, protecting {ports}; {self.kept} pending knocks "
            f"carried over"
            + (
                f", {self.dropped} dropped (no set for them in the new table)"
                if self.dropped
                else ""
            ),
        }[self.how]


def ports_only(new: Table, old: Table) -> list[dict] | None:
    """The JSON commands that turn old into new when only the elements of the protected
    sets and of knock_port differ ([] when nothing does), or None when anything else does
    (a rule, its place in its chain, a chain, a set's definition, the table's flags)."""
    from gnocchi.admin import gate

    if gate.differences(old.objects, new.objects):
        return None
    commands = []
    new_sets, old_sets = {**new.sets(), **new.maps()}, {**old.sets(), **old.maps()}
    for name in [
        *PROTECTED.values(),
        *([KNOCK_PORT] if KNOCK_PORT in new_sets else []),
        *FORWARDS.values(),
    ]:
        want = new_sets[name].get("elem", [])
        if sorted(map(json.dumps, want)) == sorted(map(json.dumps, old_sets[name].get("elem", []))):
            continue  # the kernel lists elements in an order of its own
        ref = {"family": FAMILY, "table": NAME, "name": name}
        commands.append({"flush": {"map" if name in FORWARDS.values() else "set": ref}})
        if want:
            commands.append({"add": {"element": dict(ref, elem=want)}})
    return commands


def replacement(text: str, new: Table, carried: list[Pending]) -> tuple[str, int]:
    """nft script: delete each carried element (a guard: fails if one is gone), the
    file, then the carried elements with their remaining time. (script, dropped)."""
    sets, dropped = new.sets(), 0
    guard, add = [], []
    for p in carried:
        name = KNOCKED[p.address.version]
        guard.append(f"delete element {FAMILY} {NAME} {name} {{ {p.nft_value()} }}")
        if sets.get(name, {}).get("type") != KNOCKED_TYPES[name]:
            dropped += 1
            continue
        # nft -j rounds down: +1 s so a knock never loses time, within its own timeout.
        seconds = max(1, min(p.expires + 1, p.timeout or p.expires + 1))
        add.append(
            f"add element {FAMILY} {NAME} {name} "
            f"{{ {p.nft_value()} timeout {seconds}s{p.nft_comment()} }}"
        )
    return "\n".join(guard + [text] + add) + "\n", dropped


def knock_port_script(new: Table) -> str:
    """nft commands that fill set knock_port as new has it (after the file's own)."""
    ports = new.knock_ports()
    if not ports:
        return ""
    ref = f"{FAMILY} {NAME} {KNOCK_PORT}"
    return f"flush set {ref}\nadd element {ref} {{ {', '.join(map(str, ports))} }}\n"


def load(
    path: str = DEFAULT_FILE,
    knock_port: int | list[int] | None = None,
    protected: dict | None = None,
    forwards=None,
) -> Loaded:
    """Load path as the live table, keeping pending knocks (see the module docstring),
    with knock_port in set knock_port, protected ({"tcp": [22], "udp": []}) in the
    protected sets and forwards (config.Forward objects) in the forwards maps (None:
    as the file has them)."""
    new = (
        test_load(path)
        .with_protected(protected)
        .with_knock_port(knock_port)
        .with_forwards(forwards)
    )
    try:
        with open(path, encoding="utf-8") as f:
            text = (
                f.read().rstrip("\n")
                + "\n"
                + fill_script(protected, None, forwards)
                + knock_port_script(new)
            )
    except (OSError, UnicodeDecodeError) as e:
        raise TableError(f"{path}: cannot read: {e}") from None
    for _ in range(RETRIES):
        old = live()
        if old is None:
            proc = nft("-f", "-", input=text)
            if proc.returncode != 0:
                raise TableError(f"nft -f {path}: {proc.stderr.strip()}")
            return Loaded("armed", new, 0)
        commands = ports_only(new, old)
        if commands == []:
            return Loaded("unchanged", new, len(old.pending()))
        if commands is not None:
            proc = nft("-j", "-f", "-", input=json.dumps({"nftables": commands}))
            if proc.returncode == 0:
                return Loaded("ports", new, len(old.pending()))
            raise TableError(f"nft: updating the protected ports failed: {proc.stderr.strip()}")
        carried = old.pending()
        script, dropped = replacement(text, new, carried)
        proc = nft("-f", "-", input=script)
        if proc.returncode == 0:
            return Loaded("replaced", new, len(carried) - dropped, dropped)
        if not carried:
            raise TableError(f"nft -f {path}: {proc.stderr.strip()}")
        # A carried knock was used or expired after we read it: read again.
    raise TableError(
        f"could not replace table {FAMILY} {NAME}: pending knocks kept changing "
        f"during {RETRIES} attempts; try again"
    )


def load_wanted(want: Wanted) -> Loaded:
    """Load what gnocchi loads (wanted()), keeping pending knocks."""
    return load(want.rules, want.knock_ports, want.protected, want.forwards)


def set_knock_port(port: int | list[int]) -> bool:
    """Fill the live table's set knock_port with port (or ports) alone (one
    transaction); False when the table or the set is not there."""
    ref = f"{FAMILY} {NAME} {KNOCK_PORT}"
    ports = [port] if isinstance(port, int) else port
    proc = nft(f"flush set {ref}; add element {ref} {{ {', '.join(map(str, ports))} }}")
    return proc.returncode == 0


def unload() -> bool:
    """Remove the live table (one transaction that also works when it is gone);
    True if it was loaded."""
    was = live() is not None
    proc = nft(f"add table {FAMILY} {NAME}; delete table {FAMILY} {NAME}")
    if proc.returncode != 0:
        raise TableError(f"nft delete table {FAMILY} {NAME}: {proc.stderr.strip()}")
    return was

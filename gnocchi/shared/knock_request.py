"""A knock's DATA (PROTOCOL.md, "Request") -> Open | OpenPorts | Run | Bad: the
one grammar the client writes (gnocchi.client.knock, gnocchi.client.profile) and the server
reads (verifier, config).

Trusts nothing in DATA: on the server it comes from a client that proved its
key, but may still be anything. Only the canonical forms parse ("open 22",
"open 22/tcp", "open 22/udp", "open 22 60001/udp" with up to MAX_PORTS ports,
"run NAME", "run NAME\\nPAYLOAD"); anything else is Bad(why), and why never
quotes DATA. PAYLOAD is opaque bytes, handed only to an action's stdin.
Whether a client may make a request is the server's policy (config.Client).
show() makes any DATA safe and short for a log field.
"""

from __future__ import annotations

import re
from collections import namedtuple

_PORT = re.compile(r"([1-9][0-9]{0,4})(?:/(tcp|udp))?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
MAX_PORTS = 8  # ports one `open` may name: the helper opens them in one transaction
SHOW_LIMIT = 80  # characters of attacker-chosen text a log field carries

# Named tuples, not dataclasses: importing dataclasses costs the client's
# start several milliseconds (as in gnocchi.shared.protocol). Immutable, equal when
# their fields are; no two kinds have fields of the same types, so an Open
# never equals a Run, nor an OpenPorts a Bad.


class Open(namedtuple("Open", "port proto")):
    """One port: the request "open PORT/PROTO", and one entry of a client's allow list."""

    __slots__ = ()
    # port: int; proto: "tcp" or "udp"

    @property
    def opens(self) -> tuple[Open, ...]:
        return (self,)

    def __str__(self) -> str:
        return f"open {self.port}/{self.proto}"


class OpenPorts(namedtuple("OpenPorts", "opens")):
    """ "open PORT/PROTO PORT/PROTO ...": 2 to MAX_PORTS ports, each once, all or none."""

    __slots__ = ()
    # opens: tuple[Open, ...]

    def __str__(self) -> str:
        return "open " + " ".join(f"{o.port}/{o.proto}" for o in self.opens)


class Run(namedtuple("Run", "name payload", defaults=(b"",))):
    __slots__ = ()
    # name: str; payload: bytes

    def __str__(self) -> str:
        return f"run {self.name}" + (f" ({len(self.payload)}-byte payload)" if self.payload else "")


class Bad(namedtuple("Bad", "why")):
    __slots__ = ()
    # why: str


Request = Open | OpenPorts | Run


def parse_port(item: object) -> Open | None:
    """One port: 22, "22", "22/tcp" or "22/udp" (a config allow entry, a
    request's port); None if it is none of them."""
    if isinstance(item, int) and not isinstance(item, bool):
        item = str(item)
    m = _PORT.fullmatch(item) if isinstance(item, str) else None
    if not m or int(m.group(1)) > 65535:
        return None
    return Open(int(m.group(1)), m.group(2) or "tcp")


def parse_open(ports: str) -> Open | OpenPorts | Bad:
    """What follows "open ": PORT[/tcp|/udp], up to MAX_PORTS, single spaces, each once."""
    items = ports.split(" ", MAX_PORTS)  # at most MAX_PORTS + 1 items, whatever the length
    if len(items) > MAX_PORTS:
        return Bad(f"more than {MAX_PORTS} ports")
    opens: list[Open] = []
    for item in items:
        port = parse_port(item)
        if port is None:
            return Bad(
                f"not open PORT[/tcp|/udp] ... (PORT 1..65535; 1 to {MAX_PORTS} ports, "
                "one space apart)"
            )
        if port in opens:
            return Bad(f"{port.port}/{port.proto} named twice")
        opens.append(port)
    return opens[0] if len(opens) == 1 else OpenPorts(tuple(opens))


def parse(data: bytes) -> Open | OpenPorts | Run | Bad:
    """DATA that is not empty (empty DATA means the client's default: see config.Client)."""
    line, newline, payload = data.partition(b"\n")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return Bad("not an ASCII request line")
    verb, space, arg = text.partition(" ")
    if verb == "open" and space and not newline:
        return parse_open(arg)
    if verb == "open":
        return Bad(
            f"not open PORT[/tcp|/udp] ... (PORT 1..65535; 1 to {MAX_PORTS} ports, one space apart)"
        )
    if verb == "run" and space and _NAME.fullmatch(arg):
        return Run(arg, payload)
    if verb == "run":
        return Bad("not run NAME (NAME: letters, digits, _ . -)")
    return Bad("unknown request (known: open, run)")


def show(data: bytes, limit: int = SHOW_LIMIT) -> str:
    """DATA as printable ASCII (escaped, bounded): safe for any log field or MESSAGE."""
    text = repr(data[:limit])[2:-1]  # b'...' -> escaped body
    return text[:limit] + ("..." if len(data) > limit or len(text) > limit else "")

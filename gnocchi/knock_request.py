"""A knock's DATA (PROTOCOL.md, "Request") -> Open | Run | Bad: the one grammar
the client writes (gnocchi.knock) and the server reads (verifier, config).

Trusts nothing in DATA: on the server it comes from a client that proved its
key, but may still be anything. Only the canonical forms parse ("open 22",
"open 22/tcp", "open 22/udp", "run NAME", "run NAME\\nPAYLOAD"); anything else
is Bad(why). PAYLOAD is opaque bytes, handed only to an action's stdin.
Whether a client may make a request is the server's policy (config.Client).
show() makes any DATA safe and short for a log field.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Union

_PORT = re.compile(r"([1-9][0-9]{0,4})(?:/(tcp|udp))?")
_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}")
SHOW_LIMIT = 80  # characters of attacker-chosen text a log field carries


@dataclass(frozen=True)
class Open:
    port: int
    proto: str  # "tcp" or "udp"

    def __str__(self) -> str:
        return f"open {self.port}/{self.proto}"


@dataclass(frozen=True)
class Run:
    name: str
    payload: bytes = b""

    def __str__(self) -> str:
        return f"run {self.name}" + (f" ({len(self.payload)}-byte payload)" if self.payload else "")


@dataclass(frozen=True)
class Bad:
    why: str


Request = Union[Open, Run]


def parse_port(item) -> Open | None:
    """A config allow entry: 22, "22", "22/tcp" or "22/udp"; None if it is none of them."""
    if isinstance(item, int) and not isinstance(item, bool):
        item = str(item)
    m = _PORT.fullmatch(item) if isinstance(item, str) else None
    if not m or int(m.group(1)) > 65535:
        return None
    return Open(int(m.group(1)), m.group(2) or "tcp")


def parse(data: bytes) -> Open | Run | Bad:
    """DATA that is not empty (empty DATA means the client's default: see config.Client)."""
    line, newline, payload = data.partition(b"\n")
    try:
        text = line.decode("ascii")
    except UnicodeDecodeError:
        return Bad("not an ASCII request line")
    verb, space, arg = text.partition(" ")
    if verb == "open" and space and not newline:
        return parse_port(arg) or Bad("not open PORT, PORT/tcp or PORT/udp (PORT 1..65535)")
    if verb == "run" and space and _NAME.fullmatch(arg):
        return Run(arg, payload)
    if verb == "run":
        return Bad("not run NAME (NAME: letters, digits, _ . -)")
    return Bad("unknown request (known: open, run)")


def show(data: bytes, limit: int = SHOW_LIMIT) -> str:
    """DATA as printable ASCII (escaped, bounded): safe for any log field or MESSAGE."""
    text = repr(data[:limit])[2:-1]  # b'...' -> escaped body
    return text[:limit] + ("..." if len(data) > limit or len(text) > limit else "")

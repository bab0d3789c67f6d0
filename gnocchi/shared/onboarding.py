"""The onboarding line: what `gnocchi add-client` prints and `gnocchi-knock --add` reads.

    gnocchi://HOST:PORT/PUBLIC_KEY?fp=FINGERPRINT&request=REQUEST[&next=NEXT_KEY]

HOST is how the client reaches the server (a name, an IPv4 address, or an
IPv6 address in brackets); PORT its knock port; PUBLIC_KEY the server's v2
public key (64 hex); FINGERPRINT that key's fingerprint (keys.fingerprint),
so a line damaged in the copying is refused, not used; REQUEST the default
request, percent-encoded; NEXT_KEY a rotation's next public key. Nothing in
it is secret (docs/client.md, "Onboarding in one line").

Trusts nothing in a line: parse() checks every part by the rules both sides
use (the knock port is the key's, the fingerprint is the key's, the request
is the verifier's grammar, the host is a plain name or an address) and
raises ValueError saying what is wrong. One rule, written once.
"""

from __future__ import annotations

import ipaddress
import re
from collections import namedtuple
from urllib.parse import parse_qs, quote, urlsplit

from gnocchi.shared import keys, knock_request
from gnocchi.shared.protocol import knock_port

SCHEME = "gnocchi"
# A host as it may go into a TOML string and an ssh_config Host line unquoted.
HOST_NAME = re.compile(r"[A-Za-z0-9](?:[A-Za-z0-9.-]{0,251}[A-Za-z0-9])?")

Onboarding = namedtuple("Onboarding", "host port public request next_public")


def check_host(host: str) -> str:
    """host if it is a plain host name or an IP address, else ValueError. Not an IPv6
    address with a zone (fe80::1%eth0): a zone may hold any byte but a newline, `*`
    and spaces too, which would make the ssh block's Host line match other hosts."""
    try:
        if "%" not in host:
            return str(ipaddress.ip_address(host))
    except ValueError:
        pass
    if not HOST_NAME.fullmatch(host) or ".." in host:
        raise ValueError(f"{host!r} is not a host name or address")
    return host


def make_line(host: str, public: bytes, request: str = "", next_public: bytes | None = None) -> str:
    """The line for a client of the server whose v2 public key is public."""
    host = check_host(host)
    shown = f"[{host}]" if ":" in host else host
    query = f"fp={keys.fingerprint(public)}"
    if request:
        query += f"&request={quote(request, safe='')}"
    if next_public:
        query += f"&next={next_public.hex()}"
    return f"{SCHEME}://{shown}:{knock_port(public)}/{public.hex()}?{query}"


def parse(line: str) -> Onboarding:
    """The parts of a line, each checked; ValueError naming the one that is wrong."""
    line = line.strip()
    try:
        parts = urlsplit(line)
        port = parts.port
    except ValueError:
        raise ValueError("not a gnocchi:// line: its host or port cannot be read") from None
    if parts.scheme != SCHEME or not parts.hostname or parts.username or parts.password:
        raise ValueError("not a gnocchi:// line (it starts gnocchi://HOST:PORT/KEY?fp=...)")
    host = check_host(parts.hostname)
    public = _key(parts.path.lstrip("/"), "the server public key")
    fields = parse_qs(
        parts.query, keep_blank_values=True, strict_parsing=bool(parts.query), max_num_fields=8
    )
    unknown = set(fields) - {"fp", "request", "next"}
    if unknown or any(len(v) != 1 for v in fields.values()):
        raise ValueError(f"unknown or repeated parts: {', '.join(sorted(fields))}")
    if fields.get("fp", [""])[0] != keys.fingerprint(public):
        raise ValueError(
            "the fingerprint is not the key's: the line was damaged on the way (copy it again)"
        )
    if port != knock_port(public):
        raise ValueError(
            f"knock port {port} is not the key's ({knock_port(public)}): the line "
            "was damaged on the way (copy it again)"
        )
    request = fields.get("request", [""])[0]
    if request and isinstance(bad := knock_request.parse(request.encode()), knock_request.Bad):
        raise ValueError(f"the request {request[:60]!r}: {bad.why}")
    next_public = _key(fields["next"][0], "the next key") if "next" in fields else None
    return Onboarding(host, port, public, request, next_public)


def _key(text: str, what: str) -> bytes:
    try:
        return keys.parse_public_hex(text, what)
    except ValueError as e:
        raise ValueError(str(e).replace(" (as `gnocchi pubkey` prints it)", "")) from None

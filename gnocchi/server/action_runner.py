"""`gnocchi run-action`: the runner of one `run NAME` knock, in gnocchi-action@.service.

Trusts its config file (root's, world-readable, no secrets) and systemd,
which hands it one connection from gnocchi-action.socket on stdin. Trusts
nothing in the request on it beyond a choice among configured actions: the
peer must be the verifier's user (SO_PEERCRED; the socket's mode is a second
fence), the message has one exact, length-checked layout, and the action
must be configured and in the named client's actions; the argv and the
timeout come from the config only. Runs as its own user with nothing of the
verifier's (the unit hides the server key, the counter store and
/run/gnocchi). Guarantees one bounded reply, then exit, at most the action's
timeout after the request: systemd then kills whatever the action left in
the unit's cgroup, even in a new session.
"""

from __future__ import annotations

import argparse
import ipaddress
import pwd
import socket
import struct
import sys
from dataclasses import dataclass

from gnocchi.server import actions, config, strict

# The action socket's format, written once: the verifier's side defines it.
from gnocchi.server.action_client import (
    EXITED,
    NOT_STARTED,
    REFUSED,
    REPLY,
    REQUEST,
    TIMED_OUT,
    VERSION,
)
from gnocchi.shared import protocol

NAME_MAX = 64  # config.NAME
MAX_REQUEST = REQUEST.size + 2 * NAME_MAX + protocol.MAX_BODY
RECEIVE_TIMEOUT = 5.0  # the verifier sends its request right after connecting


@dataclass(frozen=True)
class Request:
    action: str
    client: str
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    payload: bytes


def parse_request(message: bytes) -> Request | str:
    """The verifier's request, or why it is refused (never raises)."""
    if not REQUEST.size <= len(message) <= MAX_REQUEST:
        return f"request of {len(message)} bytes"
    version, family, name_len, client_len, payload_len, address = REQUEST.unpack_from(message)
    if version != VERSION:
        return f"request version {version}"
    if REQUEST.size + name_len + client_len + payload_len != len(message):
        return "request lengths do not add up to its size"
    if payload_len > protocol.MAX_BODY:
        return f"payload of {payload_len} bytes"
    source: ipaddress.IPv4Address | ipaddress.IPv6Address
    if family == 4 and not any(address[4:]):
        source = ipaddress.IPv4Address(address[:4])
    elif family == 6:
        source = ipaddress.IPv6Address(address)
    else:
        return f"address family {family}"
    names = message[REQUEST.size : REQUEST.size + name_len + client_len]
    name, client = names[:name_len].decode("latin-1"), names[name_len:].decode("latin-1")
    if not (config.NAME.fullmatch(name) and config.NAME.fullmatch(client)):
        return "action or client is not a name"
    return Request(name, client, source, message[REQUEST.size + name_len + client_len :])


def encode_reply(outcome: actions.Outcome) -> bytes:
    if outcome.timed_out:
        return REPLY.pack(VERSION, TIMED_OUT, 0) + outcome.output[: actions.OUTPUT_LIMIT]
    if outcome.returncode is None:
        return refusal(outcome.problem, NOT_STARTED)
    return REPLY.pack(VERSION, EXITED, outcome.returncode) + outcome.output[: actions.OUTPUT_LIMIT]


def refusal(why: str, kind: int = REFUSED) -> bytes:
    return REPLY.pack(VERSION, kind, 0) + why.encode("ascii", "replace")[: actions.OUTPUT_LIMIT]


def configured(path: str, request: Request) -> config.Action | str:
    """The action the config gives this client under that name, or why none."""
    try:
        strict.check(path)
        cfg = config.load_running(path)  # the verifier's: a broken file's last good copy
    except (config.ConfigError, strict.StrictModeError) as e:
        return str(e)
    client = next((c for c in cfg.clients if c.name == request.client), None)
    if client is None or request.action not in client.actions:
        return f"client {request.client!r} has no action {request.action!r} in {path}"
    return cfg.action(request.action)


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(
        prog="gnocchi run-action",
        description="Run one action for the verifier (started by "
        "gnocchi-action.socket, connection on stdin).",
    )
    parser.add_argument("--config", default=config.DEFAULT_CONFIG, metavar="FILE")
    parser.add_argument(
        "--peer-user",
        metavar="USER",
        help="refuse a peer that is not this user (the unit: gnocchi)",
    )
    args = parser.parse_args(argv[1:])
    try:
        conn = socket.socket(fileno=0)
    except OSError:
        conn = None
    if conn is None or conn.family != socket.AF_UNIX or conn.type != socket.SOCK_SEQPACKET:
        print(
            "gnocchi run-action: stdin is not a Unix seqpacket connection (start me from "
            "gnocchi-action.socket)",
            file=sys.stderr,
        )
        return 1
    try:
        conn.settimeout(RECEIVE_TIMEOUT)
        if args.peer_user and (uid := peer_uid(conn)) != pwd.getpwnam(args.peer_user).pw_uid:
            why = f"peer uid {uid} is not {args.peer_user}"
            conn.send(refusal(why))
        else:
            request = parse_request(conn.recv(MAX_REQUEST + 1))
            action = configured(args.config, request) if isinstance(request, Request) else request
            if isinstance(action, str):
                why = action
                conn.send(refusal(why))
            else:
                assert isinstance(request, Request)  # an action is found for a Request only
                outcome = actions.run(action, request.client, str(request.source), request.payload)
                conn.send(encode_reply(outcome))
                print(
                    f"action {action.name} for client {request.client} from {request.source}: "
                    f"{outcome.problem or 'exited with status 0'}",
                    file=sys.stderr,
                )
                return 0
    except (OSError, KeyError) as e:  # KeyError: no such --peer-user
        print(f"gnocchi run-action: {e}", file=sys.stderr)
        return 1
    print(f"gnocchi run-action: refused: {why}", file=sys.stderr)
    return 1


def peer_uid(conn: socket.socket) -> int:
    creds = conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, struct.calcsize("3i"))
    return int(struct.unpack("3i", creds)[1])

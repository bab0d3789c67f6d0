"""`gnocchi serve`: the verifier daemon behind gnocchi.service.

Trusts its config, its server key and its counter store; trusts nothing in
a packet. For each datagram: protocol.open_packet (PROTOCOL.md steps 1-7,
cheapest first), then the counter is stored durably (step 8) before the
request is even parsed, then the request is checked against that client's
policy and carried out (helper for `open`, actions.run for `run`). It never
sends a datagram (there is no send on the knock socket anywhere), catches
no exception it does not expect (a bug crashes it and systemd restarts it),
and holds no per-packet state: memory is bounded by the config. A counter
store that cannot be read or written stops it (fail closed).
"""
from __future__ import annotations

import argparse
import signal
import socket
import sys

from gnocchi import (actions, config, counters, events, helper_client, keys, knock_request,
                     knock_socket, protocol)

RECV_BUFFER = protocol.MAX_PACKET + 1  # one byte more, so an oversize datagram is seen as such
WAKE = 1.0  # seconds: how often the loop looks at its clock (summaries, SIGTERM)


class Verifier:
    """Decides one datagram at a time, in PROTOCOL.md's receiver order."""

    def __init__(self, cfg: config.Config, server_key: bytes, store: counters.Store,
                 log: events.EventLog):
        self.cfg = cfg
        self.key = server_key
        self.store = store
        self.log = log
        self.clients = cfg.client_by_key()
        self.fixed_ips = tuple(a.packed for a in cfg.server_addresses)

    def last_counter(self, client_key: bytes) -> int | None:
        return self.store.last(client_key) if client_key in self.clients else None

    def server_ips(self, dest) -> tuple[bytes, ...]:
        if self.fixed_ips:
            return self.fixed_ips
        return (dest.packed,) if dest is not None and dest.version == 4 else ()

    def handle(self, packet: bytes, source, dest) -> None:
        server_ips = self.server_ips(dest)
        result = protocol.open_packet(packet, self.key, self.last_counter, server_ips)
        if isinstance(result, protocol.Rejected):
            self.rejected(result, source, server_ips)
            return
        client = self.clients[result.client_key]
        # PROTOCOL.md step 8: nothing happens for this knock unless this returns.
        self.store.commit(result.client_key, result.counter)
        common = dict(client=client.name, client_key=result.client_key.hex(),
                      source_ip=source, counter=result.counter)
        if result.data:
            request = knock_request.parse(result.data)
            shown = knock_request.show(result.data)
        else:
            request, shown = client.default, "(empty: the client's default)"
        if why := knock_socket.unknockable(source):
            self.refuse(client, common, shown, f"the source {source} is {why}", said="a knock")
        elif request is None:
            self.refuse(client, common, shown, "this client has no default request")
        elif isinstance(request, knock_request.Bad):
            self.refuse(client, common, shown, request.why, said="a malformed request")
        elif why := client.why_not(request):
            self.refuse(client, common, str(request), why)
        elif isinstance(request, knock_request.Open):
            self.open(client, common, request, source)
        else:
            self.run(client, common, request, source)

    def rejected(self, result: protocol.Rejected, source, server_ips) -> None:
        if result.claimed_key is None:
            self.log.drop(result.reason)  # steps 1-4: nobody known to name; counted only
            return
        name, key = self.clients[result.claimed_key].name, result.claimed_key.hex()
        if result.reason == protocol.DATA_LENGTH:  # after the signature: the client is proven
            self.log.limited("refused", f"knock for client {name} from {source} refused: "
                             f"{result.reason}", client=name, client_key=key, source_ip=source,
                             reason=result.reason)
            return
        # Replay (step 5) and signature (step 6) rejections: no valid signature
        # backs the key, the packet only claims it, and the fields say so.
        claimed = dict(claimed_client=name, claimed_client_key=key, source_ip=source,
                       reason=result.reason)
        if result.reason == protocol.REPLAY:
            self.log.limited("replay", f"replayed knock claiming client {name} from {source}: "
                             "counter not above the last accepted", **claimed)
        elif not server_ips:
            self.log.limited("signature", f"knock claiming client {name} from {source} came "
                             "over IPv6, but a v1 knock signs an IPv4 address: set "
                             "server_addresses in the config to accept it", **claimed)
        else:
            self.log.limited("signature", f"knock claiming client {name} from {source} has a "
                             "bad signature (other client key or server address)", **claimed)

    def refuse(self, client, common: dict, shown: str, why: str, said: str = "") -> None:
        # A client's own bytes (shown, escaped) go to GNOCCHI_REQUEST only: MESSAGE
        # quotes a request only in the canonical form this code printed itself.
        said = said or f"'{shown}'"
        self.log.event("refused", f"refused {said} for client {client.name} from "
                       f"{common['source_ip']}: {why}", request=shown, reason=why, **common)

    def open(self, client, common: dict, request: knock_request.Open, source) -> None:
        try:
            status = helper_client.request_open(self.cfg.helper_socket, source, request.port,
                                                request.proto)
        except helper_client.HelperUnreachable as e:
            self.log.event("helper-failed", f"{request} for client {client.name} from {source} "
                           f"not opened: helper unreachable: {e}", request=str(request),
                           helper_status="UNREACHABLE", reason=str(e), **common)
            return
        if status != "OK":
            self.log.event("helper-failed", f"{request} for client {client.name} from {source} "
                           f"not opened: helper answered {status}", request=str(request),
                           helper_status=status, **common)
            return
        self.log.event("accepted", f"client {client.name} from {source}: {request}",
                       request=str(request), helper_status=status, **common)

    def run(self, client, common: dict, request: knock_request.Run, source) -> None:
        action = self.cfg.action(request.name)
        outcome = actions.run(action, client.name, str(source), request.payload)
        output = knock_request.show(outcome.output, 4 * actions.OUTPUT_LIMIT) or None
        if outcome.ok:
            self.log.event("action-run", f"client {client.name} from {source} ran {request}",
                           request=str(request), action_output=output, **common)
        else:
            self.log.event("action-failed", f"client {client.name} from {source}: {request} "
                           f"{outcome.problem}", request=str(request), reason=outcome.problem,
                           action_output=output, **common)


def serve(sock: socket.socket, verifier: Verifier, log: events.EventLog, stop: list) -> None:
    sock.settimeout(WAKE)
    while not stop:
        log.tick()
        try:
            packet, ancdata, _flags, source = sock.recvmsg(RECV_BUFFER, knock_socket.ANCILLARY)
        except TimeoutError:
            continue
        verifier.handle(packet, *knock_socket.addresses(source, ancdata))


def interval(text: str) -> float:
    try:
        seconds = float(text)
    except ValueError:
        seconds = 0.0
    if not 1 <= seconds <= 86400:  # a summary per packet would defeat its purpose
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds in 1..86400")
    return seconds


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="gnocchi serve",
                                     description="Run the verifier (normally gnocchi.socket "
                                                 "starts it through gnocchi.service).")
    parser.add_argument("--config", default=config.DEFAULT_PATH, metavar="FILE",
                        help=f"default {config.DEFAULT_PATH}")
    parser.add_argument("--listen", metavar="ADDR",
                        help="IP:PORT or [IPv6]:PORT to bind when systemd passes no socket")
    parser.add_argument("--server-key-file", metavar="FILE",
                        help="default: server_key_file from the config")
    parser.add_argument("--summary-interval", type=interval, default=events.INTERVAL,
                        metavar="SECONDS", help="seconds between dropped-packet summaries")
    args = parser.parse_args(argv[1:])
    log = events.EventLog(interval=args.summary_interval)
    try:
        cfg = config.load(args.config)
        server_key = keys.load_server_key(args.server_key_file or cfg.server_key_file)
        sock = knock_socket.take(args.listen, protocol.knock_port(server_key))
        store = counters.Store(cfg.state_dir).load()
        stop: list = []
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.append(True))
        where = sock.getsockname()
        log.event("started", f"verifier listening on UDP {where[0]} port {where[1]} for "
                  f"{len(cfg.clients)} clients", clients=len(cfg.clients))
        knock_socket.notify("READY=1")
        serve(sock, Verifier(cfg, server_key, store, log), log, stop)
    except (config.ConfigError, keys.KeyFileError, knock_socket.StartupError) as e:
        print(f"gnocchi serve: {e}", file=sys.stderr)
        return 1
    except counters.StoreError as e:  # at start or on a commit: fail closed
        log.flush()
        log.event("store-failed", str(e))
        print(f"gnocchi serve: {e}", file=sys.stderr)
        return 1
    knock_socket.notify("STOPPING=1")
    log.flush()
    return 0

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
import ipaddress
import signal
import socket
import sys

from gnocchi import (actions, audit, config, counters, helper_client, keys, knock_request,
                     knock_socket, protocol)

IP_PKTINFO = 8          # Linux; Python 3.11's socket module lacks it
IPV6_RECVPKTINFO = 49
IPV6_PKTINFO = 50
RECV_BUFFER = protocol.MAX_PACKET + 1  # one byte more, so an oversize datagram is seen as such
ANCILLARY = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(12)  # in6_pktinfo, in_pktinfo
WAKE = 1.0  # seconds: how often the loop looks at its clock (summaries, SIGTERM)


# IPv6 sources that stand for, or embed, an IPv4 address (RFC 4291, 3056,
# 4380, 6052): a knock that came over IPv6 from one of them is refused, never
# translated, or it would open IPv4 for an address that sent nothing.
EMBEDDING_IPV4 = tuple(ipaddress.IPv6Network(n) for n in (
    "::ffff:0:0/96", "::/96", "2002::/16", "2001::/32", "64:ff9b::/96", "64:ff9b:1::/48"))
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


def addresses(sockaddr, ancdata) -> tuple:
    """(source, destination) of a datagram as it really arrived. A dual-stack
    socket shows an IPv4 datagram's source as ::ffff:a.b.c.d, and so would it
    show an IPv6 packet that really came from ::ffff:a.b.c.d: only IP_PKTINFO,
    which the kernel adds to IPv4 datagrams alone, says the source is IPv4."""
    source = ipaddress.ip_address(sockaddr[0])
    dest = None
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # in_pktinfo: ifindex, spec_dst, addr
            if source.version == 6:
                source = source.ipv4_mapped
            return source, ipaddress.IPv4Address(data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == IPV6_PKTINFO and len(data) >= 16:
            dest = ipaddress.IPv6Address(data[:16])  # in6_pktinfo: addr, ifindex
    return source, dest


def unknockable(source) -> str | None:
    """Why no knock is accepted from this source address, or None. The
    helper refuses the same addresses (helper/request.py: knockable)."""
    if source.version == 6 and any(source in net for net in EMBEDDING_IPV4):
        return "an IPv6 address that embeds an IPv4 address (mapped, compatible, 6to4, Teredo or NAT64)"
    if (source.is_unspecified or source.is_multicast or source.is_loopback
            or source.is_link_local or source.is_reserved
            or (source.is_site_local if source.version == 6 else source in THIS_NETWORK)):
        return "not a unicast address a client can knock from"
    return None


def parse_listen(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise knock_socket.StartupError(f"--listen {text!r}: expected IP:PORT or [IPv6]:PORT") from None
    return address, int(port)


def listen(text: str, knock_port: int) -> socket.socket:
    address, port = parse_listen(text)
    if port != knock_port:
        raise knock_socket.StartupError(f"--listen {text!r}: port {port} is not this server key's knock "
                              f"port {knock_port}; clients knock on {knock_port}")
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((str(address), port))
    except OSError as e:
        sock.close()
        raise knock_socket.StartupError(f"--listen {text!r}: cannot bind: {e.strerror}") from None
    return sock


def enable_pktinfo(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, IPV6_RECVPKTINFO, 1)
        try:  # a dual-stack socket's IPv4 datagrams may come with IP_PKTINFO instead
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        except OSError:
            pass  # an IPV6_V6ONLY socket sees no IPv4 datagrams anyway
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


class Verifier:
    """Decides one datagram at a time, in PROTOCOL.md's receiver order."""

    def __init__(self, cfg: config.Config, server_key: bytes, store: counters.Store,
                 log: audit.Audit):
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
        if why := unknockable(source):
            self.refuse(client, common, shown, f"the source {source} is {why}", said="a knock")
        elif request is None:
            self.refuse(client, common, shown, "this client has no default request")
        elif isinstance(request, knock_request.Bad):
            self.refuse(client, common, shown, request.why, said="a malformed request")
        elif why := knock_request.authorise(client, request):
            self.refuse(client, common, str(request), why)
        elif isinstance(request, knock_request.Open):
            self.open(client, common, request, source)
        else:
            self.run(client, common, request, source)

    def rejected(self, result: protocol.Rejected, source, server_ips) -> None:
        if result.client_key is None:
            self.log.drop(result.reason)  # steps 1-4: nobody known to name; counted only
            return
        name = self.clients[result.client_key].name
        common = dict(client=name, client_key=result.client_key.hex(), source_ip=source,
                      reason=result.reason)
        if result.reason == protocol.REPLAY:
            # Not signature-checked (PROTOCOL.md step 5): the packet only claims the client.
            self.log.limited("replay", f"replayed knock claiming client {name} from {source}: "
                             "counter not above the last accepted", **common)
        elif result.reason == protocol.SIGNATURE and not server_ips:
            self.log.limited("signature", f"knock claiming client {name} from {source} came "
                             "over IPv6, but a v1 knock signs an IPv4 address: set "
                             "server_addresses in the config to accept it", **common)
        elif result.reason == protocol.SIGNATURE:
            self.log.limited("signature", f"knock claiming client {name} from {source} has a "
                             "bad signature (other client key or server address)", **common)
        else:
            self.log.limited("refused", f"knock for client {name} from {source} refused: "
                             f"{result.reason}", **common)

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


def serve(sock: socket.socket, verifier: Verifier, log: audit.Audit, stop: list) -> None:
    sock.settimeout(WAKE)
    while not stop:
        log.tick()
        try:
            packet, ancdata, _flags, source = sock.recvmsg(RECV_BUFFER, ANCILLARY)
        except TimeoutError:
            continue
        verifier.handle(packet, *addresses(source, ancdata))


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
    parser.add_argument("--summary-interval", type=interval, default=audit.INTERVAL,
                        metavar="SECONDS", help="seconds between dropped-packet summaries")
    args = parser.parse_args(argv[1:])
    log = audit.Audit(interval=args.summary_interval)
    try:
        cfg = config.load(args.config)
        server_key = keys.load_server_key(args.server_key_file or cfg.server_key_file)
        port = protocol.knock_port(server_key)
        sock = knock_socket.inherited_socket(port)
        if sock is None and not args.listen:
            raise knock_socket.StartupError(f"no socket: start me from gnocchi.socket, or give --listen "
                                  f"IP:{port} ({port} is this server key's knock port)")
        if sock is None:
            sock = listen(args.listen, port)
        enable_pktinfo(sock)
        store = counters.Store(cfg.state_dir).load()
    except counters.StoreError as e:
        log.event("store-failed", str(e))
        print(f"gnocchi serve: {e}", file=sys.stderr)
        return 1
    except (config.ConfigError, keys.KeyFileError, knock_socket.StartupError) as e:
        print(f"gnocchi serve: {e}", file=sys.stderr)
        return 1
    stop: list = []
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.append(True))
    where = sock.getsockname()
    log.event("started", f"verifier listening on UDP {where[0]} port {where[1]} for "
              f"{len(cfg.clients)} clients", clients=len(cfg.clients))
    knock_socket.notify("READY=1")
    try:
        serve(sock, Verifier(cfg, server_key, store, log), log, stop)
    except counters.StoreError as e:
        log.flush()
        log.event("store-failed", str(e))
        print(f"gnocchi serve: {e}", file=sys.stderr)
        return 1
    knock_socket.notify("STOPPING=1")
    log.flush()
    return 0

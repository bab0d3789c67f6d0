"""`gnocchi serve`: the verifier daemon behind gnocchi.service.

Trusts its config, server keys and counter store; nothing in a packet. Each
datagram, v1 or v2 (PROTOCOL.md), on any of its knock sockets: up to the seal
where it lies (protocol.unseal, once), the steps after it, the source and
client policy. Then, for the datagrams of one read (a batch): their counters
stored durably in one write, and only then each request, to the helper
(`open`, all in flight at once) or the action socket (`run`, never waited
for). It never sends a datagram, catches no exception it does not expect
(systemd restarts it), keeps bounded state, and stops when its store fails.
"""
from __future__ import annotations

import argparse
import select
import signal
import socket
import sys

from gnocchi.server import (action_client, actions, config, counters, events, helper_client,
                            keyring, knock_socket, ratelimit, strict)
from gnocchi.shared import keys, knock_request, protocol

WAKE = 1.0  # seconds: how often the loop looks at its clock (summaries, overdue actions)
RECENT = 4096  # packets remembered as decided, to drop exact repeats cheaply
# A client knocks a few times for a login (ProxyCommand retries 3 times), a
# script a few a minute: these limits never touch that, and keep one client,
# or one address, from spending the disk, the journal and the helper for all.
CLIENT_BURST, CLIENT_REFILL = 20, 1.0     # knocks at once, then one a second
ADDRESS_BURST, ADDRESS_REFILL = 40, 0.5   # per source address (clients behind one NAT)


class Verifier:
    """Decides each datagram in PROTOCOL.md's receiver order; settle() acts on a batch's."""

    def __init__(self, cfg: config.Config, keys: keyring.Keyring, store: counters.Store,
                 log: events.EventLog, now: config.Clock = config.utc_now):
        self.now = now  # wall clock, for clients' expiry
        self.recent: dict[bytes, None] = {}  # NONCE||MAC of packets past the MAC, oldest first
        self.client_limit = ratelimit.Limiter(CLIENT_BURST, CLIENT_REFILL)
        self.address_limit = ratelimit.Limiter(ADDRESS_BURST, ADDRESS_REFILL)
        self.cfg, self.keys, self.store, self.log = cfg, keys, store, log
        self.clients = cfg.client_by_key()
        self.fixed_ips = tuple(a.packed for a in cfg.server_addresses)
        self.runs = action_client.Runs(cfg.action_socket)
        self.due: list[tuple] = []  # knocks whose counters await the batch's commit

    def last_counter(self, client_key: bytes) -> int | None:
        return self.store.last(client_key) if client_key in self.clients else None

    def handle(self, tag: bytes, unsealed: protocol.Unsealed, source: knock_socket.Address,
               dest: knock_socket.Address | None) -> None:
        # A datagram past its seal: tag is its first 40 bytes, unsealed what it sealed.
        if tag in self.recent:
            # The very bytes of a packet already decided (a captured knock sent
            # again and again): dropped without a second signature check.
            self.log.drop("repeated")
            return
        self.recent[tag] = None
        if len(self.recent) > RECENT:
            del self.recent[next(iter(self.recent))]
        # The addresses a knock may sign: the config's, else the one it was sent to.
        server_ips = self.fixed_ips or ((dest.packed,) if dest is not None else ())
        result = protocol.open_plaintext(unsealed, self.last_counter, server_ips)
        if isinstance(result, protocol.Rejected):
            self.rejected(result, source, unsealed.version == 1 and not any(
                len(ip) == 4 for ip in server_ips))
            return
        client = self.clients[result.client_key]
        now = self.now()
        if why := (knock_socket.unknockable(source) or client.refusal(source, now)
                   or keyring.refusal(self.keys, unsealed.server_key, now)):
            # The source rule and the client's own policy, first: a stolen key used
            # from elsewhere costs no write, spends nothing (not even in memory, so
            # it cannot raise the real client's counter), and its entries share the
            # log's budget.
            self.log.limited("refused", f"knock for client {client.name} from {source} "
                             f"refused: {why}; counter not stored", client=client.name,
                             client_key=result.client_key.hex(), source_ip=source, reason=why)
            return
        # PROTOCOL.md step 8: the counter is spent now (in memory, so the packet cannot be
        # replayed while this verifier runs), and stored by settle() before anything is
        # done for this knock.
        self.store.note(result.client_key, result.counter)
        if not (self.client_limit.allow(result.client_key) and self.address_limit.allow(source)):
            # Over its limit: dropped before the disk or the helper, counted in the
            # interval's summary (its counter is stored with the next commit).
            self.log.over_limit(client.name)
            return
        self.due.append((client, result, source, unsealed.version))

    def settle(self) -> None:
        """The batch's knocks: their counters stored in one durable write, then each acted on."""
        due, self.due, opens = self.due, [], []
        if due:
            self.store.commit()  # PROTOCOL.md step 8: nothing happens for these unless it returns
        for client, result, source, version in due:
            common = dict(client=client.name, client_key=result.client_key.hex(),
                          source_ip=source, counter=result.counter, protocol=version)
            request: knock_request.Request | knock_request.Bad | None = \
                knock_request.parse(result.data) if result.data else client.default
            shown = knock_request.show(result.data) if result.data else \
                "(empty: the client's default)"
            if request is None:
                self.refuse(client, common, shown, "this client has no default request")
            elif isinstance(request, knock_request.Bad):
                self.refuse(client, common, shown, request.why, said="a malformed request")
            elif why := client.why_not(request) or self.cfg.unreachable(request, source):
                self.refuse(client, common, str(request), why)
            elif isinstance(request, knock_request.Run):
                self.run(client, common, request, source)
            else:
                opens.append((client, common, request, source))
        self.open(opens)

    def rejected(self, result: protocol.Rejected, source: knock_socket.Address,
                 no_ipv4: bool) -> None:
        if result.reason == protocol.UNKNOWN_CLIENT:  # counted by key id and source only
            self.log.unknown_key(result.claimed_key, source)
            return
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
        if result.reason == protocol.REPLAY:  # by how far: counters are clock nanoseconds
            self.log.limited("replay", events.replayed(name, source, self.store.last(
                result.claimed_key) - result.counter), **claimed)
        elif no_ipv4:
            self.log.limited("signature", f"knock claiming client {name} from {source} came "
                             "over IPv6, but a v1 knock signs an IPv4 address: set "
                             "server_addresses in the config to accept it", **claimed)
        else:
            self.log.limited("signature", f"knock claiming client {name} from {source} has a "
                             "bad signature (other client key or server address)", **claimed)

    def refuse(self, client: config.Client, common: dict, shown: str, why: str,
               said: str = "") -> None:
        # A client's own bytes (shown, escaped) go to GNOCCHI_REQUEST only: MESSAGE
        # quotes a request only in the canonical form this code printed itself.
        said = said or f"'{shown}'"
        self.log.event("refused", f"refused {said} for client {client.name} from "
                       f"{common['source_ip']}: {why}", request=shown, reason=why, **common)

    def open(self, opens: list) -> None:
        """One helper request per knock (every port or none), all in flight at once; one
        entry each, naming all its ports."""
        statuses = helper_client.request_opens(self.cfg.helper_socket, [
            (source, request.opens, client.name) for client, _, request, source in opens])
        for (client, common, request, source), status in zip(opens, statuses, strict=True):
            said, fields = f"{request} for client {client.name} from {source}", dict(
                request=str(request), **common)
            if isinstance(status, helper_client.HelperUnreachable):
                self.log.event("helper-failed", f"{said}: helper: {status}",
                               helper_status="UNREACHABLE", reason=str(status), **fields)
            elif status != "OK":
                self.log.event("helper-failed", f"{said} not opened: helper answered {status}",
                               helper_status=status, **fields)
            else:
                self.log.event("accepted", f"client {client.name} from {source}: {request}",
                               helper_status=status, **fields)

    def run(self, client: config.Client, common: dict, request: knock_request.Run,
            source: knock_socket.Address) -> None:
        if why := self.runs.refusal(client.name):
            self.refuse(client, common, str(request), why)
            return
        fields = dict(request=str(request), **common)
        try:
            self.runs.start(client.name, self.cfg.action(request.name), source,
                            request.payload, fields)
        except action_client.RunnerUnreachable as e:
            self.ran(fields, actions.Outcome(None, b"", f"not started: {e}"))

    def ran(self, fields: dict, outcome: actions.Outcome) -> None:
        """A run's outcome, when the loop sees it (fields: its knock's, from run())."""
        output = knock_request.show(outcome.output, 4 * actions.OUTPUT_LIMIT) or None
        said = f"client {fields['client']} from {fields['source_ip']}"
        if outcome.ok:
            self.log.event("action-run", f"{said} ran {fields['request']}",
                           action_output=output, **fields)
        else:
            self.log.event("action-failed", f"{said}: {fields['request']} {outcome.problem}",
                           reason=outcome.problem, action_output=output, **fields)


def serve(socks: list[socket.socket], verifier: Verifier, log: events.EventLog, stop: list,
          woken: socket.socket | None = None) -> None:
    """Knocks and action outcomes, as they come, until stop (woken: at once)."""
    runs, v1_key, keys2 = verifier.runs, verifier.keys.v1, verifier.keys.v2
    HEAD = protocol.NONCE_LEN
    readers = {sock: knock_socket.Datagrams(sock) for sock in socks}
    for sock in socks:
        sock.setblocking(False)
    while not stop:
        log.tick()
        for fields, outcome in runs.overdue():
            verifier.ran(fields, outcome)
        ready, _, _ = select.select([*socks, *runs.connections(), *([woken] if woken else [])],
                                    [], [], WAKE)
        for conn in ready:
            if stop:
                # Stopping (a reload): knocks not yet read stay in systemd's socket
                # for the next verifier and its new config.
                break
            if conn is woken:
                continue
            if conn not in readers:
                if finished := runs.finish(conn):
                    verifier.ran(*finished)
                continue
            d, dropped = readers[conn], []
            # Up to BATCH; none when the datagram select saw had a bad checksum.
            for i in range(d.read()):
                # Up to the seal where the datagram lies: until a MAC holds, its bytes
                # are anyone's, and nothing is made of them, not even its addresses.
                unsealed = protocol.unseal(d.lengths[i], d.heads[i * HEAD:i * HEAD + HEAD],
                                           d.boxes[i], d.opened, v1_key, keys2)
                if isinstance(unsealed, str):
                    dropped.append(unsealed)
                    continue
                verifier.handle(d.tag(i), unsealed, *knock_socket.addresses(*d.sender(i)))
            log.drops(dropped)
            verifier.settle()  # the batch's one durable write, then its knocks acted on


def main(argv: list[str]) -> int:
    # A fixed width: argparse, left to find the terminal's, imports shutil (0.5 MB resident).
    parser = argparse.ArgumentParser(
        prog="gnocchi serve", formatter_class=lambda prog: argparse.HelpFormatter(prog, width=78),
        description="Run the verifier (normally gnocchi.socket starts it via gnocchi.service).")
    parser.add_argument("--config", default=config.DEFAULT_CONFIG, metavar="FILE",
                        help=f"default {config.DEFAULT_CONFIG}")
    parser.add_argument("--listen", metavar="ADDR", action="append", default=[],
                        help="IP:PORT or [IPv6]:PORT to bind when systemd passes no socket "
                             "(again for each knock port)")
    parser.add_argument("--keys-from", metavar="DIR",
                        help="read the key files from DIR (server.key, private.key: systemd's "
                             "credentials); default: the files the config names")
    parser.add_argument("--summary-interval", type=events.interval, default=events.INTERVAL,
                        metavar="SECONDS", help="seconds between dropped-packet summaries")
    args = parser.parse_args(argv[1:])
    log = events.EventLog(interval=args.summary_interval)
    try:
        cfg = config.load_running(args.config, log.event)  # a broken file: its last good copy
        keys_ = keyring.load(cfg, args.keys_from)
        for path in (cfg.path, *keyring.paths(cfg, args.keys_from).values()):
            strict.check(path)  # StrictModes: others must not write them
        socks = knock_socket.take(args.listen, keyring.ports(keys_))
        store = counters.Store(cfg.state_dir).load()
        strict.check(store.path)
        if fallen := store.fallen_back():  # once: the next commit writes over that slot
            log.event("store-fell-back", fallen)
        stop: list = []
        # A reload (SIGTERM) must not leave this config deciding knocks for up to
        # WAKE seconds: the signal also writes a byte that wakes select.
        woken, wake = socket.socketpair()
        wake.setblocking(False)
        signal.set_wakeup_fd(wake.fileno())
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: stop.append(True))
        where = ", ".join(f"{s.getsockname()[0]} port {s.getsockname()[1]}" for s in socks)
        versions = " and ".join(v for v, on in (("v1", keys_.v1), ("v2", keys_.v2)) if on)
        log.event("started", f"verifier listening on UDP {where} (knock protocol {versions}) "
                  f"for {len(cfg.clients)} clients of {cfg.path}", clients=len(cfg.clients))
        knock_socket.notify("READY=1")
        serve(socks, Verifier(cfg, keys_, store, log), log, stop, woken)
    except (config.ConfigError, keys.KeyFileError, knock_socket.StartupError,
            strict.StrictModeError) as e:
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

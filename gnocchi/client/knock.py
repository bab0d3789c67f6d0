"""gnocchi-knock: send one knock (PROTOCOL.md v1, or v2 given the server's public key),
optionally then relay ssh's connection.

Runs as the user, with the user's own keys and config; trusts its command
line, profile file and key files only as far as their checked formats (keys
through gnocchi.shared.keys, profiles through gnocchi.client.profile). The server never
answers, so the only input from the network is the TCP stream relayed in
--proxy mode, which is copied byte for byte and never interpreted.

Guarantees: a counter is used at most once per (server key, client key) on
this machine (client/counter.py stores it durably before the packet is sent).
"""

from __future__ import annotations

import argparse
import errno
import os
import select
import socket
import struct
import sys
import time

from gnocchi import __version__
from gnocchi.client import counter as client_counter
from gnocchi.client import profile
from gnocchi.shared import keys, knock_request, protocol, seal

CONNECT_TIMEOUT = 3.0  # seconds; covers the first SYN retransmit (1 s)
ATTEMPTS = 3
RETRY_PAUSE = 1.0  # seconds from one knock to the next when a connect is refused at once
# --proxy's connects, in seconds after the knock. The server opens a few milliseconds
# after the knock arrives, and drops a SYN that comes before (its kernel sends it
# again only a second later): while none has connected, a new connect from a new
# port follows, at doubling intervals, and the one before it is reset. One at a
# time: the gate lets every SYN of a knocked address in while the knock waits and
# admits the first handshake that completes (docs/firewall.md), so two connects in
# flight could both complete here while the server took only one of them. No
# second knock is spent.
SYN_AT = (0.005, 0.015, 0.035, 0.075, 0.155, 0.315, 0.635)


class KnockError(Exception):
    """Anything that stops a knock; the message is one line for the user."""


def check_request(text: str) -> bytes:
    """The request as PROTOCOL.md's DATA, or KnockError saying what a request looks like."""
    # The server's own grammar; surrogatepass keeps argv's undecodable bytes
    # as bytes here, so they are judged as the request line or the payload.
    request = knock_request.parse(text.encode("utf-8", "surrogatepass"))
    if text and isinstance(request, knock_request.Bad):
        # why is the grammar's own words, the same the server would log.
        raise KnockError(f"request {text[:60]!r}: {request.why}")
    try:
        data = text.encode("utf-8")
    except UnicodeEncodeError:
        raise KnockError("the request is not UTF-8 text") from None
    if len(data) > protocol.MAX_BODY:
        raise KnockError(
            f"request is {len(data)} bytes; at most {protocol.MAX_BODY} fit in a knock"
        )
    return data


def proxy_port(text: str) -> int:
    """--proxy's PORT, read as the request grammar reads a port: 22 (or 22/tcp)."""
    port = knock_request.parse_port(text)
    if port is None or port.proto != "tcp":
        raise KnockError(f"--proxy port {text!r} is not a TCP port number")
    return port.port


def check_proxy_port(data: bytes, port: int) -> None:
    """--proxy connects to TCP port: a request that opens ports (one or several)
    must open that one, or every knock would be spent on a connect that cannot
    come up. An empty request is the server's default, which only it knows."""
    request = knock_request.parse(data) if data else None
    if (
        isinstance(request, (knock_request.Open, knock_request.OpenPorts))
        and knock_request.Open(port, "tcp") not in request.opens
    ):
        raise KnockError(
            f"--proxy connects to TCP port {port}, but the request "
            f"'{request}' does not open it: add {port} to the request"
        )


def resolve(
    host: str, port: int, need_ipv4: bool, family: int = socket.AF_UNSPEC
) -> list[tuple[int, str]]:
    """(family, address) of each address of host, in the order ssh tries them
    (getaddrinfo's, RFC 6724), IPv4 only when need_ipv4 (a v1 knock signing the
    address it is sent to); family: -4 or -6."""
    # An address needs no lookup, and getaddrinfo would load the IDNA codec
    # (~1 ms) to encode it; inet_ntop gives it as getaddrinfo would.
    found = []
    for fam in (socket.AF_INET, socket.AF_INET6):
        try:
            found = [(fam, socket.inet_ntop(fam, socket.inet_pton(fam, host)))]
        except (OSError, ValueError):  # not an address of this family (ValueError: a NUL)
            continue
    if not found:
        try:
            infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        except socket.gaierror as e:
            raise KnockError(f"{host} does not resolve: {e.strerror}") from None
        found = list(
            dict.fromkeys(
                (fam, sockaddr[0])
                for fam, _, _, _, sockaddr in infos
                if fam in (socket.AF_INET, socket.AF_INET6)
            )
        )
    wanted = socket.AF_INET if need_ipv4 else family
    usable = [f for f in found if wanted in (socket.AF_UNSPEC, f[0])]
    if usable:
        return usable
    if need_ipv4:
        raise KnockError(
            f"{host} has no IPv4 address; knock protocol v1 signs the server's "
            "IPv4 address: give an IPv4 name or address, --sign-ip with the "
            "server's IPv4 address, or knock with protocol v2 (the server's "
            "public key), which signs IPv6 addresses too"
        )
    raise KnockError(f"{host} has no IPv{4 if family == socket.AF_INET else 6} address")


class Knock:
    """Everything one knock needs, checked: keys loaded, request parsed, addresses
    resolved. v2 (PROTOCOL.md) when given the server's public key, else v1."""

    def __init__(
        self,
        host: str,
        server_key_file,
        client_key_file,
        state_dir,
        sign_ip: str | None,
        request: bytes,
        server_public: bytes | None = None,
        family: int = socket.AF_UNSPEC,
        next_public: bytes | None = None,
    ):
        # v2 seals to the public key, v1 to the shared key; each names its knock port.
        # During a rotation the next key first: the server takes it from the start of
        # the overlap; the current one is --proxy's fallback (a rotation undone).
        self.v2 = server_public is not None
        self.server_keys = (
            [k for k in (next_public, server_public) if k]
            if self.v2
            else [keys.load_server_key(server_key_file)]
        )
        self.seed = keys.load_secret(client_key_file)
        self.state_dir = state_dir
        self.use(self.server_keys[0])
        self.targets = resolve(host, self.port, not self.v2 and sign_ip is None, family)
        self.family, self.address = self.targets[0]
        self.sign_ip = sign_ip
        self.request = request

    def use(self, server_key: bytes) -> None:
        self.server_key, self.port = server_key, protocol.knock_port(server_key)
        self.counter_file = client_counter.counter_path(
            self.state_dir, server_key, keys.public_of(self.seed)
        )

    def describe(self, counter: int) -> str:
        what = "v2, server public key" if self.v2 else "server key"
        return (
            f"knocked {self.address} port {self.port} ({what} "
            f"{keys.fingerprint(self.server_key)}, counter {counter}"
        )

    def send(self, target: tuple[int, str] | None = None, server_key: bytes | None = None) -> int:
        """Take a counter, store it, then send to target (default: the first
        address) with server_key (default: the first); returns the counter."""
        self.family, self.address = target or self.targets[0]
        self.use(server_key or self.server_keys[0])
        counter = client_counter.take_counter(self.counter_file)
        signed = self.sign_ip or self.address
        if self.v2:
            packet = seal.build_packet2(
                self.server_key,
                self.seed,
                counter,
                self.request,
                socket.inet_pton(socket.AF_INET6 if ":" in signed else socket.AF_INET, signed),
            )
        else:
            packet = seal.build_packet(
                self.server_key, self.seed, counter, self.request, socket.inet_aton(signed)
            )
        try:
            with socket.socket(self.family, socket.SOCK_DGRAM) as s:
                s.sendto(packet, (self.address, self.port))
        except OSError as e:
            raise KnockError(
                f"cannot send to {self.address} port {self.port}: {e.strerror}"
            ) from None
        return counter


def _write_all(fd: int, data: bytes) -> None:
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view) :]


def relay(conn: socket.socket, fd_in: int = 0, fd_out: int = 1) -> None:
    """Copy fd_in -> conn and conn -> fd_out until the server side closes.

    When fd_in ends (ssh closed our stdin) the write half is shut down and the
    server's remaining output is still delivered.
    """
    conn.setblocking(True)
    conn.settimeout(None)
    inputs = [fd_in, conn]
    while True:
        readable, _, _ = select.select(inputs, [], [])
        if fd_in in readable:
            data = os.read(fd_in, 65536)
            if data:
                conn.sendall(data)
            else:
                conn.shutdown(socket.SHUT_WR)
                inputs.remove(fd_in)
        if conn in readable:
            data = conn.recv(65536)
            if not data:
                return
            _write_all(fd_out, data)


def connect(
    family: int, address: str, port: int, timeout: float, sent: float, clock=time.monotonic
) -> socket.socket:
    """A TCP connection to (address, port), tried at SYN_AT after `sent` (the knock's
    clock()), one at a time, until one connects within timeout of it; OSError if none."""
    starts, deadline, tries = [sent + at for at in SYN_AT], sent + timeout, []
    try:
        while (now := clock()) < deadline:
            if starts and now >= starts[0]:
                starts.pop(0)
                reset(tries)  # before the next SYN: never two handshakes in flight
                tries.append(socket.socket(family, socket.SOCK_STREAM))
                tries[-1].setblocking(False)
                if (err := tries[-1].connect_ex((address, port))) not in (0, errno.EINPROGRESS):
                    raise OSError(err, os.strerror(err))
                continue
            wake = min(starts[0], deadline) if starts else deadline
            if select.select([], tries, [], max(0.0, wake - now))[1]:
                conn = tries.pop()
                if err := conn.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR):
                    conn.close()
                    raise OSError(err, os.strerror(err))  # refused: the port answered
                return conn
        raise OSError(errno.ETIMEDOUT, os.strerror(errno.ETIMEDOUT))
    finally:
        reset(tries)


def reset(tries: list) -> None:
    """Close each unfinished connect with a reset: the server forgets a half-open one
    at once, and a SYN-ACK that comes later meets no socket here (another reset)."""
    while tries:
        conn = tries.pop()
        conn.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        conn.close()


def proxy(knock: Knock, port: int, attempts: int, timeout: float, say) -> None:
    """Knock, connect to the knocked address, relay; knock again (new counter) if connect fails."""
    for attempt in range(1, attempts + 1):
        started = time.monotonic()
        # As ssh would: its addresses in order, each knocked, then connected to.
        counter = knock.send(
            knock.targets[(attempt - 1) % len(knock.targets)],
            knock.server_keys[(attempt - 1) % len(knock.server_keys)],
        )
        say(f"{knock.describe(counter)}, attempt {attempt}/{attempts})")
        try:
            conn = connect(knock.family, knock.address, port, timeout, started)
        except OSError as e:
            say(f"connect to {knock.address} port {port} failed: {e.strerror or e}")
            if attempt < attempts:  # give the server time before spending another counter
                time.sleep(max(0.0, RETRY_PAUSE - (time.monotonic() - started)))
            continue
        say(
            f"connected to {knock.address} port {port} "
            f"{(time.monotonic() - started) * 1000:.0f} ms after the knock"
        )
        with conn:
            try:
                relay(conn)
            except OSError as e:
                raise KnockError(
                    f"connection to {knock.address} port {port} ended: {e.strerror or e}"
                ) from None
        return
    raise KnockError(
        f"no connection to {' or '.join(dict.fromkeys(a for _, a in knock.targets[:attempts]))} "
        f"port {port} after {attempts} knocks on UDP port {knock.port} "
        f"({'v2, server public' if knock.v2 else 'server'} key "
        f"{keys.fingerprint(knock.server_key)}). Likely: the knocks "
        f"do not arrive (a firewall on the way, or the server's own rules, drop UDP "
        f"{knock.port}: `gnocchi doctor` on the server checks), the server has another server "
        f"key (compare the fingerprint with `gnocchi status`), the server does not know your "
        f"key or lets it open something else (`journalctl -u gnocchi` there says), or port "
        f"{port} is not protected and closed. -v shows each try"
    )


def path_argument(text: str) -> str:
    """A path flag's value; an empty one is the current directory, as pathlib read it."""
    return text or "."


def help_formatter(prog: str) -> argparse.HelpFormatter:
    """argparse's formatter at shutil.get_terminal_size()'s width, asked without
    shutil: argparse makes a formatter for each add_argument, and left to
    itself imports shutil (~2 ms of every knock's start) for the width."""
    try:
        columns = int(os.environ.get("COLUMNS", ""))
    except ValueError:
        columns = 0
    if columns <= 0:
        try:
            columns = os.get_terminal_size(sys.__stdout__.fileno()).columns
        except (AttributeError, ValueError, OSError):
            columns = 0
    return argparse.HelpFormatter(prog, width=(columns or 80) - 2)


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gnocchi-knock",
        formatter_class=help_formatter,
        description="Send one gnocchi knock to HOST (or to a profile's host); see docs/client.md.",
    )
    p.add_argument(
        "host",
        nargs="?",
        metavar="HOST",
        help="server name or address; also selects the profile of that name or host",
    )
    p.add_argument(
        "--config",
        type=path_argument,
        metavar="FILE",
        help="profile file (default ~/.config/gnocchi/knock.toml)",
    )
    p.add_argument("--profile", metavar="NAME", help="use this profile from the config")
    p.add_argument(
        "--server-key-file",
        type=path_argument,
        metavar="FILE",
        help="the server key (knock protocol v1)",
    )
    p.add_argument(
        "--server-public-key", metavar="HEX", help="the server's public key: knock with protocol v2"
    )
    fam = p.add_mutually_exclusive_group()
    fam.add_argument(
        "-4",
        dest="family",
        action="store_const",
        const=socket.AF_INET,
        default=socket.AF_UNSPEC,
        help="IPv4 addresses only (as ssh -4)",
    )
    fam.add_argument(
        "-6",
        dest="family",
        action="store_const",
        const=socket.AF_INET6,
        help="IPv6 addresses only (as ssh -6)",
    )
    p.add_argument("--client-key-file", type=path_argument, metavar="FILE")
    p.add_argument(
        "--state-dir",
        type=path_argument,
        metavar="DIR",
        help="counter state (default ~/.local/state/gnocchi)",
    )
    p.add_argument(
        "--sign-ip",
        metavar="ADDRESS",
        help="the server's address to sign (server behind NAT; IPv4, or with v2 "
        "IPv6 too); default: the address the knock is sent to",
    )
    req = p.add_mutually_exclusive_group()
    req.add_argument(
        "--request",
        metavar="TEXT",
        help='"open PORT[/tcp|/udp] ..." (up to 8 ports) or "run NAME"; default: '
        "the profile's, else empty (the server's default for this client)",
    )
    req.add_argument(
        "--open",
        metavar="PORT[/PROTO]",
        action="append",
        help='shorthand for --request "open PORT"; repeated, one knock opens '
        "them all (--open 22 --open 60001/udp)",
    )
    req.add_argument("--run", metavar="NAME", help='shorthand for --request "run NAME"')
    p.add_argument(
        "--payload",
        metavar="FILE",
        help="with --run: send FILE's contents (- for standard input) as the payload",
    )
    p.add_argument(
        "--proxy",
        nargs=2,
        metavar=("HOST", "PORT"),
        help="for ssh's ProxyCommand: knock HOST, connect to TCP PORT, relay "
        "stdin/stdout; a request that opens ports must open PORT/tcp among them",
    )
    p.add_argument(
        "--attempts",
        type=int,
        default=ATTEMPTS,
        help=f"--proxy: knocks before giving up (default {ATTEMPTS})",
    )
    p.add_argument(
        "--connect-timeout",
        type=float,
        default=CONNECT_TIMEOUT,
        metavar="SECONDS",
        help=f"--proxy: wait per connect (default {CONNECT_TIMEOUT:g})",
    )
    p.add_argument("-v", "--verbose", action="store_true", help="say what was sent, on stderr")
    key = p.add_mutually_exclusive_group()
    key.add_argument(
        "--keygen",
        nargs="?",
        const="",
        metavar="FILE",
        help="make a client key instead of knocking (default "
        "~/.config/gnocchi/client.key) and print its public key",
    )
    key.add_argument(
        "--pubkey",
        nargs="?",
        const="",
        metavar="FILE",
        help="print the public key of a client key instead of knocking (default "
        "~/.config/gnocchi/client.key), for the server's admin",
    )
    p.add_argument("--version", action="version", version=f"gnocchi-knock {__version__}")
    p.add_argument(
        "--add",
        metavar="LINE",
        help="instead of knocking, write the profile and the ~/.ssh/config block "
        "of the server's onboarding line ('gnocchi://...', from `gnocchi "
        "add-client`)",
    )
    p.add_argument(
        "--ssh-config",
        metavar="FILE",
        default=None,
        help="--add: ssh's config to add the Host block to (default ~/.ssh/config; '' for none)",
    )
    return p


def default_client_key() -> str:
    return os.path.join(os.path.dirname(profile.default_config_path()), "client.key")


def _request_text(args, prof: profile.Profile | None) -> str:
    if args.payload is not None and args.run is None:
        raise KnockError("--payload goes with --run NAME")
    if args.open is not None:
        return "open " + " ".join(args.open)
    if args.run is not None:
        if args.payload is None:
            return f"run {args.run}"
        try:
            if args.payload == "-":
                payload = sys.stdin.buffer.read(protocol.MAX_BODY + 1)
            else:
                with open(args.payload, "rb") as f:
                    payload = f.read(protocol.MAX_BODY + 1)
            text = payload.decode("utf-8")
        except OSError as e:
            raise KnockError(f"{args.payload}: cannot read the payload: {e.strerror}") from None
        except UnicodeDecodeError:
            raise KnockError(f"{args.payload}: the payload is not UTF-8 text") from None
        return f"run {args.run}\n{text}" if text else f"run {args.run}"
    if args.request is not None:
        return args.request
    return (prof.request if prof else None) or ""


def build(args) -> Knock:
    """Merge flags over the selected profile (flags win) into a checked Knock."""
    host = args.proxy[0] if args.proxy else args.host
    config = args.config or profile.default_config_path()
    prof = None
    if args.profile and not args.config and not os.path.exists(config):
        raise profile.ProfileError(f"unknown profile {args.profile!r}: there is no {config}")
    if args.config or args.profile or os.path.exists(config):
        profiles, default = profile.load(config)
        prof = profile.select(profiles, default, config, args.profile, host)
    if prof and prof.host and (host is None or host == prof.name):
        host = prof.host
    server_key_file = args.server_key_file or (prof.server_key_file if prof else None)
    client_key_file = args.client_key_file or (prof.client_key_file if prof else None)
    if args.server_public_key and args.server_key_file:
        raise KnockError("give either --server-public-key (v2) or --server-key-file (v1)")
    server_public = (
        profile.parse_public_key(args.server_public_key, "--server-public-key")
        if args.server_public_key
        else None
        if args.server_key_file
        else prof.server_public_key
        if prof
        else None
    )
    next_public = (
        prof.next_server_public_key
        if prof and server_public and server_public == prof.server_public_key
        else None
    )
    if not host:
        raise KnockError("no server: give HOST, or a profile with host = ... (docs/client.md)")
    if not server_key_file and not server_public:
        raise KnockError(
            "no server key: give --server-public-key HEX (v2), "
            "--server-key-file FILE (v1), or a profile with either"
        )
    if not client_key_file:
        raise KnockError(
            "no client key: give --client-key-file FILE or a profile with client_key_file"
        )
    sign_ip = (
        profile.parse_sign_ip(args.sign_ip, "--sign-ip", server_public is not None)
        if args.sign_ip
        else prof.sign_ip
        if prof
        else None
    )
    text = _request_text(args, prof)
    try:
        request = check_request(text)
    except KnockError as e:
        if prof and text == prof.request and args.request is None:
            raise KnockError(f"{config}: profiles.{prof.name}.request: {e}") from None
        raise
    state_dir = args.state_dir or client_counter.default_state_dir()
    return Knock(
        host,
        server_key_file,
        client_key_file,
        state_dir,
        sign_ip,
        request,
        server_public,
        args.family,
        next_public,
    )


def main(argv=None) -> int:
    args = parser().parse_args(sys.argv[1:] if argv is None else argv)

    def say(text):
        if args.verbose:
            print(f"gnocchi-knock: {text}", file=sys.stderr)

    try:
        if args.keygen is not None:  # the client's own keygen: no server package needed
            path = args.keygen or default_client_key()
            print(keys.create_client_key(path).hex())
            print(
                f"gnocchi-knock: made {path}; give the public key above to the server's admin "
                "(gnocchi add-client NAME PUBKEY)",
                file=sys.stderr,
            )
            return 0
        if args.pubkey is not None:  # the public key again, whenever the admin asks
            print(keys.public_of(keys.load_secret(args.pubkey or default_client_key())).hex())
            return 0
        if args.add is not None:  # onboarding: no knock
            from gnocchi.client import onboard

            ssh_config = (
                os.path.join(os.path.expanduser("~"), ".ssh", "config")
                if args.ssh_config is None
                else args.ssh_config
            )
            try:
                done = onboard.add(
                    args.add,
                    args.config or profile.default_config_path(),
                    args.client_key_file,
                    ssh_config,
                )
            except (onboard.AddError, OSError) as e:
                raise KnockError(str(e)) from None
            print(f"gnocchi-knock: {done}", file=sys.stderr)
            return 0
        if args.proxy and args.host:
            raise KnockError("give either HOST or --proxy HOST PORT, not both")
        port = proxy_port(args.proxy[1]) if args.proxy else None
        if not 1 <= args.attempts <= 10:
            raise KnockError("--attempts must be 1 to 10")
        if not 0 < args.connect_timeout <= 60:
            raise KnockError("--connect-timeout must be above 0 and at most 60 seconds")
        if args.proxy and args.payload == "-":
            raise KnockError(
                "--payload - reads standard input, which --proxy relays: give the payload in a file"
            )
        knock = build(args)
        if port is not None:
            check_proxy_port(knock.request, port)  # before any counter is spent
            proxy(knock, port, args.attempts, args.connect_timeout, say)
        else:
            # One knock, to the address ssh tries first (the same resolver, the same
            # order). Not one per family: a knock opens only the address it came
            # from, and two knocks may arrive out of order, the later counter first,
            # so the other would be a replay (docs/client.md, "IPv6").
            counter = knock.send()
            say(f"{knock.describe(counter)})")
    except (KnockError, client_counter.CounterError, keys.KeyFileError, profile.ProfileError) as e:
        print(f"gnocchi-knock: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""The verifier's knock socket: taking it, and where each datagram came from.

Trusts systemd's LISTEN_FDS/LISTEN_PID and NOTIFY_SOCKET, and the kernel's
IP_PKTINFO, but not the unit file: the passed descriptors must be UDP
sockets, exactly one on each knock port of the server's keys, or the verifier
refuses to start with the ListenDatagram= lines the unit needs (--listen
binds them itself, on those ports only). listen_fds() also removes LISTEN_*
from the environment, so nothing the verifier starts inherits them.
Datagrams reads them in batches with recvmmsg(2), which Python's socket
module lacks, through ctypes, into buffers made once. addresses() reports a
datagram's source as it really arrived: an IPv6 source is never turned into
an IPv4 one.
"""

from __future__ import annotations

import ctypes
import errno
import ipaddress
import os
import socket
import struct
import sys

from nacl._sodium import ffi

from gnocchi.shared import protocol

Address = ipaddress.IPv4Address | ipaddress.IPv6Address
SockAddr = tuple[str, int] | tuple[str, int, int, int]  # (host, port[, flowinfo, scope_id])

IP_PKTINFO = 8  # Linux (struct in_pktinfo: ifindex, spec_dst, addr); Python 3.11's socket lacks it
ANCILLARY = socket.CMSG_SPACE(20) + socket.CMSG_SPACE(12)  # in6_pktinfo, in_pktinfo
RECV_BUFFER = protocol.MAX_PACKET2 + 1  # one byte more, so an oversize datagram is seen as such
BATCH = 64  # datagrams per recvmmsg call
# IPv6 sources that stand for, or embed, an IPv4 address (RFC 4291, 3056,
# 4380, 6052): a knock that came over IPv6 from one of them is refused, never
# translated, or it would open IPv4 for an address that sent nothing.
EMBEDDING_IPV4 = tuple(
    ipaddress.IPv6Network(n)
    for n in (
        "::ffff:0:0/96",
        "::ffff:0:0:0/96",
        "::/96",
        "2002::/16",
        "2001::/32",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
    )
)
THIS_NETWORK = ipaddress.IPv4Network("0.0.0.0/8")


class StartupError(Exception):
    """The verifier cannot start; str() says why and what to change."""


def unit_hint(ports: list[int]) -> str:
    lines = " ".join(f"ListenDatagram={p}" for p in ports)
    return (
        f"gnocchi.socket needs exactly {lines} (the knock port{'s' if len(ports) > 1 else ''} "
        f"of the server's keys; `gnocchi setup` writes that drop-in)"
    )


def take(listen_texts: list[str], ports: list[int]) -> list[socket.socket]:
    """The sockets systemd passed, else ones bound to --listen; IP_PKTINFO on."""
    socks = inherited_sockets(ports)
    if not socks and not listen_texts:
        raise StartupError(
            f"no socket: start me from gnocchi.socket, or give --listen "
            f"IP:{ports[0]} (the knock port{'s' if len(ports) > 1 else ''} of "
            f"the server's keys: {', '.join(map(str, ports))})"
        )
    socks = socks or [listen(text, ports) for text in listen_texts]
    for sock in socks:
        enable_pktinfo(sock)
    return socks


def inherited_sockets(ports: list[int]) -> list[socket.socket]:
    """The UDP sockets systemd passed, one on each knock port, checked; [] when
    started without socket activation."""
    fds = listen_fds()
    socks: list[socket.socket] = []
    try:
        for fd in fds:
            try:
                sock = socket.socket(fileno=fd)
            except OSError:  # not a socket at all
                sock = None
            if (
                sock is None
                or sock.family not in (socket.AF_INET, socket.AF_INET6)
                or sock.type != socket.SOCK_DGRAM
            ):
                if sock is not None:
                    sock.detach()  # not ours to close: systemd's descriptor, checked only
                raise StartupError(
                    f"a socket systemd passed (fd {fd}) is not a UDP socket; {unit_hint(ports)}"
                )
            socks.append(sock)
            port = socks[-1].getsockname()[1]
            if port not in ports:
                raise StartupError(
                    f"a socket systemd passed is on UDP port {port}, but the "
                    f"knock port{'s' if len(ports) > 1 else ''} of the server's "
                    f"keys {'are' if len(ports) > 1 else 'is'} "
                    f"{', '.join(map(str, ports))}; {unit_hint(ports)}"
                )
        if fds and sorted(s.getsockname()[1] for s in socks) != sorted(ports):
            raise StartupError(
                f"systemd passed {len(fds)} socket{'s' if len(fds) > 1 else ''} "
                f"for {len(ports)} knock port{'s' if len(ports) > 1 else ''}; "
                f"{unit_hint(ports)}"
            )
    except StartupError:
        for sock in socks:
            sock.close()
        raise
    return socks


def parse_listen(text: str) -> tuple[ipaddress.IPv4Address | ipaddress.IPv6Address, int]:
    host, sep, port = text.rpartition(":")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    try:
        address = ipaddress.ip_address(host)
        if not sep or not port.isdigit() or not 0 < int(port) < 65536:
            raise ValueError
    except ValueError:
        raise StartupError(f"--listen {text!r}: expected IP:PORT or [IPv6]:PORT") from None
    return address, int(port)


def listen(text: str, ports: list[int]) -> socket.socket:
    address, port = parse_listen(text)
    if port not in ports:
        raise StartupError(
            f"--listen {text!r}: port {port} is not a knock port of the "
            f"server's keys ({', '.join(map(str, ports))}); clients knock there"
        )
    family = socket.AF_INET if address.version == 4 else socket.AF_INET6
    sock = socket.socket(family, socket.SOCK_DGRAM)
    try:
        sock.bind((str(address), port))
    except OSError as e:
        sock.close()
        raise StartupError(f"--listen {text!r}: cannot bind: {e.strerror}") from None
    return sock


def enable_pktinfo(sock: socket.socket) -> None:
    if sock.family == socket.AF_INET6:
        sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_RECVPKTINFO, 1)
        try:  # a dual-stack socket's IPv4 datagrams may come with IP_PKTINFO instead
            sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)
        except OSError:
            pass  # an IPV6_V6ONLY socket sees no IPv4 datagrams anyway
    else:
        sock.setsockopt(socket.IPPROTO_IP, IP_PKTINFO, 1)


class _iovec(ctypes.Structure):
    _fields_ = [("iov_base", ctypes.c_void_p), ("iov_len", ctypes.c_size_t)]


class _msghdr(ctypes.Structure):
    _fields_ = [
        ("msg_name", ctypes.c_void_p),
        ("msg_namelen", ctypes.c_uint32),
        ("msg_iov", ctypes.POINTER(_iovec)),
        ("msg_iovlen", ctypes.c_size_t),
        ("msg_control", ctypes.c_void_p),
        ("msg_controllen", ctypes.c_size_t),
        ("msg_flags", ctypes.c_int),
    ]


class _mmsghdr(ctypes.Structure):
    _fields_ = [("msg_hdr", _msghdr), ("msg_len", ctypes.c_uint)]


_recvmmsg = ctypes.CDLL(None, use_errno=True).recvmmsg
_recvmmsg.argtypes = [
    ctypes.c_int,
    ctypes.POINTER(_mmsghdr),
    ctypes.c_uint,
    ctypes.c_int,
    ctypes.c_void_p,
]
_recvmmsg.restype = ctypes.c_int
_SOCKADDR_LEN = 28  # struct sockaddr_in6, the larger of the two


class Datagrams:
    """The datagrams of one recvmmsg(2) call on a socket, BATCH at most.

    The kernel scatters datagram i over two buffers: its first NONCE_LEN
    bytes (v1's nonce, v2's MAGIC2 and MAC1) into one, head(i), the rest into
    boxes[i] after BOXZERO_LEN zero bytes, which is the layout libsodium's
    secretbox open reads (and v2's sealed box lies whole after the zeros), so
    protocol.unseal checks a datagram's MAC where it lies (boxes are cffi
    views of the buffers, opened is where it opens them). A datagram longer
    than MAX_PACKET2 is cut at RECV_BUFFER bytes, so it is seen as oversize.
    """

    def __init__(self, sock: socket.socket):
        self.sock = sock
        tail = RECV_BUFFER - protocol.NONCE_LEN
        self._nonces = ctypes.create_string_buffer(protocol.NONCE_LEN * BATCH)  # one block
        self._boxes = [
            ctypes.create_string_buffer(protocol.BOXZERO_LEN + tail) for _ in range(BATCH)
        ]
        self._names = [ctypes.create_string_buffer(_SOCKADDR_LEN) for _ in range(BATCH)]
        self._controls = [ctypes.create_string_buffer(ANCILLARY) for _ in range(BATCH)]
        self._iovecs = (_iovec * (2 * BATCH))()
        self._headers = (_mmsghdr * BATCH)()
        for i in range(BATCH):
            nonce, after = self._iovecs[2 * i], self._iovecs[2 * i + 1]
            nonce.iov_base = ctypes.addressof(self._nonces) + i * protocol.NONCE_LEN
            nonce.iov_len = protocol.NONCE_LEN
            after.iov_base = ctypes.addressof(self._boxes[i]) + protocol.BOXZERO_LEN
            after.iov_len = tail
            h = self._headers[i].msg_hdr
            h.msg_name, h.msg_namelen = ctypes.addressof(self._names[i]), _SOCKADDR_LEN
            h.msg_iov, h.msg_iovlen = ctypes.pointer(nonce), 2
            h.msg_control, h.msg_controllen = ctypes.addressof(self._controls[i]), ANCILLARY
        # recvmmsg writes lengths into the headers: each call starts from this copy.
        self._fresh = bytes(self._headers)
        # The headers' msg_len fields, read all at once after each call (a ctypes
        # attribute read per datagram costs more than the rest of a garbage one's path).
        self._words = memoryview(self._headers).cast("B").cast("I")
        self._stride = ctypes.sizeof(_mmsghdr) // 4
        self.lengths: list[int] = []  # of the datagrams of the last read, in order
        self.heads = b""  # their first NONCE_LEN bytes each, one after the other
        self.boxes = [ffi.from_buffer(b) for b in self._boxes]
        self.opened = ffi.new("unsigned char[]", len(self._boxes[0]))

    def read(self) -> int:
        """How many datagrams arrived (0 if none was waiting, or on EINTR); never waits."""
        ctypes.memmove(self._headers, self._fresh, len(self._fresh))
        count = _recvmmsg(self.sock.fileno(), self._headers, BATCH, socket.MSG_DONTWAIT, None)
        if count < 0:
            code = ctypes.get_errno()
            if code in (errno.EAGAIN, errno.EINTR):
                return 0
            raise OSError(code, os.strerror(code))
        first = _mmsghdr.msg_len.offset // 4
        self.lengths = self._words[first : first + count * self._stride : self._stride].tolist()
        self.heads = self._nonces.raw[: count * protocol.NONCE_LEN]
        return int(count)

    def length(self, i: int) -> int:
        """Datagram i's length, at most RECV_BUFFER (so more than MAX_PACKET: cut)."""
        return self.lengths[i]

    def packet(self, i: int) -> bytes:
        """Datagram i's bytes, as recvmsg would give them."""
        tail = self._boxes[i].raw[protocol.BOXZERO_LEN :]
        return (self.head(i) + tail)[: self.length(i)]

    def head(self, i: int) -> bytes:
        """Datagram i's first NONCE_LEN bytes (fewer of them its own, if it is shorter)."""
        return self.heads[i * protocol.NONCE_LEN : (i + 1) * protocol.NONCE_LEN]

    def tag(self, i: int) -> bytes:
        """Datagram i's first 40 bytes (v1: NONCE and MAC; v2: MAGIC2, MAC1 and
        half of EPK): what tells one packet from another."""
        mac = ctypes.string_at(
            ctypes.addressof(self._boxes[i]) + protocol.BOXZERO_LEN, protocol.MAC_LEN
        )
        return self.head(i) + mac

    def sender(self, i: int) -> tuple:
        """(sockaddr, ancdata) of datagram i, as socket.recvmsg gives them."""
        h = self._headers[i].msg_hdr
        name = self._names[i].raw[: h.msg_namelen]
        family = int.from_bytes(name[0:2], sys.byteorder)
        port = int.from_bytes(name[2:4], "big")
        sockaddr: SockAddr
        if family == socket.AF_INET6:  # sockaddr_in6: family, port, flowinfo, addr, scope_id
            flowinfo = int.from_bytes(name[4:8], "big")
            scope_id = int.from_bytes(name[24:28], sys.byteorder)
            sockaddr = (socket.inet_ntop(family, name[8:24]), port, flowinfo, scope_id)
        else:  # sockaddr_in: family, port, addr
            sockaddr = (socket.inet_ntop(family, name[4:8]), port)
        return sockaddr, control_messages(self._controls[i].raw[: h.msg_controllen])


def control_messages(control: bytes) -> list[tuple[int, int, bytes]]:
    """(level, type, data) of each message in a msg_control buffer: struct
    cmsghdr (cmsg_len, cmsg_level, cmsg_type), then data up to cmsg_len, the
    next one at the next CMSG_SPACE boundary. A truncated one ends the list."""
    found, at, header = [], 0, socket.CMSG_LEN(0)
    while at + header <= len(control):
        length, level, kind = struct.unpack_from("@Nii", control, at)
        if not header <= length <= len(control) - at:
            break
        found.append((level, kind, control[at + header : at + length]))
        at += socket.CMSG_SPACE(length - header)
    return found


def addresses(
    sockaddr: SockAddr, ancdata: list[tuple[int, int, bytes]]
) -> tuple[Address, Address | None]:
    """(source, destination) of a datagram as it really arrived. A dual-stack
    socket shows an IPv4 datagram's source as ::ffff:a.b.c.d, and so would it
    show an IPv6 packet that really came from ::ffff:a.b.c.d: only IP_PKTINFO,
    which the kernel adds to IPv4 datagrams alone, says the source is IPv4."""
    # From its bytes: ip_address() parsing the text of an IPv6 (or v4-mapped) source
    # costs 15 us a knock. Datagrams.sender() writes it with inet_ntop (no %scope).
    host = sockaddr[0].partition("%")[0]
    source: Address = (
        ipaddress.IPv6Address(socket.inet_pton(socket.AF_INET6, host))
        if ":" in host
        else ipaddress.IPv4Address(host)
    )
    dest = None
    for level, kind, data in ancdata:
        if level == socket.IPPROTO_IP and kind == IP_PKTINFO and len(data) >= 12:
            # in_pktinfo: ifindex, spec_dst, addr
            if source.version == 6:
                source = source.ipv4_mapped or source  # mapped: always, on a dual-stack socket
            return source, ipaddress.IPv4Address(data[8:12])
        if level == socket.IPPROTO_IPV6 and kind == socket.IPV6_PKTINFO and len(data) >= 16:
            dest = ipaddress.IPv6Address(data[:16])  # in6_pktinfo: addr, ifindex
    return source, dest


def unknockable(source: Address) -> str | None:
    """Why no knock is accepted from this source address, or None: the one source
    rule, before anything is stored. The helper refuses the same addresses
    (helper/request.py: unknockable, its twin; tests/test_contract.py pins them)."""
    if source.version == 6 and any(source in net for net in EMBEDDING_IPV4):
        return (
            "the source is an IPv6 address that embeds an IPv4 address (mapped, "
            "compatible, 6to4, Teredo or NAT64)"
        )
    if (
        source.is_unspecified
        or source.is_multicast
        or source.is_loopback
        or source.is_link_local
        or source.is_reserved
        or (source.is_site_local if source.version == 6 else source in THIS_NETWORK)
    ):
        return "the source is not a unicast address a client can knock from"
    return None


# sd_listen_fds(3) and sd_notify(3), written out: python3-systemd's module for them
# would cost the verifier about 1 MB of memory (libsystemd and what it loads).
LISTEN_FDS_START = 3


def listen_fds() -> list[int]:
    """The descriptors systemd passed (LISTEN_FDS from fd 3 on, if LISTEN_PID is this
    process), with LISTEN_* removed from the environment: nothing started inherits them."""
    pid, count = os.environ.pop("LISTEN_PID", ""), os.environ.pop("LISTEN_FDS", "")
    os.environ.pop("LISTEN_FDNAMES", None)
    if pid != str(os.getpid()) or not count.isdigit():
        return []
    return list(range(LISTEN_FDS_START, LISTEN_FDS_START + int(count)))


def notify(state: str) -> None:
    """sd_notify(state) when systemd asked for it (Type=notify); otherwise nothing."""
    path = os.environ.get("NOTIFY_SOCKET", "")
    if path:  # a path, or an abstract socket's name after "@"
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as sock:
            sock.sendto(state.encode(), "\0" + path[1:] if path.startswith("@") else path)

"""systemd glue for the verifier: the one inherited knock socket, and readiness.

Trusts systemd's LISTEN_FDS/LISTEN_PID and NOTIFY_SOCKET, but not the unit
file: the passed descriptor must be exactly one UDP socket on the knock port
derived from the server key, or the verifier refuses to start with the
ListenDatagram= line the unit needs. listen_fds() also removes LISTEN_* from
the environment, so nothing the verifier starts inherits them.
"""
from __future__ import annotations

import os
import socket

from systemd import daemon


class StartupError(Exception):
    """The verifier cannot start; str() says why and what to change."""


def unit_hint(knock_port: int) -> str:
    return (f"gnocchi.socket needs exactly one ListenDatagram={knock_port} "
            f"(the knock port of the server key; `gnocchi setup` writes that drop-in)")


def inherited_socket(knock_port: int) -> socket.socket | None:
    """The UDP socket systemd passed, checked; None when started without socket activation."""
    fds = daemon.listen_fds()
    if not fds:
        return None
    if len(fds) != 1:
        raise StartupError(f"systemd passed {len(fds)} sockets, not one; {unit_hint(knock_port)}")
    fd = fds[0]
    if not daemon.is_socket_inet(fd, type=socket.SOCK_DGRAM):
        raise StartupError(f"the socket systemd passed (fd {fd}) is not a UDP socket; "
                           f"{unit_hint(knock_port)}")
    sock = socket.socket(fileno=fd)
    port = sock.getsockname()[1]
    if port != knock_port:
        sock.close()
        raise StartupError(f"the socket systemd passed is on UDP port {port}, but this server "
                           f"key's knock port is {knock_port}; {unit_hint(knock_port)}")
    return sock


def notify(state: str) -> None:
    """sd_notify(state) when systemd asked for it (Type=notify); otherwise nothing."""
    if os.environ.get("NOTIFY_SOCKET"):
        daemon.notify(state)

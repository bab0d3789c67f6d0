# python3-systemd (systemd/daemon.py, 235): only what gnocchi/server and helper/ call.
import socket

def listen_fds(unset_environment: bool = True) -> list[int]: ...
def is_socket_inet(
    fileobj: int | socket.socket,
    family: int = ...,
    type: int = 0,
    listening: int = -1,
    port: int = 0,
) -> bool: ...
def notify(
    status: str, unset_environment: bool = False, pid: int = 0, fds: list[int] | None = None
) -> bool: ...

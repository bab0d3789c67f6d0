"""What the tests share, in one place: import any of it from `support`.

    netns      Net, Lan, Host, inside   hosts in network namespaces of our own (198.18.0.0/15)
    sockets    tcp_connect, echoes,     traffic between them; datagrams from the client
               udp_socket, EchoServices,
               send_datagrams
    table      load_table, ruleset,     nft/gnocchi.nft in a namespace, and what the kernel holds
               elements
    processes  REPO, PYTHON, stop,      the checkout's CLI, stopping a process, the JSON
               gnocchi_cli, events,     events a verifier writes outside systemd, and a
               root_only                skip (with its reason) for a test only root can run
    helper     request, STATUS, Helper, the helper's request format, the real root helper,
               HelperRecorder,          a recording stand-in for the verifier's tests, and
               helper_main,             for the helper's unprivileged unit tests only: its
               FakeNftables             __main__ module and a libnftables stand-in
    verifier   Keys, write_config,      keys, a config, knocks (v1, v2), the real verifier
               knock, knock2, Daemon    daemon

tests/conftest.py puts the checkout, helper/ and tests/ on sys.path, once. Nothing
here touches the root namespace's network or firewall.
"""

from support.helper import (
    ENTRY,
    HEADER,
    STATUS,
    FakeNftables,
    Helper,
    HelperRecorder,
    helper_main,
    request,
    requested_ports,
)
from support.netns import Host, Lan, Net, inside
from support.processes import PYTHON, REPO, events, gnocchi_cli, root_only, stop
from support.sockets import (
    UDP_CLIENT,
    EchoServices,
    echoes,
    send_datagrams,
    send_paced,
    tcp_connect,
    udp_socket,
)
from support.table import TABLE_FILE, elements, load_table, ruleset
from support.verifier import Daemon, Keys, knock, knock2, write_config

__all__ = [
    "ENTRY",
    "HEADER",
    "STATUS",
    "FakeNftables",
    "Helper",
    "HelperRecorder",
    "helper_main",
    "request",
    "requested_ports",
    "Host",
    "Lan",
    "Net",
    "inside",
    "PYTHON",
    "REPO",
    "events",
    "gnocchi_cli",
    "root_only",
    "stop",
    "UDP_CLIENT",
    "EchoServices",
    "echoes",
    "send_datagrams",
    "send_paced",
    "tcp_connect",
    "udp_socket",
    "TABLE_FILE",
    "elements",
    "load_table",
    "ruleset",
    "Daemon",
    "Keys",
    "knock",
    "knock2",
    "write_config",
]

"""`python3 -m gnocchi.admin COMMAND ...`: the admin commands, each in its own module.

Trusts its command line only to pick one of COMMANDS: that module alone is
imported and runs with the arguments; any other word is a usage error.
"""

import importlib
import sys

from gnocchi import __version__

# command -> module whose main(argv) runs it; imported lazily so one broken
# dependency does not take down unrelated commands.
COMMANDS = {
    "keygen": ("gnocchi.admin.keygen", "make a server or client key"),
    "pubkey": ("gnocchi.admin.keygen", "print a client key's public key"),
    "port": ("gnocchi.admin.keygen", "print the knock port of a server key"),
    "add-client": (
        "gnocchi.admin.clients",
        "add a client to gnocchi.toml; print its knock.toml and ssh config",
    ),
    "remove-client": ("gnocchi.admin.clients", "remove a client from gnocchi.toml"),
    "protect": (
        "gnocchi.admin.protect",
        "protect ports ([protect] in gnocchi.toml) and reload the table",
    ),
    "unprotect": ("gnocchi.admin.protect", "stop protecting ports and reload the table"),
    "reload": (
        "gnocchi.admin.reload",
        "after editing gnocchi.toml: check it, then apply it (or refuse it)",
    ),
    "rotate-key": (
        "gnocchi.admin.rotate",
        "a next v2 server key beside the current one; --finish; --lines",
    ),
    "setup": ("gnocchi.admin.setup", "write gnocchi.socket's drop-in for the server key's port"),
    "serve": ("gnocchi.server.verifier", "run the verifier (normally started by gnocchi.socket)"),
    "run-action": (
        "gnocchi.server.action_runner",
        "run one action (started by gnocchi-action.socket)",
    ),
    "audit": ("gnocchi.admin.audit", "summarise the journal's gnocchi entries"),
    "recover-counters": (
        "gnocchi.admin.recover_counters",
        "replace a lost counter store: every knock up to now is a replay",
    ),
    "check": (
        "gnocchi.admin.check",
        "check config, keys, knock port, table file; 0 if all is well",
    ),
    "table": (
        "gnocchi.admin.table",
        "load/unload table inet gnocchi (what gnocchi-arm.service runs)",
    ),
    "arm": ("gnocchi.admin.arm", "arm: --trial SECONDS (disarms by itself), then --confirm"),
    "disarm": ("gnocchi.admin.arm", "disarm now and for good (disable --now gnocchi.socket)"),
    "doctor": (
        "gnocchi.admin.doctor",
        "check everything a server needs; each failure with its fix",
    ),
    "status": (
        "gnocchi.admin.status",
        "ARMED or NOT ARMED (from the kernel), port, clients, pending",
    ),
    "metrics": (
        "gnocchi.admin.metrics",
        "Prometheus metrics for node_exporter (what gnocchi-metrics.timer runs)",
    ),
}


def usage() -> str:
    lines = [
        "usage: gnocchi COMMAND [ARGS...]",
        "       gnocchi --version",
        "",
        "commands (`gnocchi COMMAND --help` for each):",
    ]
    lines += [f"  {name:16} {text}" for name, (_, text) in COMMANDS.items()]
    return "\n".join(lines)


def main(argv=None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if not argv or argv[0] in ("-h", "--help"):
        print(usage())
        return 0 if argv else 2
    if argv[0] == "--version":
        print(f"gnocchi {__version__}")
        return 0
    if argv[0] not in COMMANDS:
        print(f"gnocchi: unknown command {argv[0]!r}\n\n{usage()}", file=sys.stderr)
        return 2
    module = importlib.import_module(COMMANDS[argv[0]][0])
    return module.main(argv)


if __name__ == "__main__":
    sys.exit(main())

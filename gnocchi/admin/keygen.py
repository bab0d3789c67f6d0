"""`gnocchi keygen|pubkey|port`: make and inspect key files.

Trusts only its command line and the key files it is pointed at, read through
gnocchi.shared.keys (which checks format and permissions). Prints one value on
stdout on success (a server key's fingerprint goes to stderr, for the admin
to compare with gnocchi-knock -v, so scripts still read one value); on any
error one line on stderr naming the file, exit 1.
"""
from __future__ import annotations

import argparse
import sys

from gnocchi.shared import keys
from gnocchi.shared.protocol import knock_port


def keygen(args) -> str:
    if args.server:
        key = keys.new_server_key()
        keys.write_secret(args.server, key)
        say_fingerprint(key)
        return str(knock_port(key))
    return keys.create_client_key(args.client).hex()


def pubkey(args) -> str:
    return keys.public_of(keys.load_secret(args.file)).hex()


def port(args) -> str:
    key = keys.load_server_key(args.file)
    say_fingerprint(key)
    return str(knock_port(key))


def say_fingerprint(server_key: bytes) -> None:
    print(f"server key fingerprint {keys.fingerprint(server_key)}", file=sys.stderr)


def parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gnocchi {command}")
    if command == "keygen":
        p.description = ("Make a new key file (mode 0600; an existing file is never replaced). "
                         "A server key prints its knock port, a client key its public key "
                         "(a client key's missing directories are made 0700).")
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--server", metavar="FILE", help="make a server key")
        which.add_argument("--client", metavar="FILE", help="make a client signing key")
        p.set_defaults(run=keygen)
    elif command == "pubkey":
        p.description = "Print the public key of a client key, for the server's [clients] table."
        p.add_argument("file", metavar="FILE", help="client key file")
        p.set_defaults(run=pubkey)
    else:
        p.description = "Print the UDP knock port derived from a server key."
        p.add_argument("file", metavar="FILE", help="server key file")
        p.set_defaults(run=port)
    return p


def main(argv: list[str]) -> int:
    """argv: ["keygen"|"pubkey"|"port", ARGS...], as gnocchi/admin/__main__.py passes it."""
    args = parser(argv[0]).parse_args(argv[1:])
    try:
        print(args.run(args))
    except keys.KeyFileError as e:
        print(f"gnocchi {argv[0]}: {e}", file=sys.stderr)
        return 1
    return 0


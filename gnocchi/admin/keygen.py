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
    if args.private:
        return private_keygen(args.private, args.same_port_as)
    return keys.create_client_key(args.client).hex()


def private_keygen(path: str, same_port_as: str | None) -> str:
    """A v2 server private key at path (on the knock port of the v1 key same_port_as)."""
    port = knock_port(keys.load_server_key(same_port_as)) if same_port_as else None
    if port is not None:
        print(
            f"gnocchi keygen: drawing a key whose knock port is {port} (a few seconds)",
            file=sys.stderr,
        )
    private = keys.new_private_key(port)
    keys.write_secret(path, private)
    say_fingerprint(keys.load_private_key(path)[0], "v2 public key")
    return str(knock_port(keys.load_private_key(path)[0]))


def pubkey(args) -> str:
    if args.private:
        return keys.load_private_key(args.file)[0].hex()
    return keys.public_of(keys.load_secret(args.file)).hex()


def port(args) -> str:
    if args.private:
        public = keys.load_private_key(args.file)[0]
        say_fingerprint(public, "v2 public key")
        return str(knock_port(public))
    key = keys.load_server_key(args.file)
    say_fingerprint(key)
    return str(knock_port(key))


def say_fingerprint(key: bytes, what: str = "server key") -> None:
    print(f"{what} fingerprint {keys.fingerprint(key)}", file=sys.stderr)


def parser(command: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"gnocchi {command}")
    if command == "keygen":
        p.description = (
            "Make a new key file (mode 0600; an existing file is never replaced). "
            "A server key prints its knock port, a client key its public key "
            "(a client key's missing directories are made 0700)."
        )
        which = p.add_mutually_exclusive_group(required=True)
        which.add_argument("--server", metavar="FILE", help="make a server key")
        which.add_argument("--client", metavar="FILE", help="make a client signing key")
        which.add_argument(
            "--private",
            metavar="FILE",
            help="make a server private key for knock protocol v2 (its knock "
            "port is that of its public key)",
        )
        p.add_argument(
            "--same-port-as",
            metavar="V1KEY",
            help="with --private: draw a key whose knock port is that of the v1 "
            "server key V1KEY, so both versions share one port",
        )
        p.set_defaults(run=keygen)
    elif command == "pubkey":
        p.description = (
            "Print the public key of a client key, for the server's [clients] "
            "table (--private: of a v2 server private key)."
        )
        p.add_argument("file", metavar="FILE", help="client key file")
        p.add_argument("--private", action="store_true", help="FILE is a v2 server private key")
        p.set_defaults(run=pubkey)
    else:
        p.description = "Print the UDP knock port derived from a server key."
        p.add_argument("file", metavar="FILE", help="server key file")
        p.add_argument(
            "--private",
            action="store_true",
            help="FILE is a v2 server private key (the port of its public key)",
        )
        p.set_defaults(run=port)
    return p


def main(argv: list[str]) -> int:
    """argv: ["keygen"|"pubkey"|"port", ARGS...], as gnocchi/admin/__main__.py passes it."""
    p = parser(argv[0])
    args = p.parse_args(argv[1:])
    if getattr(args, "same_port_as", None) and not args.private:
        p.error("--same-port-as goes with --private")
    try:
        print(args.run(args))
    except keys.KeyFileError as e:
        print(f"gnocchi {argv[0]}: {e}", file=sys.stderr)
        return 1
    return 0

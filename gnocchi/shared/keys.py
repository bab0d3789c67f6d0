"""Hex key files, as PROTOCOL.md gives them (its "Keys" table).

Trusts nothing in a key file. A key file holds exactly 64 hex characters and
at most one trailing newline, so the `tr </dev/urandom -dc 0-9a-f | head -c 64`
form (with or without `; echo`) is a key file; anything else is a KeyFileError
naming the file, what is wrong, and the fix. Secret key files are opened
without following a symbolic link and refused when group or others may use
them; new ones are created 0600 and never replace an existing file, and a
new client key's missing directories are created 0700.

public_key_problem() is the one rule for 32 bytes given as a client's public
key (add-client, check, doctor): what they most likely are when they are not
one, said no more surely than 32 bytes allow.
"""

from __future__ import annotations

import os
import re
import stat

from nacl._sodium import lib  # loaded by protocol already: no cost to a knock

from gnocchi.shared import durable
from gnocchi.shared.protocol import (
    KEY_LEN,
    LOWEST_KNOCK_PORT,
    blake2b,
    knock_port,
    public_key,
    signing_keys,
)

HEX_LEN = 2 * KEY_LEN
_HEX = re.compile(rb"[0-9a-fA-F]{64}\n?")
# Read a little more than the longest valid file, so trailing junk is seen
# without reading an arbitrarily large file.
_READ_LIMIT = HEX_LEN + 2


class KeyFileError(Exception):
    """A key file that cannot be used; str() names the file, the problem and the fix."""

    def __init__(self, path: str | os.PathLike[str], problem: str, fix: str = "") -> None:
        self.path = os.fspath(path)
        self.problem = problem
        self.fix = fix
        text = f"{self.path}: {problem}"
        super().__init__(f"{text}; fix: {fix}" if fix else text)


def _describe(raw: bytes) -> str:
    """Why raw is not a key, in words (called only when it is not)."""
    body = raw[:-1] if raw.endswith(b"\n") else raw
    bad = re.search(rb"[^0-9a-fA-F]", body[:HEX_LEN])
    if bad:
        char = bad.group().decode("latin-1")
        return (
            f"character {bad.start() + 1} is {char!r}, not a hex digit "
            f"(a key is {HEX_LEN} hex characters and a newline)"
        )
    if len(body) < HEX_LEN:
        return f"holds {len(body)} hex characters, a key has {HEX_LEN}"
    return (
        f"has more after the {HEX_LEN} hex characters of a key "
        f"(only one trailing newline is allowed)"
    )


def load_secret(path: str | os.PathLike[str]) -> bytes:
    """The 32-byte server key or client seed in path (0600, not a link)."""
    try:  # O_NONBLOCK: a FIFO must not hang us
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOCTTY | os.O_NONBLOCK | os.O_NOFOLLOW)
    except FileNotFoundError:
        raise KeyFileError(
            path,
            "no such secret key file",
            "check the path; a client makes its key with `gnocchi-knock "
            "--keygen`, a server with `gnocchi keygen --server`",
        ) from None
    except PermissionError:
        raise KeyFileError(
            path, "permission denied", "run as the key's owner, or check the file's owner and mode"
        ) from None
    except OSError as e:
        if os.path.islink(path):
            raise KeyFileError(
                path,
                "is a symbolic link; secret keys are not read through links",
                "give the path of the file itself",
            ) from None
        raise KeyFileError(path, f"cannot open: {e.strerror}") from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise KeyFileError(path, "is not a regular file", "give the path of a key file")
        if st.st_mode & 0o077:
            mode = stat.S_IMODE(st.st_mode)
            raise KeyFileError(
                path,
                f"secret key is open to group or others (mode {mode:04o})",
                f"chmod 600 {path}",
            )
        raw = b""
        while len(raw) < _READ_LIMIT:
            chunk = os.read(fd, _READ_LIMIT - len(raw))
            if not chunk:
                break
            raw += chunk
    except OSError as e:
        raise KeyFileError(path, f"cannot read: {e.strerror}") from None
    finally:
        os.close(fd)
    if not _HEX.fullmatch(raw):
        raise KeyFileError(
            path,
            _describe(raw),
            f"the file must hold exactly {HEX_LEN} hex characters and a newline",
        )
    return bytes.fromhex(raw[:HEX_LEN].decode("ascii"))


def load_server_key(path: str | os.PathLike[str]) -> bytes:
    """load_secret(), also refusing a key whose knock port is 1024 or lower (PROTOCOL.md)."""
    key = load_secret(path)
    port = knock_port(key)
    if port < LOWEST_KNOCK_PORT:
        raise KeyFileError(
            path,
            f"this server key's knock port {port} is 1024 or lower; gnocchi refuses such keys",
            "make a new one: gnocchi keygen --server FILE",
        )
    return key


# The command that prints a client's public key, on any machine with gnocchi-client
# (a server has it too); every message that says how to get a public key names it.
PRINT_PUBKEY = "gnocchi-knock --pubkey"


def load_private_key(path: str | os.PathLike[str]) -> tuple[bytes, bytes]:
    """(public, private) of the v2 server private key in path (0600, not a link),
    refusing one whose knock port is 1024 or lower (PROTOCOL.md, R10)."""
    private = load_secret(path)
    public = public_key(private)
    port = knock_port(public)
    if port < LOWEST_KNOCK_PORT:
        raise KeyFileError(
            path,
            f"this private key's knock port {port} is 1024 or lower; gnocchi refuses such keys",
            "make a new one: gnocchi keygen --private FILE",
        )
    return public, private


def new_private_key(port: int | None = None) -> bytes:
    """A random v2 server private key whose knock port is above 1024, or is port:
    about 65,536 draws (a few seconds) for a chosen port (PROTOCOL.md, "Keys")."""
    if port is not None and not LOWEST_KNOCK_PORT <= port <= 65535:
        raise ValueError(f"a knock port is {LOWEST_KNOCK_PORT}..65535, not {port}")
    for _ in range(5_000_000):  # a chosen port fails a draw with p = 65535/65536
        private = os.urandom(KEY_LEN)
        found = knock_port(public_key(private))
        if found == port or (port is None and found >= LOWEST_KNOCK_PORT):
            return private
    raise RuntimeError("no usable private key in 5,000,000 draws: is os.urandom broken?")


def parse_public_hex(text: object, what: str) -> bytes:
    """A public key written as text (e.g. in TOML); ValueError naming `what` if it is not one."""
    if not isinstance(text, str) or not re.fullmatch(r"[0-9a-fA-F]{64}", text):
        shown = repr(text) if len(repr(text)) <= 80 else repr(text)[:77] + "..."
        raise ValueError(
            f"{what}: expected a public key of {HEX_LEN} hex characters "
            f"(as `{PRINT_PUBKEY}` prints it on the client), got {shown}"
        )
    return bytes.fromhex(text)


def public_key_problem(
    public: bytes, server_keys: tuple[bytes, ...] = (), clients: dict[bytes, str] | None = None
) -> str | None:
    """Why public, given as a client's public key, is not one, naming what it most
    likely is; None if it may be one. server_keys: this server's secret keys (v1's
    server key, v2's private keys); clients: the configured public keys and their names.

    Certain: the server key, and the private key of a configured client (its public
    key is that client's). Otherwise only the curve can tell: every public key is a
    point of Ed25519's prime-order group, and 15 in 16 random 32-byte strings (a
    private key, a server key) are not, so the other 1 in 16 pass unnoticed; a
    mistyped public key fails as often, and only the client can say which it was.
    """
    if public in server_keys:
        return (
            "it is this server's own secret key (server_key_file or private_key_file), "
            "not a client's public key"
        )
    own = public_of(public)  # its public key, were it a private key
    if clients and own in clients:
        return f"it is a PRIVATE key: the one whose public key is client {clients[own]}'s"
    if not lib.crypto_core_ed25519_is_valid_point(public):
        return (
            "it is not an Ed25519 public key (not a point of the curve's group, which "
            "every public key is): most likely a secret pasted by mistake (a client's "
            "private key, or a server key), or a public key mistyped"
        )
    return None


def public_key_fix(name: str) -> str:
    """What to do about a public_key_problem() of client name."""
    return (
        f"on {name}'s machine run `{PRINT_PUBKEY}` (or `{PRINT_PUBKEY} KEY_FILE`) and use "
        "what it prints; a private key that went where others could read it is spent: "
        "make a new one there (`gnocchi-knock --keygen NEW_FILE`)"
    )


def write_secret(path: str | os.PathLike[str], key: bytes) -> None:
    """Create path 0600 holding key as hex and a newline; never replaces a file; fsynced."""
    if len(key) != KEY_LEN:
        raise ValueError(f"a key is {KEY_LEN} bytes, not {len(key)}")
    try:
        fd = os.open(
            path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600
        )
    except FileExistsError:
        raise KeyFileError(
            path,
            "already exists; gnocchi never overwrites a key",
            "remove the old key first if you really mean to replace it, "
            "or choose another file name",
        ) from None
    except OSError as e:
        raise KeyFileError(
            path, f"cannot create: {e.strerror}", "check that the directory exists and is writable"
        ) from None
    try:
        os.fchmod(fd, 0o600)  # the creation mode went through the umask
        data = (key.hex() + "\n").encode("ascii")
        if os.write(fd, data) != len(data):
            raise OSError("short write")
        os.fsync(fd)
    except OSError as e:
        os.close(fd)
        os.unlink(path)
        raise KeyFileError(path, f"cannot write: {e}") from None
    os.close(fd)
    durable.fsync_dir(os.path.dirname(os.path.abspath(path)))  # the new entry survives a crash


def make_private_dirs(directory: str | os.PathLike[str]) -> None:
    """Create directory and any missing parents, each 0700 (whatever the umask);
    directories that already exist are left as they are."""
    missing = []
    current = os.path.abspath(directory)
    while not os.path.isdir(current):
        missing.append(current)
        current = os.path.dirname(current)
    for path in reversed(missing):
        try:
            os.mkdir(path, 0o700)
            os.chmod(path, 0o700)  # the creation mode went through the umask
        except FileExistsError:
            if not os.path.isdir(path):
                raise KeyFileError(
                    path, "exists and is not a directory", "choose another key path"
                ) from None
        except OSError as e:
            raise KeyFileError(path, f"cannot create the directory: {e.strerror}") from None


def create_client_key(path: str | os.PathLike[str]) -> bytes:
    """A new client key file at path (0600, never over an existing file; missing
    directories made 0700); returns its public key."""
    make_private_dirs(os.path.dirname(os.path.abspath(path)))
    seed = new_client_seed()
    write_secret(path, seed)
    return public_of(seed)


def fingerprint(server_key: bytes) -> str:
    """A short name for a server key, such as 3f2a-9c1b-77e0-d4aa, that the
    admin's tools and gnocchi-knock -v print, so both sides can see they hold
    the same key. A hash of its own (personalised BLAKE2b): it tells nothing
    of the key, and is not the knock port's hash."""
    h = blake2b(server_key, 8, person=b"gnocchi-fprint").hex()
    return "-".join(h[i : i + 4] for i in range(0, 16, 4))


def public_of(seed: bytes) -> bytes:
    """The Ed25519 public key of a client seed."""
    return signing_keys(seed)[0]


def new_server_key() -> bytes:
    """A random server key whose knock port is above 1024 (PROTOCOL.md: redraw otherwise)."""
    for _ in range(1000):  # a draw fails with p = 1025/65536, so 1000 never all fail
        key = os.urandom(KEY_LEN)
        if knock_port(key) >= LOWEST_KNOCK_PORT:
            return key
    raise RuntimeError("no usable server key in 1000 draws: is os.urandom broken?")


def new_client_seed() -> bytes:
    """A random Ed25519 seed."""
    return os.urandom(KEY_LEN)

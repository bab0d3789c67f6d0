"""Strict modes, as sshd's StrictModes: the verifier's own files must be
safe from other users before it trusts them.

Trusts the kernel's stat(). A path passes when it and every directory above
it is owned by root or by the verifier's own user and is not writable by
group or others; a
root-owned sticky directory (/tmp) passes too, since nobody can rename what
it holds away from its owner. Anyone who could write the config could add a
client; anyone who could write the state could reset counters.
"""

from __future__ import annotations

import os
import pwd
import stat


class StrictModeError(Exception):
    """str() names the path, what is wrong, and the command that fixes it."""


def check(path: str) -> None:
    """Raise StrictModeError unless path and the directories above it are safe."""
    allowed = {0, os.geteuid()}
    current = os.path.abspath(path)
    while True:
        try:
            st = os.stat(current)
        except OSError as e:
            raise StrictModeError(f"{current}: {e.strerror}") from None
        if st.st_uid not in allowed:
            raise StrictModeError(
                f"{current} is owned by uid {st.st_uid}, which may change what "
                f"gnocchi trusts; fix: chown {_owner(os.geteuid())} {current}"
            )
        sticky_root_dir = stat.S_ISDIR(st.st_mode) and st.st_mode & stat.S_ISVTX and st.st_uid == 0
        if st.st_mode & 0o022 and not sticky_root_dir:
            raise StrictModeError(
                f"{current} is writable by group or others (mode "
                f"{stat.S_IMODE(st.st_mode):04o}), who could change what "
                f"gnocchi trusts; fix: chmod go-w {current}"
            )
        if current == "/":
            return
        current = os.path.dirname(current)


def _owner(uid: int) -> str:
    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return str(uid)

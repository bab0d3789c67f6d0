"""Replace a small file so that a crash or power loss leaves the old content
or the new, never a mix and never nothing: write a temporary file, fsync,
rename it over the old one, fsync the directory. The one copy of that rule,
used by the verifier's counter store, the client's counter and `gnocchi setup`.
Trusts its caller for the path; the temporary file is always a new one (never a
symlink or a file already at its name), and the owner is set through its descriptor.
Also the one file lock (lock_exclusive). Portable POSIX: the client runs on
macOS and the BSDs too, so nothing Linux-only is required.
"""

import os
from collections.abc import Callable

try:
    import fcntl
except ImportError:  # not every platform has it; os.lockf is the POSIX fallback
    fcntl = None  # type: ignore[assignment]

# O_DIRECTORY only makes the open refuse a non-directory; where it is missing,
# the fsync below still works on the directory we name.
_O_DIRECTORY = getattr(os, "O_DIRECTORY", 0)


def lock_exclusive(fd: int) -> None:
    """Wait for an exclusive lock on fd (open for writing); closing fd releases it."""
    if fcntl is not None:
        fcntl.flock(fd, fcntl.LOCK_EX)
    else:
        os.lseek(fd, 0, os.SEEK_SET)
        os.lockf(fd, os.F_LOCK, 0)  # 0: the whole file, however long


def fsync_dir(directory: str | os.PathLike[str]) -> None:
    """Make a directory entry just created or renamed survive power loss."""
    fd = os.open(directory, os.O_RDONLY | _O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(
    path: str | os.PathLike[str],
    data: bytes,
    mode: int,
    owner: tuple[int, int] | None = None,
    check: Callable[[str], object] | None = None,
) -> None:
    """Durably make path hold data, with mode (and owner, a (uid, gid), if given);
    OSError if any step fails. check(temporary path), if given, runs on the
    complete new file before it replaces the old one; what it raises leaves
    the old file as it was."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    try:
        os.unlink(tmp)  # a crash's leftover, or what another user of the directory put there
    except FileNotFoundError:
        pass
    # A new file, or an error: never one already there (a hard link to another file).
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            if owner is not None:
                os.fchown(fd, *owner)
            os.fchmod(fd, mode)  # the creation mode went through the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        if check is not None:
            check(tmp)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # never leave a half-written file behind
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))

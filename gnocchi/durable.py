"""Replace a small file so that a crash or power loss leaves the old content
or the new, never a mix and never nothing: write a temporary file, fsync,
rename it over the old one, fsync the directory. The one copy of that rule,
used by the verifier's counter store, the client's counter and `gnocchi setup`.
Trusts its caller for the path; does not follow a symlink at the temporary name.
"""
import os


def fsync_dir(directory) -> None:
    """Make a directory entry just created or renamed survive power loss."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def replace_file(path, data: bytes, mode: int) -> None:
    """Durably make path hold data, with mode; OSError if any step fails."""
    path = os.fspath(path)
    tmp = path + ".tmp"
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the creation mode went through the umask
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(tmp, path)
    except BaseException:
        try:
            os.unlink(tmp)  # never leave a half-written file behind
        except OSError:
            pass
        raise
    fsync_dir(os.path.dirname(os.path.abspath(path)))

"""A booted systemd in a container, on an overlay of this machine's root.

The container's root is an overlay with the host's / as the read-only lower
layer, so the host's files are never written; what the container writes
(an installed package, keys, its journal) lands in the upper directory and
survives a container reboot. The container lives in a network namespace the
test made (tests/support/netns.py), so its firewall and network are that
namespace's, never the host's. close() stops it, unmounts and deletes
everything, also after a failure.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import tempfile
import time
from contextlib import contextmanager
from pathlib import Path

from support import Net

# Units of the host image that have no business in the test container.
MASK = (
    "postgresql.service",
    "apt-daily.timer",
    "apt-daily-upgrade.timer",
    "dpkg-db-backup.timer",
    "e2scrub_all.timer",
    "e2scrub_reap.service",
    "fstrim.timer",
    "man-db.timer",
    "systemd-timesyncd.service",
    "getty@tty1.service",
)
ENV = ["PATH=/usr/sbin:/usr/bin:/sbin:/bin", "LANG=C.UTF-8", "HOME=/root"]
# The cgroup hierarchies systemd manages: v1's name=systemd and v2's (hybrid, as here),
# or v2's alone (unified).
CGROUP_TOPS = ("/sys/fs/cgroup/systemd", "/sys/fs/cgroup/unified", "/sys/fs/cgroup")


class Container:
    def __init__(self, netns: str, name: str | None = None):
        self.netns = netns
        # nspawn's name for it, and its host name (several at once need one each)
        self.name = name or f"gnocchi-test-{os.getpid()}"
        self.dir = Path(tempfile.mkdtemp(prefix="gnocchi-system-"))
        self.root = self.dir / "root"
        self.named = name is not None
        self.nspawn: subprocess.Popen | None = None
        self.pid = 0  # the container's init, as the host sees it
        self.boots = 0
        for sub in ("upper", "work", "root"):
            (self.dir / sub).mkdir()
        mount = subprocess.run(
            [
                "mount",
                "-t",
                "overlay",
                "overlay",
                "-o",
                f"lowerdir=/,upperdir={self.dir}/upper,workdir={self.dir}/work",
                str(self.root),
            ],
            capture_output=True,
            text=True,
        )
        if mount.returncode != 0:
            shutil.rmtree(self.dir)
            raise AssertionError(f"cannot mount the overlay root: {mount.stderr}")
        try:
            self._prepare()
        except BaseException:
            self._remove()
            raise

    def _prepare(self) -> None:
        # This machine's image comes from a Docker build, whose policy-rc.d
        # forbids maintainer scripts to start or stop services; a real
        # server has none, and the package's upgrade and removal need it gone.
        policy = self.root / "usr/sbin/policy-rc.d"
        if policy.exists():
            policy.unlink()
        if self.named:  # its own host name (journald's _HOSTNAME), not this machine's
            (self.root / "etc/hostname").write_text(f"{self.name}\n")
        units = self.root / "etc/systemd/system"
        for unit in MASK:
            link = units / unit
            if link.is_symlink() or link.exists():
                link.unlink()
            link.symlink_to("/dev/null")

    # ---- lifecycle -------------------------------------------------------

    def cgroups(self) -> list[Path]:
        """A cgroup of its own in each hierarchy systemd uses: with --keep-unit and no
        systemd on the host, nspawn builds the container's tree under its own cgroup,
        and two containers under the same one (the root, here) would manage the same
        cgroups (system.slice/gnocchi-arm.service) and fail each other's units."""
        return [
            Path(top) / f"gnocchi-{self.name}"
            for top in CGROUP_TOPS
            if os.path.exists(os.path.join(top, "cgroup.procs"))
        ]

    def boot(self, timeout: float = 90) -> None:
        self.boots += 1
        for cgroup in self.cgroups():
            cgroup.mkdir(exist_ok=True)
        enter = "".join(f"echo $$ > {c}/cgroup.procs && " for c in self.cgroups())
        # CAP_NET_ADMIN: nspawn keeps it only with a private network of its
        # own making; the container's netns here is ours, so grant it.
        with open(self.dir / f"boot{self.boots}.log", "wb") as log:
            self.nspawn = subprocess.Popen(
                [
                    "sh",
                    "-c",
                    f'{enter}exec "$@"',
                    "sh",
                    "systemd-nspawn",
                    "-D",
                    str(self.root),
                    f"--machine={self.name}",
                    "--register=no",
                    "--keep-unit",
                    "--capability=CAP_NET_ADMIN",
                    f"--network-namespace-path=/run/netns/{self.netns}",
                    "--boot",
                    "systemd.firstboot=off",
                ],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        deadline = time.monotonic() + timeout
        self.pid = 0
        while time.monotonic() < deadline and self.nspawn.poll() is None:
            self.pid = self.pid or self._find_init()
            if self.pid:
                state = self.run(
                    ["systemctl", "is-system-running"], check=False, timeout=10
                ).stdout.strip()
                if state in ("running", "degraded"):
                    return
            time.sleep(0.3)
        raise AssertionError(
            f"the container did not boot within {timeout} s (log: {self.log_tail()})"
        )

    def _find_init(self) -> int:
        """The process whose PID in its own namespace is 1, below nspawn (exec'd by sh)."""
        todo = [self.nspawn.pid]
        while todo:
            pid = todo.pop()
            try:
                children = Path(f"/proc/{pid}/task/{pid}/children").read_text().split()
                status = Path(f"/proc/{pid}/status").read_text()
            except OSError:
                continue
            nspid = next(
                (line.split()[1:] for line in status.splitlines() if line.startswith("NSpid:")), []
            )
            if pid != self.nspawn.pid and nspid[-1:] == ["1"] and len(nspid) > 1:
                return pid
            todo += [int(c) for c in children]
        return 0

    def wait_exit(self, timeout: float = 60) -> int:
        return self.nspawn.wait(timeout=timeout)

    def reboot(self) -> None:
        """`systemctl reboot` inside: nspawn exits; start it again on the same root."""
        self.run(["systemctl", "reboot"], check=False)
        self.wait_exit(60)
        self.boot()

    def close(self) -> None:
        try:
            self._stop()
        finally:
            self._remove()

    def _stop(self) -> None:
        if self.nspawn is None or self.nspawn.poll() is not None:
            return
        if self.pid:
            self.run(["systemctl", "poweroff"], check=False, timeout=10)
        try:
            self.nspawn.wait(timeout=30)
            return
        except subprocess.TimeoutExpired:
            pass
        for pid in (self.pid, self.nspawn.pid):
            if pid:
                try:
                    os.kill(pid, signal.SIGKILL)  # init dies: its whole pid namespace dies
                except ProcessLookupError:
                    pass
        self.nspawn.wait(timeout=10)

    def _remove(self) -> None:
        for _ in range(20):
            if not os.path.ismount(self.root):
                break
            subprocess.run(["umount", str(self.root)], capture_output=True)
            time.sleep(0.2)
        if os.path.ismount(self.root):
            subprocess.run(["umount", "-l", str(self.root)], capture_output=True)
        if os.path.ismount(self.root):  # never delete through a mounted overlay
            raise AssertionError(f"{self.root} is still mounted; not deleting {self.dir}")
        shutil.rmtree(self.dir)
        for cgroup in self.cgroups():  # what the container's systemd left, deepest first
            for below, _, _ in sorted(os.walk(cgroup), key=lambda w: -len(w[0])):
                try:
                    os.rmdir(below)
                except OSError:
                    pass
        # nspawn leaves this behind when /run is not a tmpfs, as on these VMs.
        shutil.rmtree(f"/run/systemd/nspawn/propagate/{self.name}", ignore_errors=True)

    # ---- commands inside -------------------------------------------------

    def run(self, argv, check=True, timeout=60, cwd="/", **kw) -> subprocess.CompletedProcess:
        """Run argv in all of the container's namespaces, with a clean environment."""
        proc = subprocess.run(
            ["nsenter", "-t", str(self.pid), "-a", "env", "-i", "-C", cwd, *ENV, *argv],
            text=True,
            capture_output=True,
            timeout=timeout,
            **kw,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in the container: {' '.join(argv)}: rc {proc.returncode}\n"
                f"{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def run_in_netns(self, netns: str, argv, check=True, timeout=60) -> subprocess.CompletedProcess:
        """Run argv with the container's files and processes but another network namespace
        (the client's): the packaged client, used from the client host."""
        proc = subprocess.run(
            [
                "nsenter",
                "-t",
                str(self.pid),
                "-m",
                "-p",
                "-u",
                "-i",
                "-r",
                "-w",
                f"--net=/run/netns/{netns}",
                "env",
                "-i",
                *ENV,
                *argv,
            ],
            text=True,
            capture_output=True,
            timeout=timeout,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"in the container, netns {netns}: {' '.join(argv)}: "
                f"rc {proc.returncode}\n{proc.stdout}\n{proc.stderr}"
            )
        return proc

    def log_tail(self, lines: int = 30) -> str:
        path = self.dir / f"boot{self.boots}.log"
        try:
            return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"


def server_debs(deb: Path) -> list[Path]:
    """What a server installs: gnocchi-server's .deb (the `deb` fixture) and the
    gnocchi-client .deb of the same version beside it, which it depends on."""
    client = deb.with_name(deb.name.replace("gnocchi-server_", "gnocchi-client_", 1))
    return [client, deb] if client != deb else [deb]


@contextmanager
def installed(deb: Path, tag: str):
    """(net, box): a booted container in the server namespace of a fresh Net,
    with gnocchi-server (and gnocchi-client) installed as an admin installs
    them; removed afterwards."""
    with Net(tag) as net:
        box = Container(net.server.name)
        try:
            box.boot()
            for path in server_debs(deb):
                shutil.copy(path, box.root / "root" / path.name)
            box.run(
                [
                    "apt-get",
                    "install",
                    "-y",
                    "-q",
                    *(f"./{path.name}" for path in server_debs(deb)),
                ],
                cwd="/root",
                timeout=180,
            )
            yield net, box
        finally:
            box.close()

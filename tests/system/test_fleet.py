"""Many servers: the Ansible collection, drop-in clients, central audit and metrics, for real.

Three booted systemd containers (tests/system/systemd_container.py) and a control
host share one link (support.Lan). The control host runs Debian's ansible-playbook
with the collection in ansible/ (the example playbook and group_vars of its
examples/) against the three over real ssh (Debian's openssh-server in each, fetched
into the host's apt cache and installed in the containers only). Ansible's own ssh
knocks first (gnocchi-knock --proxy, ansible_ssh_common_args). The containers are
booted once, in parallel, and kept for every step, in order:

1. the first run installs, keys, deploys the clients as drop-ins, arms on trial and
   confirms through a knocked connection: every host is then reachable only by knock;
2. a second run changes nothing;
3. a client added in the inventory reaches all three hosts, one removed none;
4. the audit recipe of docs/fleet.md: two hosts upload their journals to the third
   (systemd-journal-upload, systemd-journal-remote, HTTPS with a CA of our own), and
   `gnocchi audit --directory` there shows both hosts' knocks, each entry naming the
   server key it was decided with;
5. gnocchi-metrics.timer's file on each host parses with the Prometheus client
   library's parser and counts what happened.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from pathlib import Path

import pytest

from support import PYTHON, REPO, Lan
from systemd_container import Container, server_debs

pytestmark = pytest.mark.system

COLLECTION = REPO / "ansible" / "ansible_collections" / "gnocchi" / "knock"
EXTRA = ("openssh-server", "systemd-journal-remote")  # in the containers only
PROBE = (
    "import socket, sys\n"
    "try:\n"
    "    c = socket.create_connection((sys.argv[1], 22), 2)\n"
    "    print(c.recv(7).decode())\n"
    "except OSError:\n"
    "    print('timeout')\n"
)


def need(*tools):
    missing = [t for t in tools if shutil.which(t) is None]
    if missing:
        pytest.skip(f"needs {' '.join(missing)}")


def fetch_into_apt_cache(*packages):
    env = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "DEBIAN_FRONTEND": "noninteractive"}
    for attempt in ("cached lists", "fresh lists"):
        if attempt == "fresh lists":
            subprocess.run(["apt-get", "update", "-qq"], capture_output=True, timeout=300, env=env)
        fetched = subprocess.run(
            ["apt-get", "install", "-y", "-q", "--download-only", *packages],
            capture_output=True,
            text=True,
            timeout=300,
            env=env,
        )
        if fetched.returncode == 0:
            return
    pytest.skip(f"cannot fetch {' '.join(packages)}: {fetched.stderr.strip()[-300:]}")


def in_parallel(work, items):
    """work(item) for each item in a thread of its own; the first failure is raised."""
    errors: list[BaseException] = []

    def run(item):
        try:
            work(item)
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=run, args=(item,)) for item in items]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


class Fleet:
    """The Lan, the three containers, and the controller's files (the playbook directory)."""

    def __init__(self, lan: Lan, boxes: list[Container], debs: list[Path], tmp: Path):
        self.lan, self.boxes, self.tmp = lan, boxes, tmp
        self.play = tmp / "play"  # the admin's playbook directory
        self.keys = self.play / "gnocchi"
        self.bin = tmp / "bin"
        self.debs = debs
        self.names = [box.name for box in boxes]
        self.ansible_key = ""  # the controller's own client key's public key

    def controller(self, *argv, check=True, timeout=120) -> subprocess.CompletedProcess:
        """A command of the admin's on the control host."""
        env = {
            "PATH": f"{self.bin}:/usr/sbin:/usr/bin:/sbin:/bin",
            "HOME": str(self.tmp),
            "LANG": "C.UTF-8",
            "ANSIBLE_NOCOLOR": "1",
            "ANSIBLE_PIPELINING": "1",
            "ANSIBLE_HOST_KEY_CHECKING": "0",
            "ANSIBLE_FORKS": "3",
            "ANSIBLE_COLLECTIONS_PATH": str(self.tmp / "collections"),
            "ANSIBLE_PRIVATE_KEY_FILE": str(self.tmp / "id_ed25519"),
            "ANSIBLE_LOCAL_TEMP": str(self.tmp / "ansible-local"),
        }
        proc = subprocess.run(
            self.lan.control.argv(argv),
            capture_output=True,
            text=True,
            timeout=timeout,
            env=env,
            cwd=self.play,
        )
        if check and proc.returncode != 0:
            raise AssertionError(
                f"on the controller: {' '.join(map(str, argv))}: rc "
                f"{proc.returncode}\n{proc.stdout[-6000:]}\n{proc.stderr[-3000:]}"
            )
        return proc

    def inventory(self, clients: dict[str, str]) -> None:
        hosts = {
            box.name: {"ansible_host": host.ip}
            for box, host in zip(self.boxes, self.lan.hosts, strict=True)
        }
        inventory = {
            "gnocchi": {
                "hosts": hosts,
                "vars": {
                    "ansible_user": "root",
                    "gnocchi_metrics": True,
                    "gnocchi_deb_files": [str(d) for d in self.debs],
                    "gnocchi_clients": {
                        name: {"public_key": key, "allow": ["22/tcp"]}
                        for name, key in clients.items()
                    },
                },
            }
        }
        (self.play / "inventory.yml").write_text(json.dumps(inventory, indent=1))

    def playbook(self) -> dict[str, dict[str, int]]:
        """ansible-playbook -i inventory.yml site.yml: the recap per host."""
        proc = self.controller(
            "ansible-playbook", "-i", "inventory.yml", "site.yml", timeout=600, check=False
        )
        if proc.returncode != 0:
            raise AssertionError(
                f"ansible-playbook: rc {proc.returncode}\n{proc.stdout[-6000:]}"
                f"\n{proc.stderr[-2000:]}\n"
                + "\n".join(
                    box.run(
                        ["journalctl", "--no-pager", "-n", "25", "-u", "gnocchi*"], check=False
                    ).stdout
                    for box in self.boxes
                )
            )
        recap = {}
        for name, counts in re.findall(r"^(\S+)\s+:\s+(ok=.*)$", proc.stdout, re.MULTILINE):
            recap[name] = {k: int(v) for k, v in re.findall(r"(\w+)=(\d+)", counts)}
        assert set(recap) == set(self.names), proc.stdout[-3000:]
        return recap

    def reach(self, host, client_key: str | None) -> str:
        """From the control host: knock with client_key (None: no knock), then connect to
        port 22: sshd's banner, or 'timeout'."""
        if client_key:
            box = self.boxes[self.lan.hosts.index(host)]
            self.controller(
                "gnocchi-knock",
                "--server-key-file",
                str(self.keys / f"{box.name}.server.key"),
                "--client-key-file",
                client_key,
                "--state-dir",
                str(self.keys / "state"),
                host.ip,
            )
        return self.controller(PYTHON, "-c", PROBE, host.ip, timeout=30).stdout.strip()


@pytest.fixture(scope="module")
def fleet(deb):
    need(
        "systemd-nspawn",
        "nsenter",
        "nft",
        "ansible-playbook",
        "ansible-galaxy",
        "ssh",
        "ssh-keygen",
        "openssl",
    )
    fetch_into_apt_cache(*EXTRA)
    tmp = Path(tempfile.mkdtemp(prefix="gnocchi-fleet-"))
    boxes: list[Container] = []
    try:
        with Lan("fl", 3) as lan:
            boxes += [
                Container(host.name, name=f"fleet{os.getpid()}{'abc'[i]}")
                for i, host in enumerate(lan.hosts)
            ]
            f = Fleet(lan, boxes, server_debs(deb), tmp)
            prepare_controller(f)
            public = (tmp / "id_ed25519.pub").read_text()

            def ready(box: Container) -> None:
                box.boot()
                box.run(
                    [
                        "env",
                        "DEBIAN_FRONTEND=noninteractive",
                        "apt-get",
                        "install",
                        "-y",
                        "-q",
                        "--no-download",
                        *EXTRA,
                    ],
                    timeout=300,
                )
                box.run(["install", "-d", "-m", "0700", "/root/.ssh"])
                (box.root / "root/.ssh/authorized_keys").write_text(public)
                box.run(["chmod", "0600", "/root/.ssh/authorized_keys"])
                box.run(["systemctl", "is-active", "ssh.service"])

            in_parallel(ready, boxes)
            yield f
    finally:
        in_parallel(lambda box: box.close(), boxes)
        shutil.rmtree(tmp, ignore_errors=True)


def prepare_controller(f: Fleet) -> None:
    """What the admin has on the controller: ansible-core (Debian's), gnocchi-knock, an ssh
    key the hosts accept, the collection installed, the example playbook and group_vars,
    and the controller's own gnocchi client key."""
    f.bin.mkdir()
    knock = f.bin / "gnocchi-knock"  # the checkout's client, as gnocchi-client installs it
    knock.write_text(f'#!/bin/sh\nPYTHONPATH={REPO} exec {PYTHON} -m gnocchi.client.knock "$@"\n')
    knock.chmod(0o755)
    subprocess.run(
        ["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(f.tmp / "id_ed25519")], check=True
    )
    f.play.mkdir()
    f.controller(
        "ansible-galaxy", "collection", "install", "-p", str(f.tmp / "collections"), str(COLLECTION)
    )
    shutil.copy(COLLECTION / "examples" / "site.yml", f.play / "site.yml")
    shutil.copytree(COLLECTION / "examples" / "group_vars", f.play / "group_vars")
    f.keys.mkdir(mode=0o700)
    f.ansible_key = f.controller(
        "gnocchi-knock", "--keygen", str(f.keys / "client.key")
    ).stdout.strip()


@pytest.fixture(scope="module")
def clients(fleet):
    """Client keys of people (carol, dave) on the controller: name -> (key file, public)."""
    made = {}
    for name in ("carol", "dave"):
        path = fleet.tmp / f"{name}.key"
        made[name] = (
            str(path),
            fleet.controller("gnocchi-knock", "--keygen", str(path)).stdout.strip(),
        )
    return made


def test_the_first_run_arms_every_host_reachable_only_by_knock(fleet, clients):
    fleet.inventory({"ansible": fleet.ansible_key, "carol": clients["carol"][1]})
    recap = fleet.playbook()
    for name, counts in recap.items():
        assert counts["failed"] == 0 and counts["unreachable"] == 0 and counts["changed"] > 0, (
            name,
            counts,
        )
    for box, host in zip(fleet.boxes, fleet.lan.hosts, strict=True):
        facts = json.loads(box.run(["gnocchi", "status", "--json"]).stdout)
        assert facts["state"] == "armed" and facts["listening"], facts["report"]
        assert box.run(["systemctl", "is-enabled", "gnocchi.socket"]).stdout.strip() == "enabled", (
            "confirmed: armed for good"
        )
        assert {c["name"]: c["file"] for c in facts["clients"]} == {
            n: f"/etc/gnocchi/clients.d/{n}.toml" for n in ("ansible", "carol")
        }
        # The trial was confirmed from a connection that came in through a knock.
        confirmed = [
            e
            for e in journal(box, "-u", "gnocchi")
            if e.get("GNOCCHI_EVENT") == "trial"
            and f"confirmed from a session from {fleet.lan.control.ip}" in e["MESSAGE"]
        ]
        assert confirmed, box.name
        assert fleet.reach(host, None) == "timeout", f"{box.name}: open without a knock"
        assert fleet.reach(host, str(fleet.keys / "client.key")) == "SSH-2.0"
        assert fleet.reach(host, clients["carol"][0]) == "SSH-2.0"
        assert (fleet.keys / f"{box.name}.server.key").stat().st_mode & 0o777 == 0o600


def test_a_second_run_changes_nothing(fleet):
    recap = fleet.playbook()
    assert all(c["changed"] == 0 and c["failed"] == 0 for c in recap.values()), recap


def test_a_client_added_in_the_inventory_reaches_all_hosts_and_one_removed_none(fleet, clients):
    fleet.inventory({"ansible": fleet.ansible_key, "dave": clients["dave"][1]})
    recap = fleet.playbook()
    assert all(c["changed"] > 0 and c["failed"] == 0 for c in recap.values()), recap
    for box, host in zip(fleet.boxes, fleet.lan.hosts, strict=True):
        assert fleet.reach(host, clients["dave"][0]) == "SSH-2.0", f"dave on {box.name}"
        assert fleet.reach(host, clients["carol"][0]) == "timeout", f"carol on {box.name}"
        assert not (box.root / "etc/gnocchi/clients.d/carol.toml").exists()


def journal(box: Container, *args) -> list[dict]:
    out = box.run(["journalctl", "--no-pager", "-o", "json", *args]).stdout
    return [json.loads(line) for line in out.splitlines() if line.strip()]


# ---- central audit: the recipe of docs/fleet.md ------------------------------------------

COLLECTOR_CONF = """\
[Remote]
SplitMode=host
ServerKeyFile=/etc/gnocchi-journal/collector.key
ServerCertificateFile=/etc/gnocchi-journal/collector.pem
TrustedCertificateFile=/etc/gnocchi-journal/ca.pem
"""
UPLOAD_CONF = """\
[Upload]
URL=https://{collector}:19532
ServerKeyFile=/etc/gnocchi-journal/host.key
ServerCertificateFile=/etc/gnocchi-journal/host.pem
TrustedCertificateFile=/etc/gnocchi-journal/ca.pem
"""


def certificate(f: Fleet, name: str, alt: str) -> None:
    """name.key and name.pem, signed by the CA in f.tmp/ca (docs/fleet.md's commands)."""
    ca = f.tmp / "ca"
    run = ["openssl"]
    subprocess.run(
        [
            *run,
            "req",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-subj",
            f"/CN={name}",
            "-addext",
            f"subjectAltName={alt}",
            "-keyout",
            f"{name}.key",
            "-out",
            f"{name}.csr",
        ],
        cwd=ca,
        check=True,
        capture_output=True,
    )
    subprocess.run(
        [
            *run,
            "x509",
            "-req",
            "-in",
            f"{name}.csr",
            "-CA",
            "ca.pem",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "825",
            "-copy_extensions",
            "copy",
            "-out",
            f"{name}.pem",
        ],
        cwd=ca,
        check=True,
        capture_output=True,
    )


def install_certificate(box: Container, ca: Path, name: str, as_name: str, group: str) -> None:
    """The CA, the machine's certificate and its key (readable by the journal service's
    group only) in /etc/gnocchi-journal."""
    box.run(["install", "-d", "-m", "0755", "/etc/gnocchi-journal"])
    for source, target in (
        (ca / "ca.pem", "ca.pem"),
        (ca / f"{name}.pem", f"{as_name}.pem"),
        (ca / f"{name}.key", f"{as_name}.key"),
    ):
        shutil.copy(source, box.root / "etc/gnocchi-journal" / target)
    box.run(["chmod", "0644", "/etc/gnocchi-journal/ca.pem", f"/etc/gnocchi-journal/{as_name}.pem"])
    box.run(["chown", f"root:{group}", f"/etc/gnocchi-journal/{as_name}.key"])
    box.run(["chmod", "0640", f"/etc/gnocchi-journal/{as_name}.key"])


def test_two_hosts_upload_their_journals_and_audit_on_the_collector_shows_both(fleet, clients):
    *uploaders, collector = fleet.boxes
    collector_ip = fleet.lan.hosts[-1].ip
    ca = fleet.tmp / "ca"
    ca.mkdir()
    subprocess.run(
        [
            "openssl",
            "req",
            "-x509",
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
            "-days",
            "3650",
            "-subj",
            "/CN=gnocchi-journal-ca",
            "-keyout",
            "ca.key",
            "-out",
            "ca.pem",
        ],
        cwd=ca,
        check=True,
        capture_output=True,
    )
    certificate(fleet, "collector", f"IP:{collector_ip}")
    install_certificate(collector, ca, "collector", "collector", "systemd-journal-remote")
    collector.run(["mkdir", "-p", "/etc/systemd/journal-remote.conf.d"])
    (collector.root / "etc/systemd/journal-remote.conf.d/gnocchi.conf").write_text(COLLECTOR_CONF)
    collector.run(["systemctl", "enable", "--now", "systemd-journal-remote.socket"])
    for box in uploaders:
        certificate(fleet, box.name, f"DNS:{box.name}")
        install_certificate(box, ca, box.name, "host", "systemd-journal")
        box.run(["mkdir", "-p", "/etc/systemd/journal-upload.conf.d"])
        (box.root / "etc/systemd/journal-upload.conf.d/gnocchi.conf").write_text(
            UPLOAD_CONF.format(collector=collector_ip)
        )
        box.run(["systemctl", "enable", "--now", "systemd-journal-upload.service"])
    # Knocks on both uploading hosts, after their upload began.
    for host in fleet.lan.hosts[:2]:
        assert fleet.reach(host, clients["dave"][0]) == "SSH-2.0"
    deadline = time.monotonic() + 60
    while True:
        out = collector.run(["gnocchi", "audit", "--directory", "/var/log/journal/remote"]).stdout
        seen = {
            box.name
            for box in uploaders
            if re.search(rf"^\S+ \S+  {box.name} +accepted +dave ", out, re.MULTILINE)
        }
        if seen == {box.name for box in uploaders} or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert seen == {box.name for box in uploaders}, (
        out[-3000:]
        + collector.run(
            ["journalctl", "--no-pager", "-n", "30", "-u", "systemd-journal-remote"], check=False
        ).stdout
    )
    assert out.startswith("TIME                 HOST              EVENT ")
    # Each entry names its host (journald's own _HOSTNAME) and the server key it was
    # decided with, as a collector's SIEM needs them.
    for box in uploaders:
        fingerprint = box.run(["gnocchi", "port", "/etc/gnocchi/server.key"]).stderr.split()[-1]
        accepted = journal(
            collector,
            "-D",
            "/var/log/journal/remote",
            f"_HOSTNAME={box.name}",
            "GNOCCHI_EVENT=accepted",
            "GNOCCHI_CLIENT=dave",
        )
        assert accepted and all(e["GNOCCHI_SERVER_KEY"] == fingerprint for e in accepted)
        assert {e["GNOCCHI_SOURCE_IP"] for e in accepted} == {fleet.lan.control.ip}
        helper = journal(
            collector,
            "-D",
            "/var/log/journal/remote",
            f"_HOSTNAME={box.name}",
            "_SYSTEMD_UNIT=gnocchi-helper.service",
        )
        assert helper and all(e["GNOCCHI_SERVER_KEY"] == fingerprint for e in helper)
        arming = journal(
            collector,
            "-D",
            "/var/log/journal/remote",
            f"_HOSTNAME={box.name}",
            "SYSLOG_IDENTIFIER=gnocchi-arm",
        )
        assert arming and all(e["GNOCCHI_SERVER_KEY"] == fingerprint for e in arming)
    # Counters are per server: never one store rebuilt from several hosts' entries.
    mixed = collector.run(
        ["gnocchi", "audit", "--directory", "/var/log/journal/remote", "--counters"], check=False
    )
    assert mixed.returncode == 2 and "give --host NAME" in mixed.stderr
    one = collector.run(
        [
            "gnocchi",
            "audit",
            "--directory",
            "/var/log/journal/remote",
            "--host",
            uploaders[0].name,
            "--counters",
        ]
    ).stdout
    assert one.startswith("# gnocchi counters v1\n") and clients["dave"][1] in one
    assert one == uploaders[0].run(["gnocchi", "audit", "--counters"]).stdout, (
        "the collector rebuilds one host's counters as that host itself does"
    )


# ---- metrics: gnocchi-metrics.timer's file ----------------------------------------------


def test_each_hosts_metrics_file_parses_and_counts_what_happened(fleet):
    from prometheus_client.parser import text_string_to_metric_families

    for box in fleet.boxes:
        box.run(["systemctl", "start", "gnocchi-metrics.service"])  # a run now, not in a minute
        assert (
            box.run(["systemctl", "is-active", "gnocchi-metrics.timer"]).stdout.strip() == "active"
        )
        text = (box.root / "var/lib/prometheus/node-exporter/gnocchi.prom").read_text()
        samples = {
            (s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text)
            for s in family.samples
        }
        accepted = samples[("gnocchi_knocks_total", (("verdict", "accepted"),))]
        assert accepted >= 4, text  # Ansible's, carol's and dave's knocks at least
        assert samples[("gnocchi_armed", ())] == 1 and samples[("gnocchi_listening", ())] == 1
        assert samples[("gnocchi_clients", ())] == 2
        assert ("gnocchi_table_elements", (("set", "protected_tcp"),)) in samples
        fingerprint = box.run(["gnocchi", "port", "/etc/gnocchi/server.key"]).stderr.split()[-1]
        assert any(
            name == "gnocchi_info" and dict(labels)["server_key"] == fingerprint
            for name, labels in samples
        )
        # A second run counts each entry once: no knock since, no accepted knock more.
        box.run(["systemctl", "start", "gnocchi-metrics.service"])
        again = (box.root / "var/lib/prometheus/node-exporter/gnocchi.prom").read_text()
        assert f'gnocchi_knocks_total{{verdict="accepted"}} {int(accepted)}\n' in again

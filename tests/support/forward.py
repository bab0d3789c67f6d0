"""Hosts behind the server, for the forward path: a "container" on a bridge
with DNAT rules shaped like Docker's, and a "VM" behind a port forward.

    client .1 --veth-- server .2 (router: ip_forward on, table inet gnocchi)
                         |-- br0 198.19.n.1 -- veth -- container 198.19.n.2
                         |-- veth 198.19.n.129 ------- vm 198.19.n.130
                        (IPv6: fd00:198:19:n::/64 for the bridge, fd00:198:20:n::/64 for the VM)

The server publishes the container as Docker 20.10 does (iptables-nft in the
server's namespace: table ip nat's DOCKER chain, table ip filter's FORWARD with
policy drop and its DOCKER chain), and the VM by a native nft DNAT rule of the
admin's own. Everything is removed on exit, as Net does.
"""

from __future__ import annotations

import socket

from support.netns import Host, Net, sh
from support.sockets import EchoServices

# Ports the server publishes, and where they go (the services listen on 22 and 60001).
DOCKER_TCP = 8080  # -> container:22, protected
DOCKER_UDP = 8053  # -> container:60001, protected
DOCKER_OPEN = 8081  # -> container:22, not protected: open to everyone, as Docker leaves it
PODMAN_TCP = 8090  # -> container:22, by a table shaped like netavark's (Podman), protected
VM_TCP = 2200  # -> vm:22 (the admin's own nft DNAT), protected
VM_OPEN = 2201  # -> vm:22 (the admin's own nft DNAT), not protected
FORWARD_TCP = 2222  # gnocchi's own forward -> vm:22 and [vm]:22 ([forwards.vm-ssh])
FORWARD_UDP = 2253  # gnocchi's own forward -> vm:60001 ([forwards.vm-udp])
FORWARD_ABORT = 2223  # gnocchi's own forward -> vm:23, where a test runs its own service
SERVICE_TCP, SERVICE_UDP, ABORT = 22, 60001, 23
PROTECT = {"tcp": [22, DOCKER_TCP, PODMAN_TCP, VM_TCP], "udp": [DOCKER_UDP]}


def docker_rules(bridge: str, container: str) -> list[list[str]]:
    """The iptables commands Docker 20.10 runs for `docker run -p 8080:22 -p 8053:60001/udp
    -p 8081:22` on a bridge network (iptables-save of a real one, names kept)."""
    nat = ["iptables", "-w", "-t", "nat"]
    flt = ["iptables", "-w", "-t", "filter"]
    rules = [
        nat + ["-N", "DOCKER"],
        nat + ["-A", "PREROUTING", "-m", "addrtype", "--dst-type", "LOCAL", "-j", "DOCKER"],
        nat
        + [
            "-A",
            "POSTROUTING",
            "-s",
            f"{container.rsplit('.', 1)[0]}.0/25",
            "!",
            "-o",
            bridge,
            "-j",
            "MASQUERADE",
        ],
        nat + ["-A", "DOCKER", "-i", bridge, "-j", "RETURN"],
        flt + ["-P", "FORWARD", "DROP"],
        flt + ["-N", "DOCKER-USER"],
        flt + ["-N", "DOCKER"],
        flt + ["-A", "FORWARD", "-j", "DOCKER-USER"],
        flt
        + [
            "-A",
            "FORWARD",
            "-o",
            bridge,
            "-m",
            "conntrack",
            "--ctstate",
            "RELATED,ESTABLISHED",
            "-j",
            "ACCEPT",
        ],
        flt + ["-A", "FORWARD", "-o", bridge, "-j", "DOCKER"],
        flt + ["-A", "FORWARD", "-i", bridge, "!", "-o", bridge, "-j", "ACCEPT"],
        flt + ["-A", "DOCKER-USER", "-j", "RETURN"],
    ]
    for public, proto, port in (
        (DOCKER_TCP, "tcp", SERVICE_TCP),
        (DOCKER_UDP, "udp", SERVICE_UDP),
        (DOCKER_OPEN, "tcp", SERVICE_TCP),
    ):
        rules.append(
            nat
            + [
                "-A",
                "DOCKER",
                "!",
                "-i",
                bridge,
                "-p",
                proto,
                "-m",
                proto,
                "--dport",
                str(public),
                "-j",
                "DNAT",
                "--to-destination",
                f"{container}:{port}",
            ]
        )
        if public != DOCKER_OPEN:
            rules.append(
                flt
                + [
                    "-A",
                    "DOCKER",
                    "-d",
                    f"{container}/32",
                    "!",
                    "-i",
                    bridge,
                    "-o",
                    bridge,
                    "-p",
                    proto,
                    "-m",
                    proto,
                    "--dport",
                    str(port),
                    "-j",
                    "ACCEPT",
                ]
            )
    return rules


def vm_forward(vm: Host) -> str:
    """The admin's own port forward to the VM, in native nft (also for IPv6)."""
    return f"""
table inet portfwd {{
    chain pre {{
        type nat hook prerouting priority dstnat; policy accept;
        tcp dport {{ {VM_TCP}, {VM_OPEN} }} dnat ip to {vm.ip}:{SERVICE_TCP}
        tcp dport {{ {VM_TCP}, {VM_OPEN} }} dnat ip6 to [{vm.ip6}]:{SERVICE_TCP}
    }}
}}
"""


def podman_table(bridge: str, subnet: str, container: str) -> str:
    """A table shaped like the one netavark's nftables driver makes (Podman 5: table inet
    netavark; its own chains at the usual priorities) for `podman run -p 8090:22`."""
    return f"""
table inet netavark {{
    chain INPUT {{
        type filter hook input priority filter; policy accept;
        ip saddr {subnet} meta l4proto {{ tcp, udp }} th dport 53 accept
    }}
    chain FORWARD {{
        type filter hook forward priority filter; policy accept;
        ct state invalid drop
        ip daddr {subnet} ct state {{ established, related }} accept
        ip saddr {subnet} accept
    }}
    chain POSTROUTING {{
        type nat hook postrouting priority srcnat; policy accept;
        meta mark & 0x00002000 == 0x00002000 masquerade
    }}
    chain PREROUTING {{
        type nat hook prerouting priority dstnat; policy accept;
        fib daddr type local jump NETAVARK-HOSTPORT-DNAT
    }}
    chain NETAVARK-HOSTPORT-DNAT {{
        tcp dport {PODMAN_TCP} jump nv_test_dnat
    }}
    chain nv_test_dnat {{
        iifname != "{bridge}" tcp dport {PODMAN_TCP} dnat ip to {container}:{SERVICE_TCP}
    }}
}}
"""


class Banner(EchoServices):
    """EchoServices that say which host they are: a TCP connection first gets the host's
    name and a newline, a UDP datagram is answered with the name, a colon and the datagram.
    .accepted counts the TCP connections it accepted."""

    def __init__(self, host: Host, tcp_ports=(SERVICE_TCP,), udp_ports=(SERVICE_UDP,)):
        self.name = host.name.encode()
        self.accepted = 0
        super().__init__(host, tcp_ports, udp_ports)

    def _echo_stream(self, conn):
        self.accepted += 1
        with conn:  # closed when the peer is done, as sshd does: a proxy then ends
            try:
                conn.sendall(self.name + b"\n")
                super()._echo_stream(conn)
            except OSError:  # the peer reset (a forger's RST, a test's abort)
                return

    def _udp(self, s):
        while not self.stop.is_set():
            try:
                data, peer = s.recvfrom(100)
                s.sendto(self.name + b":" + data, peer)
            except (TimeoutError, OSError):
                continue


def reached(host_name: str, sock: socket.socket | None) -> bool:
    """A TCP connection that reached the Banner of host_name and carries data both ways."""
    if sock is None:
        return False
    sock.settimeout(1.0)
    try:
        if sock.recv(len(host_name) + 1) != host_name.encode() + b"\n":
            return False
        sock.sendall(b"ping")
        return sock.recv(4) == b"ping"
    except OSError:
        return False


def answered(host_name: str, sock: socket.socket) -> bool:
    """A connected UDP socket whose datagram the Banner of host_name answers."""
    sock.settimeout(0.5)
    try:
        sock.send(b"ping")
        return sock.recv(100) == host_name.encode() + b":ping"
    except OSError:
        return False


class Lab(Net):
    """Net's client and server, and behind the server a container and a VM."""

    def __init__(self, tag: str = "f"):
        super().__init__(tag)
        n = int(self.client.ip.split(".")[2])
        self.container = Host(f"{self.prefix}k", f"198.19.{n}.2", f"fd00:198:19:{n:x}::2")
        self.vm = Host(f"{self.prefix}v", f"198.19.{n}.130", f"fd00:198:20:{n:x}::2")
        self.bridge = (f"198.19.{n}.1", f"fd00:198:19:{n:x}::1")
        self.vm_gateway = (f"198.19.{n}.129", f"fd00:198:20:{n:x}::1")
        # A second address of the client's host: someone who never knocked.
        self.stranger = (f"198.18.{n}.3", f"fd00:198:18:{n:x}::3")

    def __enter__(self) -> Lab:
        super().__enter__()
        srv, box, vm = self.server, self.container, self.vm
        try:
            for host in (box, vm):
                sh("ip", "netns", "add", host.name)
                host.run(["ip", "link", "set", "lo", "up"])
            # No duplicate address detection on the new links, for link-local addresses
            # too: until it ends (a second) the server cannot resolve the hosts behind it
            # over IPv6, and holds the first packets it forwards to them.
            for host in (srv, box, vm):
                host.run(
                    [
                        "sysctl",
                        "-q",
                        "-w",
                        "net.ipv6.conf.default.accept_dad=0",
                        "net.ipv6.conf.all.accept_dad=0",
                    ]
                )
            srv.run(
                ["sysctl", "-q", "-w", "net.ipv4.ip_forward=1", "net.ipv6.conf.all.forwarding=1"]
            )
            srv.run(["ip", "link", "add", "br0", "type", "bridge"])
            srv.run(["ip", "addr", "add", f"{self.bridge[0]}/25", "dev", "br0"])
            srv.run(["ip", "-6", "addr", "add", f"{self.bridge[1]}/64", "dev", "br0", "nodad"])
            srv.run(["ip", "link", "set", "br0", "up"])
            sh(
                "ip",
                "link",
                "add",
                "veth-box",
                "netns",
                srv.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                box.name,
            )
            srv.run(["ip", "link", "set", "veth-box", "master", "br0", "up"])
            sh(
                "ip",
                "link",
                "add",
                "veth-vm",
                "netns",
                srv.name,
                "type",
                "veth",
                "peer",
                "name",
                "eth0",
                "netns",
                vm.name,
            )
            srv.run(["ip", "addr", "add", f"{self.vm_gateway[0]}/25", "dev", "veth-vm"])
            srv.run(
                ["ip", "-6", "addr", "add", f"{self.vm_gateway[1]}/64", "dev", "veth-vm", "nodad"]
            )
            srv.run(["ip", "link", "set", "veth-vm", "up"])
            for host, gateway in ((box, self.bridge), (vm, self.vm_gateway)):
                host.run(["ip", "addr", "add", f"{host.ip}/25", "dev", "eth0"])
                host.run(["ip", "-6", "addr", "add", f"{host.ip6}/64", "dev", "eth0", "nodad"])
                host.run(["ip", "link", "set", "eth0", "up"])
                host.run(["ip", "route", "add", "default", "via", gateway[0]])
                host.run(["ip", "-6", "route", "add", "default", "via", gateway[1]])
            # Deprecated, and IPv4's second: the client's own connections keep its address.
            self.client.run(["ip", "addr", "add", f"{self.stranger[0]}/24", "dev", "gveth0"])
            self.client.run(
                [
                    "ip",
                    "-6",
                    "addr",
                    "add",
                    f"{self.stranger[1]}/64",
                    "dev",
                    "gveth0",
                    "nodad",
                    "preferred_lft",
                    "0",
                ]
            )
        except BaseException:
            self.__exit__(None, None, None)
            raise
        return self

    def __exit__(self, *exc) -> None:
        for host in (self.container, self.vm):
            for pid in sh("ip", "netns", "pids", host.name, check=False).stdout.split():
                sh("kill", "-9", pid, check=False)
            sh("ip", "netns", "del", host.name, check=False)
        super().__exit__(*exc)

    def publish(self, vm_allowed: bool = True) -> None:
        """Docker's and Podman's rules for the container, and the admin's port forward to
        the VM; with vm_allowed, the two rules in DOCKER-USER an admin adds so that
        Docker's FORWARD policy (drop) lets the VM's traffic through."""
        for argv in docker_rules("br0", self.container.ip):
            self.server.run(argv)
        self.server.run(
            ["nft", "-f", "-"],
            input=podman_table(
                "br0", f"{self.container.ip.rsplit('.', 1)[0]}.0/25", self.container.ip
            ),
        )
        if vm_allowed:
            for way in ("-i", "-o"):
                self.server.run(
                    ["iptables", "-w", "-I", "DOCKER-USER", way, "veth-vm", "-j", "ACCEPT"]
                )
        self.server.run(["nft", "-f", "-"], input=vm_forward(self.vm))

    def forwards(self) -> str:
        """[protect] and [forwards] for a config: gnocchi's own forwards to the VM."""
        vm, vm6 = self.vm.ip, self.vm.ip6
        return f"""
[protect]
tcp = {PROTECT["tcp"]}
udp = {PROTECT["udp"]}

[forwards.vm-ssh]
listen = "{FORWARD_TCP}"
to = ["{vm}:{SERVICE_TCP}", "[{vm6}]:{SERVICE_TCP}"]

[forwards.vm-udp]
listen = "{FORWARD_UDP}/udp"
to = "{vm}:{SERVICE_UDP}"

[forwards.vm-abort]
listen = "{FORWARD_ABORT}/tcp"
to = ["{vm}:{ABORT}", "[{vm6}]:{ABORT}"]
"""

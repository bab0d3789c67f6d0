"""nft/gnocchi.nft loaded into a test namespace, and what the kernel holds."""

from __future__ import annotations

import json
from pathlib import Path

from support.netns import Host
from support.processes import REPO

TABLE_FILE = REPO / "nft" / "gnocchi.nft"


def load_table(
    host: Host, directory: Path, udp_ports=(), tcp_ports=(22,), knock_port: int | None = None
) -> Path:
    """Load nft/gnocchi.nft into host, edited as an admin would edit it:
    the protected ports changed in the one place the file keeps them; with
    knock_port, its flood limit set on that port as `gnocchi table load` does."""
    text = TABLE_FILE.read_text()
    tcp = "elements = { 22 }"
    udp = "# elements = { 51820 }"
    assert tcp in text and udp in text, "nft/gnocchi.nft no longer has its port lines"
    text = text.replace(tcp, "elements = { %s }" % ", ".join(map(str, tcp_ports)))
    if udp_ports:
        text = text.replace(udp, "elements = { %s }" % ", ".join(map(str, udp_ports)))
    path = directory / "gnocchi.nft"
    path.write_text(text)
    host.nft("-f", str(path))
    if knock_port is not None:
        host.nft("add", "element", "inet", "gnocchi", "knock_port", f"{{ {knock_port} }}")
    return path


def ruleset(host: Host) -> str:
    return host.nft("-j", "list", "ruleset").stdout


def elements(host: Host, set_name: str) -> list:
    """The knocked set's elements as libnftables' JSON gives them."""
    out = json.loads(host.nft("-j", "list", "set", "inet", "gnocchi", set_name).stdout)
    return [e["elem"] for item in out["nftables"] for e in item.get("set", {}).get("elem", [])]

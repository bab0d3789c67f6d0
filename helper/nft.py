"""The helper's only contact with the firewall, table inet gnocchi: libnftables
JSON built from values request.parse checked (never command text; table, sets
and timeout never come from a request), through Table.apply alone."""
import ipaddress
import time
from typing import Any  # a libnftables context (or a stand-in); a request.Request

TABLE = {"family": "inet", "table": "gnocchi"}
PROTECTED = {"tcp": "protected_tcp", "udp": "protected_udp"}
KNOCKED = {4: "knocked4", 6: "knocked6"}
FRESH = 1.0  # seconds a copy of the protected sets and of the openings pending answers for
SHARE = 32   # openings pending at most per client, and per source (IPv4 address, IPv6 /64)


class Table:
    """A libnftables context, and its copies of the protected sets and of the openings pending."""

    def __init__(self, ctx: Any) -> None:
        # protected: proto -> [22, {"range": [8000, 8100]}, ...], as its set has them; pending:
        # (address, proto, port) -> client, as the kernel listed them at `read`, and added since.
        self.ctx, self.protected, self.pending, self.read, self.clock = (
            ctx, dict[str, list](), dict[tuple, str](), float("-inf"), time.monotonic)

    def apply(self, *commands: dict) -> tuple[dict, str]:
        """Run commands as one transaction: (output, "") if libnftables' rc is 0, else ({}, err)."""
        rc, out, err = self.ctx.json_cmd({"nftables": [{"metainfo": {"json_schema_version": 1}},
                                                       *commands]})
        return (out or {"nftables": []}, "") if rc == 0 else ({}, err or f"libnftables rc {rc}")

    def refresh(self, opens: tuple, now: float) -> str:
        """Read the sets if the copies are old or lack a port of opens; libnftables' error or ""."""
        # Read again when FRESH seconds old, or when a copy lacks a port (one the admin adds
        # works on its next knock). A port removed less than FRESH ago still passes: its
        # element is inert, the gate consults the knocked sets only for protected ports. An
        # opening used or expired since the last read counts against its client and source
        # until the next: at most FRESH seconds.
        if now - self.read < FRESH and not self.unprotected(opens):
            return ""
        sets = {}
        for name in (*PROTECTED.values(), *KNOCKED.values()):
            out, err = self.apply({"list": {"set": {**TABLE, "name": name}}})
            if err:
                return err
            # An element is a value, or {"elem": {"val": value, "timeout": ..., ...}}.
            sets[name] = [e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e} for item
                          in out["nftables"] for e in item.get("set", {}).get("elem", ())]
        self.protected = {proto: [e["val"] for e in sets[n]] for proto, n in PROTECTED.items()}
        self.pending = {(ipaddress.ip_address(e["val"]["concat"][0]), *e["val"]["concat"][1:]):
                        e.get("comment", "") for name in KNOCKED.values() for e in sets[name]}
        self.read = now
        return ""

    def unprotected(self, opens: tuple) -> list:
        """The (proto, port) of opens that the copies of the protected sets lack."""
        return [(p, port) for p, port in opens if not any(
            v["range"][0] <= port <= v["range"][1] if isinstance(v, dict) else v == port
            for v in self.protected.get(p, ()))]

    def crowded(self, req: Any) -> str:
        """Who would pass its share with req's new openings: "client NAME", "source NET", or ""."""
        new = sum((req.address, *o) not in self.pending for o in req.opens)
        if list(self.pending.values()).count(req.client) + new > SHARE:
            return f"client {req.client}"
        held = [prefix(address) for address, _, _ in self.pending].count(prefix(req.address))
        return f"source {prefix(req.address)}" if held + new > SHARE else ""

    def add(self, req: Any, timeout: int) -> str:
        """req's openings, in one transaction; libnftables' error or ""."""
        # Add, delete, add: a knock again re-arms its element with the full timeout
        # (Linux before 6.12 keeps an element's expiry on add) and its client's name.
        ref = {**TABLE, "name": KNOCKED[req.address.version]}
        vals = [{"val": {"concat": [str(req.address), proto, port]}} for proto, port in req.opens]
        add = {"add": {"element": {**ref, "elem": [
            {"elem": {**v, "timeout": timeout, "comment": req.client}} for v in vals]}}}
        delete = {"delete": {"element": {**ref, "elem": [{"elem": v} for v in vals]}}}
        err = self.apply(add, delete, add)[1]
        self.pending.update({} if err else {(req.address, *o): req.client for o in req.opens})
        return err


def prefix(address: Any) -> Any:  # a source as the shares count it: IPv4 address, IPv6 /64
    return ipaddress.ip_network((address, 32 if address.version == 4 else 64), strict=False)

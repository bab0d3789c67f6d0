"""The helper's only contact with the firewall, table inet gnocchi: libnftables
JSON built from values request.parse checked (never command text; table, sets
and timeout never come from a request), through Table.apply alone."""
import ipaddress
import time
from collections import Counter

import nftables  # typing.Any for its context would cost 0.35 MB resident

from request import Request

TABLE = {"family": "inet", "table": "gnocchi"}
PROTECTED = {"tcp": "protected_tcp", "udp": "protected_udp"}
KNOCKED = {4: "knocked4", 6: "knocked6"}
FRESH = 1.0  # seconds at least between two reads of the sets (look())
SHARE = 32   # openings pending at most per client, and per source (IPv4 address, IPv6 /64)


class Table:
    """A libnftables context, its copies of the protected sets and of the openings pending."""

    def __init__(self, ctx: nftables.Nftables) -> None:
        # protected: proto -> {22, ...}, and pending: (address, proto, port) -> client, as
        # the kernel listed them at `read`, and added since; held: openings pending per
        # client and per source.
        self.ctx, self.clock, self.protected = ctx, time.monotonic, dict[str, set]()
        self.pending, self.held, self.read = dict[tuple, str](), Counter[str | bytes](), -FRESH

    def apply(self, *commands: dict) -> tuple[dict, str]:
        """Run commands as one transaction: (output, "") if libnftables' rc is 0, else ({}, err)."""
        rc, out, err = self.ctx.json_cmd({"nftables": [{"metainfo": {"json_schema_version": 1}},
                                                       *commands]})
        return (out or {"nftables": []}, "") if rc == 0 else ({}, err or f"libnftables rc {rc}")

    def elements(self, name: str) -> tuple[list, str]:
        """The elements of set name, each as {"val": ..., ...}; or ([], libnftables' error)."""
        out, err = self.apply({"list": {"set": {**TABLE, "name": name}}})  # one set a call
        # An element is a value, or {"elem": {"val": value, "timeout": ..., ...}}.
        return [e["elem"] if isinstance(e, dict) and "elem" in e else {"val": e} for item in
                out.get("nftables", ()) for e in item.get("set", {}).get("elem", ())], err

    def look(self, req: Request, now: float) -> str:
        """Read the sets again if the copies would refuse req; libnftables' error or ""."""
        # At most every FRESH seconds, and only when a copy lacks a port of req (the first
        # request, after a restart: the copies are empty; a port the admin adds works on
        # its next knock) or would give req more than a share (it still counts openings
        # used or expired since it was read). So a knock costs no read at all, whatever
        # the knocked sets hold. A port the admin removes still passes until the next
        # read: its element is inert (the gate consults the knocked sets only for
        # protected ports) and expires within the open time (README.md here).
        if now - self.read < FRESH or not (self.unprotected(req.opens) or self.crowded(req)):
            return ""
        listed = {name: self.elements(name) for name in (*PROTECTED.values(), *KNOCKED.values())}
        if err := next((err for _, err in listed.values() if err), ""):
            return err
        self.protected = {proto: {e["val"] for e in listed[n][0] if isinstance(e["val"], int)}
                          for proto, n in PROTECTED.items()}
        self.pending, self.held, self.read = {}, Counter(), now
        for e in listed["knocked4"][0] + listed["knocked6"][0]:
            address, *opening = e["val"]["concat"]
            self.note((ipaddress.ip_address(address), *opening), e.get("comment", ""))
        return ""

    def unprotected(self, opens: tuple) -> list[str]:
        """The "proto/port" of opens that the copies of the protected sets lack."""
        return [f"{p}/{port}" for p, port in opens if port not in self.protected.get(p, ())]

    def crowded(self, req: Request) -> str:
        """Who would pass its share with req's new openings: "client NAME", "source NET", or ""."""
        # New to req.client: an opening pending under another client moves to this one.
        new = sum(self.pending.get((req.address, *o)) != req.client for o in req.opens)
        over = [who for who in (req.client, source(req.address)) if self.held[who] + new > SHARE]
        return "" if not over else f"client {req.client}" if over[0] == req.client else \
            f"source {ipaddress.ip_network((req.address, len(over[0]) * 8), strict=False)}"

    def note(self, key: tuple, client: str) -> None:  # pending for client, in place of any before
        self.held.subtract((self.pending[key], source(key[0])) if key in self.pending else ())
        self.pending[key] = client
        self.held.update((client, source(key[0])))

    def add(self, req: Request, timeout: int) -> str:
        """req's openings, in one transaction; libnftables' error or ""."""
        # Add, delete, add: a knock again re-arms its element with the full timeout
        # (Linux before 6.12 keeps an element's expiry on add) and its client's name.
        # When the copy holds none of them pending, the add alone does the same, and the
        # delete costs 0.2 ms more at the median and 2 ms at the 90th percentile.
        ref = {**TABLE, "name": KNOCKED[req.address.version]}
        vals = [{"val": {"concat": [str(req.address), proto, port]}} for proto, port in req.opens]
        add = {"add": {"element": {**ref, "elem": [
            {"elem": {**v, "timeout": timeout, "comment": req.client}} for v in vals]}}}
        delete = {"delete": {"element": {**ref, "elem": [{"elem": v} for v in vals]}}}
        again = any((req.address, *o) in self.pending for o in req.opens)
        err = self.apply(*(add, delete, add) if again else (add,))[1]
        for opening in () if err else req.opens:
            self.note((req.address, *opening), req.client)
        return err


def source(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> bytes:
    # as the shares count it: an IPv4 address, an IPv6 /64
    return address.packed[:4 if address.version == 4 else 8]

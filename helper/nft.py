"""The helper's only contact with the firewall: table inet gnocchi, JSON API.

Trusts the live table (the kernel's copy of nft/gnocchi.nft) for which ports
are protected. Commands are libnftables JSON built from values request.parse
checked, never nft command text; table, sets and timeout never come from a
request. Table.apply is the one call into libnftables: one transaction per
call, its rc checked.
"""
TABLE = {"family": "inet", "table": "gnocchi"}
PROTECTED = {"tcp": "protected_tcp", "udp": "protected_udp"}
KNOCKED = {4: "knocked4", 6: "knocked6"}
FRESH = 1.0  # seconds a copy of a protected set answers for a port it holds
# The probe's element: no packet the gate judges (TCP or UDP, to a protected
# port) has protocol 0, nor does request.parse ever accept source 0.0.0.0.
PROBE = ["0.0.0.0", 0, 0]


class Table:
    """One libnftables context, a copy of each protected set, and whether this
    kernel re-arms an existing element's timeout on add (None: not known yet)."""

    def __init__(self, ctx):
        self.ctx, self.copies, self.rearms = ctx, {}, None

    def apply(self, *commands) -> tuple[dict, str]:
        """Run commands as one transaction: (output, "") if libnftables' rc is 0, else ({}, error)."""
        rc, out, err = self.ctx.json_cmd({"nftables": [{"metainfo": {"json_schema_version": 1}},
                                                       *commands]})
        return (out or {"nftables": []}, "") if rc == 0 else ({}, err or f"libnftables rc {rc}")

    def unprotected(self, opens, now: float) -> tuple[list, str]:
        """The (proto, port) of opens that the live table does not protect, or
        libnftables' error. A set is read again when its copy lacks a port (the
        admin's new port works on its next knock) or is FRESH seconds old. A
        port removed less than that ago passes: its element is inert, since the
        gate consults the knocked sets only for protected ports."""
        missing = []
        for proto, port in opens:
            read_at, elems = self.copies.get(proto, (None, []))
            if read_at is None or now - read_at >= FRESH or not covers(elems, port):
                listed, err = self.apply({"list": {"set": {**TABLE, "name": PROTECTED[proto]}}})
                if err:
                    return [], err
                read_at, elems = self.copies[proto] = (now, values(listed))
            if not covers(elems, port):
                missing.append((proto, port))
        return missing, ""

    def add(self, address, opens, timeout: int) -> str:
        """Put (address . proto . port) for each of opens in the knocked set with
        timeout seconds, all in one transaction (all or none); libnftables' error, or ""."""
        if self.rearms is None:
            self.rearms = self.probe()
        elems = [{"val": {"concat": [str(address), proto, port]}} for proto, port in opens]
        if self.rearms:  # one add, "expires" re-arming an element already there
            return self.apply(command("add", address.version, elems, timeout=timeout,
                                      expires=timeout))[1]
        # Before Linux 6.12 adding an existing element keeps its old timeout; add,
        # delete, add in one transaction re-arms a repeated knock with the full one.
        add = command("add", address.version, elems, timeout=timeout)
        return self.apply(add, command("delete", address.version, elems), add)[1]

    def probe(self) -> bool | None:
        """Whether an add with "expires" re-arms an element already there (Linux
        6.12 and later), tried on PROBE in knocked4: added for 10 s, added again
        with 1 s left, read back, deleted. None when that cannot be done (no table)."""
        _, err = self.apply(command("add", 4, [{"val": {"concat": PROBE}}], timeout=10))
        _, again = self.apply(command("add", 4, [{"val": {"concat": PROBE}}], timeout=10, expires=1))
        listed, read = self.apply({"list": {"set": {**TABLE, "name": KNOCKED[4]}}})
        self.apply(command("delete", 4, [{"val": {"concat": PROBE}}]))
        if err or again or read:
            return None
        # Every element of a knocked set has a timeout, so each is {"elem": {"val": ...}}.
        left = [e["elem"].get("expires", 0) for e in elements(listed)
                if e["elem"]["val"]["concat"][0] == PROBE[0]]
        return not left or left[0] < 5  # re-armed: 1 s left (or gone already), else 9 or 10


def command(verb: str, version: int, elems: list, **times) -> dict:
    """verb ("add", "delete") the elements elems, each with times (timeout, expires), in knocked{version}."""
    return {verb: {"element": {**TABLE, "name": KNOCKED[version],
                               "elem": [{"elem": {**e, **times}} for e in elems]}}}


def elements(listed: dict) -> list:
    return [e for item in listed["nftables"] for e in item.get("set", {}).get("elem", [])]


def values(listed: dict) -> list:
    # An element is 22, {"range": [8000, 8100]} (a set with flags interval),
    # or either wrapped as {"elem": {"val": ..., "comment": ...}}.
    return [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e for e in elements(listed)]


def covers(values: list, port: int) -> bool:
    return any(v["range"][0] <= port <= v["range"][1] if isinstance(v, dict) else v == port
               for v in values)

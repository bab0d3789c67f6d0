"""The helper's only contact with the firewall, table inet gnocchi: libnftables
JSON built from values request.parse checked (never command text; table, sets
and timeout never come from a request), through Table.apply alone."""
import re

TABLE = {"family": "inet", "table": "gnocchi"}
PROTECTED = {"tcp": "protected_tcp", "udp": "protected_udp"}
KNOCKED = {4: "knocked4", 6: "knocked6"}
FRESH = 1.0  # seconds a copy of a protected set answers for the ports it holds


def rearms(release: str) -> bool:
    # An add that says when an element expires re-arms one already there from
    # Linux 6.12 (commit 4201f3938914). Wrong either way, this fails closed: a
    # slower add, or an element that keeps its old, shorter expiry.
    version = re.match(r"(\d+)\.(\d+)", release)
    return version is not None and (int(version[1]), int(version[2])) >= (6, 12)


class Table:
    """A libnftables context, a copy of each protected set, and rearms()."""

    def __init__(self, ctx, rearms: bool):
        self.ctx, self.copies, self.rearms = ctx, {}, rearms

    def apply(self, *commands) -> tuple[dict, str]:
        """Run commands as one transaction: (output, "") if libnftables' rc is 0, else ({}, err)."""
        rc, out, err = self.ctx.json_cmd({"nftables": [{"metainfo": {"json_schema_version": 1}},
                                                       *commands]})
        return (out or {"nftables": []}, "") if rc == 0 else ({}, err or f"libnftables rc {rc}")

    def unprotected(self, opens, now: float) -> tuple[list, str]:
        """The (proto, port) of opens the live table does not protect, or libnftables' error."""
        # A set is read again when its copy lacks a port (one the admin adds
        # works on its next knock) or is FRESH seconds old. A port removed less
        # than that ago passes: its element is inert, since the gate consults
        # the knocked sets only for packets to protected ports.
        missing = []
        for proto, port in opens:
            read_at, ports = self.copies.get(proto, (float("-inf"), []))
            if now - read_at >= FRESH or not covers(ports, port):
                listed, err = self.apply({"list": {"set": {**TABLE, "name": PROTECTED[proto]}}})
                if err:
                    return [], err
                # An element is 22 or {"range": [8000, 8100]}, or either as {"elem": {"val": ...}}.
                ports = [e["elem"]["val"] if isinstance(e, dict) and "elem" in e else e
                         for e in listed_elements(listed)]
                self.copies[proto] = (now, ports)
            if not covers(ports, port):
                missing.append((proto, port))
        return missing, ""

    def add(self, address, opens, timeout: int) -> str:
        """(address . proto . port) for each of opens, one transaction; libnftables' error or ""."""
        elems = [{"val": {"concat": [str(address), proto, port]}} for proto, port in opens]
        if self.rearms:  # one add; "expires" re-arms an element already there
            return self.apply(command("add", address.version, elems, timeout=timeout,
                                      expires=timeout))[1]
        # An add keeps the old expiry of an element already there: add, delete, add.
        add = command("add", address.version, elems, timeout=timeout)
        return self.apply(add, command("delete", address.version, elems), add)[1]


def command(verb: str, version: int, elems: list, **times) -> dict:
    """The libnftables command to "add" or "delete" elems, each with times, in knocked{version}."""
    return {verb: {"element": {**TABLE, "name": KNOCKED[version],
                               "elem": [{"elem": {**e, **times}} for e in elems]}}}


def listed_elements(listed: dict) -> list:
    return [e for item in listed["nftables"] for e in item.get("set", {}).get("elem", [])]


def covers(ports: list, port: int) -> bool:
    return any(p["range"][0] <= port <= p["range"][1] if isinstance(p, dict) else p == port
               for p in ports)

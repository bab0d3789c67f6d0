"""The helper's only contact with the firewall: table inet gnocchi, JSON API.

Trusts the live table (the kernel's copy of nft/gnocchi.nft) for which ports
are protected. The builders are pure: they return libnftables JSON commands
built from values request.parse checked, never nft command text, and table,
sets and timeout never come from a request. apply() is the one call into
libnftables: one transaction per call, its rc checked.
"""
TABLE = {"family": "inet", "table": "gnocchi"}
PROTECTED = {"tcp": "protected_tcp", "udp": "protected_udp"}
KNOCKED = {4: "knocked4", 6: "knocked6"}


def list_protected(proto: str) -> list:
    return [{"list": {"set": {**TABLE, "name": PROTECTED[proto]}}}]


def protects(listed: dict, port: int) -> bool:
    """Whether the set that list_protected read holds port."""
    elems = [e for item in listed["nftables"] for e in item.get("set", {}).get("elem", [])]
    return any(_matches(e, port) for e in elems)


def _matches(elem, port: int) -> bool:
    # An element is 22, {"range": [8000, 8100]} (a set with flags interval),
    # or either wrapped as {"elem": {"val": ..., "comment": ...}}.
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"]["val"]
    if isinstance(elem, dict) and "range" in elem:
        return elem["range"][0] <= port <= elem["range"][1]
    return elem == port


def open_once(req, timeout: int) -> list:
    """Put (address . proto . port) for each of req.opens in the knocked set with
    `timeout` seconds; one transaction, so all of them or none."""
    elem = {**TABLE, "name": KNOCKED[req.address.version], "elem": [{"elem": {
        "val": {"concat": [str(req.address), proto, port]}, "timeout": timeout}}
        for proto, port in req.opens]}
    # Before Linux 6.12 adding an existing element keeps its old timeout; add,
    # delete, add in one transaction re-arms a repeated knock with the full one.
    return [{"add": {"element": elem}}, {"delete": {"element": elem}}, {"add": {"element": elem}}]


def apply(ctx, commands: list) -> tuple[dict, str]:
    """Run commands as one transaction: (output, "") if libnftables' rc is 0, else ({}, error)."""
    rc, out, err = ctx.json_cmd({"nftables": [{"metainfo": {"json_schema_version": 1}}, *commands]})
    return (out or {"nftables": []}, "") if rc == 0 else ({}, err or f"libnftables rc {rc}")

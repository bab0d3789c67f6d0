"""The helper's only contact with the firewall: table inet gnocchi, JSON API.

Trusts the live table (the kernel's copy of nft/gnocchi.nft) for which ports
are protected. Writes only values request.parse checked, as JSON dicts, never
nft command text; table, sets and timeout never come from a request.
"""
TABLE = {"family": "inet", "table": "gnocchi"}
PROTECTED = {6: "protected_tcp", 17: "protected_udp"}
KNOCKED = {4: "knocked4", 6: "knocked6"}
PROTO_NAMES = {6: "tcp", 17: "udp"}


def is_protected(ctx, proto: int, port: int) -> tuple[bool | None, str]:
    """(True/False, "") from the live set, or (None, error) if it is unreadable."""
    rc, out, err = ctx.json_cmd({"nftables": [{"list": {"set": {**TABLE, "name": PROTECTED[proto]}}}]})
    if rc != 0:
        return None, err
    elems = [e for item in out["nftables"] for e in item.get("set", {}).get("elem", [])]
    return any(_matches(e, port) for e in elems), ""


def _matches(elem, port: int) -> bool:
    # An element is 22, {"range": [8000, 8100]} (a set with flags interval),
    # or either wrapped as {"elem": {"val": ..., "comment": ...}}.
    if isinstance(elem, dict) and "elem" in elem:
        elem = elem["elem"]["val"]
    if isinstance(elem, dict) and "range" in elem:
        return elem["range"][0] <= port <= elem["range"][1]
    return elem == port


def open_once(ctx, req, timeout: int) -> tuple[int, str]:
    """Add (address . proto . port) to the knocked set with `timeout` seconds:
    (libnftables rc, error text)."""
    elem = {**TABLE, "name": KNOCKED[req.address.version], "elem": [{"elem": {
        "val": {"concat": [str(req.address), PROTO_NAMES[req.proto], req.port]},
        "timeout": timeout}}]}
    # Before Linux 6.12 adding an existing element keeps its old timeout; add,
    # delete, add in one transaction re-arms a repeated knock with the full one.
    cmds = [{"add": {"element": elem}}, {"delete": {"element": elem}}, {"add": {"element": elem}}]
    rc, _, err = ctx.json_cmd({"nftables": cmds})
    return rc, err

"""Would a knock get through the admin's own chains? A pure evaluator of an
`nft -j list ruleset` listing, for `gnocchi doctor`.

Trusts nothing: the listing is only read, never run; whatever it cannot follow
(a set it cannot see into, a verdict map, a jump too deep) is "unknown", never
"accept". No I/O, no root: unit-tested on committed listings.
"""
from __future__ import annotations

from gnocchi.admin.nft_table import FAMILY, NAME

UNKNOWN = None


def reach(objects: list[dict], port: int) -> dict[tuple, tuple[str, str]]:
    """For each input base chain outside table inet gnocchi: ("accept" | "drop" |
    "reject" | "unknown", why) for a new UDP datagram to port from anywhere else."""
    chains: dict[tuple, dict] = {}
    rules: dict[tuple, list] = {}
    for o in objects:
        if "chain" in o:
            c = o["chain"]
            chains[(c["family"], c["table"], c["name"])] = c
        elif "rule" in o:
            r = o["rule"]
            rules.setdefault((r["family"], r["table"], r["chain"]), []).append(r)
    found = {}
    for key, c in chains.items():
        if c.get("hook") != "input" or (key[0], key[1]) == (FAMILY, NAME):
            continue
        if key[0] not in ("ip", "ip6", "inet"):
            continue
        verdict, why, _ = _walk(key, chains, rules, port, depth=0)
        if verdict is None:
            policy = c.get("policy", "accept")
            verdict, why = policy, f"the chain's policy is {policy}" + (f"; {why}" if why else "")
        found[key] = (verdict, why)
    return found


def _walk(key, chains, rules, port, depth) -> tuple[str | None, str, bool]:
    """(verdict or None to fall through, why, certain)."""
    maybe: list[str] = []
    if depth > 16:
        return "unknown", "chains nest too deep to follow", False
    for rule in rules.get(key, []):
        matched, verdict, target = _rule(rule["expr"], port)
        handle = f"rule handle {rule.get('handle')}"
        if matched is False or verdict is None:
            continue
        if verdict in ("jump", "goto"):
            sub = (key[0], key[1], target)
            v, why, certain = _walk(sub, chains, rules, port, depth + 1)
            if v is not None and matched is True and certain:
                return v, f"{why} (in chain {target})", True
            if v is not None:
                maybe.append(f"{handle} may {v} in chain {target}")
            if verdict == "goto" and matched is True:
                return None, "; ".join(maybe), not maybe
            continue
        if verdict == "return" and matched is True:
            return None, "; ".join(maybe), not maybe
        if matched is True:
            if maybe and verdict == "accept":
                return "unknown", "; ".join(maybe + [f"then {handle} accepts"]), False
            return verdict, f"{handle}" + (f"; {'; '.join(maybe)}" if maybe else ""), not maybe
        maybe.append(f"{handle} may {verdict} it, for some packets")
    if maybe and depth == 0:
        return "unknown", "; ".join(maybe), False
    return None, "; ".join(maybe), not maybe


def _rule(exprs: list, port: int):
    """(True | False | None, verdict, jump target) for our datagram."""
    matched = True
    for e in exprs:
        if "match" in e:
            m = _match(e["match"], port)
            if m is False:
                return False, None, None
            if m is UNKNOWN:
                matched = UNKNOWN
        elif "accept" in e:
            return matched, "accept", None
        elif "drop" in e:
            return matched, "drop", None
        elif "reject" in e:
            return matched, "reject", None
        elif "jump" in e or "goto" in e:
            kind = "jump" if "jump" in e else "goto"
            return matched, kind, e[kind]["target"]
        elif "return" in e:
            return matched, "return", None
        elif not any(k in e for k in ("counter", "log", "mangle")):
            # limit, quota, an iptables-nft match ("xt"), ...: may or may not match.
            matched = UNKNOWN if matched is True else matched
    return matched, None, None


def _match(m: dict, port: int):
    left, op, right = m.get("left"), m.get("op", "=="), m.get("right")
    if not isinstance(left, dict):
        return UNKNOWN
    value = UNKNOWN
    if "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in ("tcp", "sctp", "dccp", "icmp", "icmpv6", "igmp", "esp", "ah"):
            return op == "!="  # a header our datagram does not have
        if proto in ("udp", "th") and field == "dport":
            value = port
        elif proto in ("ip", "ip6") and field in ("protocol", "nexthdr"):
            value = "udp"
        else:
            return UNKNOWN
    elif "meta" in left:
        key = left["meta"].get("key")
        if key == "l4proto":
            value = "udp"
        elif key in ("iif", "iifname"):
            if right == "lo":
                return op == "!="
            return UNKNOWN
        else:
            return UNKNOWN
    elif "ct" in left and left["ct"].get("key") == "state":
        value = "new"
    else:
        return UNKNOWN
    hit = _contains(right, value)
    if hit is UNKNOWN:
        return UNKNOWN
    return (not hit) if op == "!=" else hit


def _contains(right, value):
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    if isinstance(right, list):
        hits = [_contains(r, value) for r in right]
        return True if True in hits else (UNKNOWN if UNKNOWN in hits else False)
    if isinstance(right, dict) and "range" in right:
        low, high = right["range"]
        return isinstance(value, int) and low <= value <= high
    if isinstance(right, dict):
        return UNKNOWN  # a named set (@name), a prefix, ...
    if value == "udp" and right == 17:
        return True
    if isinstance(right, str) and right.startswith("@"):
        return UNKNOWN
    return right == value

"""The admin's own chains (and Docker's, Podman's, a firewall tool's), as `gnocchi
doctor` needs them: a pure reader of an `nft -j list ruleset` listing.

- reach(): would a new packet get through each of their base chains on a hook: a
  knock (UDP to the knock port, hook input), or a connection to a forward's target
  (hook forward)?
- published(): the ports their rules translate (dnat, redirect, iptables-nft's DNAT
  and REDIRECT targets): Docker's and Podman's published ports, port forwards.
- before(): their base chains that the kernel runs before gnocchi's on the same hook.

Trusts nothing: the listing is only read, never run; whatever it cannot follow
(a set it cannot see into, a verdict map, a jump too deep, an interface) is
"unknown", never "accept". No I/O, no root: unit-tested on committed listings.
"""

from __future__ import annotations

import ipaddress
from typing import NamedTuple

from gnocchi.admin.nft_table import FAMILY, NAME

UNKNOWN = None
L4 = ("tcp", "udp", "sctp", "dccp", "icmp", "icmpv6", "igmp", "esp", "ah")


class Packet(NamedTuple):
    """What is known of a packet: its protocol, destination port and, for one that is
    forwarded, its destination address (None: any)."""

    proto: str
    port: int
    daddr: ipaddress.IPv4Address | ipaddress.IPv6Address | None = None


def reach(
    objects: list[dict], port: int, proto: str = "udp", hook: str = "input", daddr=None
) -> dict[tuple, tuple[str, str]]:
    """For each base chain on hook outside table inet gnocchi: ("accept" | "drop" |
    "reject" | "unknown", why) for a new packet of proto to port (and daddr, if given)
    from anywhere else; by default a knock: a UDP datagram to this host."""
    pkt = Packet(proto, port, daddr)
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
        if (
            c.get("hook") != hook
            or c.get("type", "filter") != "filter"
            or (key[0], key[1]) == (FAMILY, NAME)
        ):
            continue
        if key[0] not in ("ip", "ip6", "inet") or not _family_fits(key[0], daddr):
            continue
        policy = c.get("policy", "accept")
        verdict, why, _ = _walk(key, chains, rules, pkt, depth=0, policy=policy)
        if verdict is None:
            verdict, why = policy, f"the chain's policy is {policy}" + (f"; {why}" if why else "")
        found[key] = (verdict, why)
    return found


def _family_fits(family: str, daddr) -> bool:
    return daddr is None or family == "inet" or (family == "ip") == (daddr.version == 4)


def _walk(
    key, chains, rules, pkt: Packet, depth, policy: str | None = None
) -> tuple[str | None, str, bool]:
    """(verdict or None to fall through, why, certain). A verdict some packets may meet
    before an accept, or before the base chain's policy, is no doubt when it is the same."""
    maybe: list[str] = []
    kinds: set[str] = set()  # the verdicts in maybe
    if depth > 16:
        return "unknown", "chains nest too deep to follow", False
    for rule in rules.get(key, []):
        matched, verdict, target = _rule(rule["expr"], pkt)
        handle = f"rule handle {rule.get('handle')}"
        if matched is False or verdict is None:
            continue
        if verdict in ("jump", "goto"):
            sub = (key[0], key[1], target)
            v, why, certain = _walk(sub, chains, rules, pkt, depth + 1)
            if v is not None and matched is True and certain:
                return v, f"{why} (in chain {target})", True
            if v is not None:
                maybe.append(f"{handle} may {v} in chain {target}")
                kinds.add(v if certain else "unknown")
            if verdict == "goto" and matched is True:
                return None, "; ".join(maybe), not maybe
            continue
        if verdict == "return" and matched is True:
            return None, "; ".join(maybe), not maybe
        if matched is True:
            if kinds - {verdict} and verdict == "accept":
                return "unknown", "; ".join(maybe + [f"then {handle} accepts"]), False
            return (
                verdict,
                f"{handle}" + (f"; {'; '.join(maybe)}" if maybe else ""),
                not kinds - {verdict},
            )
        maybe.append(f"{handle} may {verdict} it, for some packets")
        kinds.add(verdict)
    if maybe and depth == 0 and kinds - {policy}:
        return "unknown", "; ".join(maybe), False
    return None, "; ".join(maybe), not maybe


def _rule(exprs: list, pkt: Packet):
    """(True | False | None, verdict, jump target) for our packet."""
    matched = True
    for e in exprs:
        if "match" in e:
            m = _match(e["match"], pkt)
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


def _match(m: dict, pkt: Packet):
    left, op, right = m.get("left"), m.get("op", "=="), m.get("right")
    if not isinstance(left, dict):
        return UNKNOWN
    value = UNKNOWN
    if "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in L4 and proto != pkt.proto:
            return op == "!="  # a header our packet does not have
        if proto in (pkt.proto, "th") and field == "dport":
            value = pkt.port
        elif proto in ("ip", "ip6") and field in ("protocol", "nexthdr"):
            value = pkt.proto
        elif proto in ("ip", "ip6") and field == "daddr" and pkt.daddr is not None:
            return _address_match(op, right, pkt.daddr)
        else:
            return UNKNOWN
    elif "meta" in left:
        key = left["meta"].get("key")
        if key == "l4proto":
            value = pkt.proto
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
    hit = _contains(right, value, pkt.proto)
    if hit is UNKNOWN:
        return UNKNOWN
    return (not hit) if op == "!=" else hit


def _address_match(op: str, right, daddr):
    """ip daddr == / != an address or a prefix."""
    try:
        if isinstance(right, dict) and "prefix" in right:
            net = ipaddress.ip_network(
                f"{right['prefix']['addr']}/{right['prefix']['len']}", strict=False
            )
        elif isinstance(right, str):
            net = ipaddress.ip_network(right)
        else:
            return UNKNOWN
    except (KeyError, TypeError, ValueError):
        return UNKNOWN
    hit = daddr.version == net.version and daddr in net
    return (not hit) if op == "!=" else hit


def _contains(right, value, proto: str = "udp"):
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    if isinstance(right, list):
        hits = [_contains(r, value, proto) for r in right]
        return True if True in hits else (UNKNOWN if UNKNOWN in hits else False)
    if isinstance(right, dict) and "range" in right:
        low, high = right["range"]
        return isinstance(value, int) and low <= value <= high
    if isinstance(right, dict):
        return UNKNOWN  # a named set (@name), a prefix, ...
    if value == proto and right == {"tcp": 6, "udp": 17}.get(proto):
        return True
    if isinstance(right, str) and right.startswith("@"):
        return UNKNOWN
    return right == value


# ---- what their rules publish, and what runs before gnocchi --------------------------------

NAT_STATEMENTS = ("dnat", "redirect")


class Published(NamedTuple):
    """A rule that translates a destination: where it is, the protocols and ports it
    matches (ports None: any, or not to be told from the rule), and where it sends them
    (None: not shown, as for an iptables-nft target)."""

    where: str
    protos: tuple[str, ...]
    ports: tuple | None  # ints, and (low, high) ranges
    to: str | None


def published(objects: list[dict]) -> list[Published]:
    """Every rule outside table inet gnocchi that translates a destination."""
    found = []
    for o in objects:
        rule = o.get("rule")
        if not rule or (rule.get("family"), rule.get("table")) == (FAMILY, NAME):
            continue
        exprs = rule.get("expr", [])
        nat = next(
            (
                e
                for e in exprs
                if any(k in e for k in NAT_STATEMENTS)
                or e.get("xt", {}).get("name") in ("DNAT", "REDIRECT")
            ),
            None,
        )
        if nat is None:
            continue
        protos, ports = set(), None
        for e in exprs:
            m = e.get("match", {})
            left = m.get("left") if isinstance(m.get("left"), dict) else {}
            payload = left.get("payload", {})
            if payload.get("field") == "dport" and m.get("op", "==") in ("==", "in"):
                if payload.get("protocol") in ("tcp", "udp"):
                    protos.add(payload["protocol"])
                ports = _ports(m.get("right"))
            elif left.get("meta", {}).get("key") == "l4proto" and m.get("op", "==") == "==":
                right = m.get("right")
                protos |= {
                    r
                    for r in (right.get("set", []) if isinstance(right, dict) else [right])
                    if r in ("tcp", "udp")
                }
        where = (
            f"{rule['family']} {rule['table']} {rule['chain']} (rule handle {rule.get('handle')})"
        )
        found.append(Published(where, tuple(sorted(protos)) or ("tcp", "udp"), ports, _target(nat)))
    return found


def _ports(right) -> tuple | None:
    if isinstance(right, int):
        return (right,)
    if isinstance(right, dict) and "range" in right:
        return (tuple(right["range"]),)
    if isinstance(right, dict) and "set" in right:
        items = [_ports(r) for r in right["set"]]
        return None if None in items else tuple(p for item in items for p in item)
    return None


def _target(nat: dict) -> str | None:
    if "redirect" in nat:
        port = (nat["redirect"] or {}).get("port")
        return f"this host's port {port}" if isinstance(port, int) else "this host"
    body = nat.get("dnat") or {}
    addr, port = body.get("addr"), body.get("port")
    if isinstance(addr, str):
        shown = f"[{addr}]" if ":" in addr and isinstance(port, int) else addr
        return shown + (f":{port}" if isinstance(port, int) else "")
    return None


def before(objects: list[dict]) -> list[tuple[str, str, int, str, int]]:
    """(where, hook, priority, type, gnocchi's priority) of each base chain outside table
    inet gnocchi that the kernel runs before gnocchi's base chain of the same hook and
    type: its filter chains on input and forward, its nat chain on prerouting."""
    ours = {}
    for o in objects:
        c = o.get("chain", {})
        if (c.get("family"), c.get("table")) == (FAMILY, NAME) and "hook" in c:
            ours[(c["hook"], c.get("type", "filter"))] = c.get("prio", 0)
    found = []
    for o in objects:
        c = o.get("chain", {})
        key = (c.get("hook"), c.get("type", "filter"))
        if (
            "hook" not in c
            or (c.get("family"), c.get("table")) == (FAMILY, NAME)
            or key not in ours
            or c.get("family") not in ("ip", "ip6", "inet")
        ):
            continue
        prio = c.get("prio", 0)
        if isinstance(prio, int) and isinstance(ours[key], int) and prio < ours[key]:
            found.append(
                (f"{c['family']} {c['table']} {c['name']}", key[0], prio, key[1], ours[key])
            )
    return found

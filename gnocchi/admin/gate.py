"""Is table inet gnocchi's gate there? Pure functions over `nft -j` listings.

Two questions, both asked of the JSON objects `nft -j list` gives (a scratch
test-load of the table file, or the kernel's live table):

- differences(live, expected): does the live table hold what gnocchi loads?
  The table's flags, each chain, each chain's rules in their order, and each
  set's definition are compared. Set elements (protected ports, knock port,
  pending knocks, flood sources) and counter values are state, not
  definition: they are not compared.
- unguarded(objects): which strangers would the table let in? Each probe is a
  packet from someone who never knocked, to a port of protected_tcp or
  protected_udp: a TCP SYN (alone, with ECN, PSH or URG; on a new flow, on one
  conntrack calls established, on a related one) or a UDP datagram (new or
  related), over IPv4 and IPv6; sent to this host (hook input), translated to
  this host by a redirect (input), or translated to another host by a DNAT and
  forwarded (hook forward: a port Docker publishes, a port forward). A
  translated probe's port is the protected one only as the client sent it (ct
  original proto-dst): the port it reaches is any. It is run through the
  table's prerouting base chains and those of its hook symbolically, so the
  answer follows whatever the file says: what cannot be known (an interface, a
  mark, a rate, a set other than the protected and knocked ones) is followed
  both ways, and what is not understood at all counts as letting the packet
  in. A probe is stopped only when every path drops or rejects it.

Trusts nothing it reads: the listing is only read, never run. No I/O, no
root: unit-tested on committed listings (tests/unit/tables/).
"""

from __future__ import annotations

import json
from typing import NamedTuple

from gnocchi.admin.nft_table import FAMILY, KNOCKED, NAME, PROTECTED

ABSENT = "absent"  # the packet has no such header: a match on it fails, whatever its op
UNKNOWN = None
MAX_DEPTH = 16  # nft's own limit on nested jumps
HOOKS = ("prerouting", "input", "forward")
TCP_FLAGS = {
    "fin": 0x01,
    "syn": 0x02,
    "rst": 0x04,
    "psh": 0x08,
    "ack": 0x10,
    "urg": 0x20,
    "ecn": 0x40,
    "cwr": 0x80,
}
L4 = {"tcp": 6, "udp": 17}
OTHER_L4 = {"sctp", "dccp", "icmp", "icmpv6", "igmp", "esp", "ah", "comp", "udplite"}
NO_EFFECT = {"counter", "log", "flow", "dup", "fwd"}
MAY_STOP = {"limit", "quota", "ct count", "meter", "last", "connlimit"}
STATE_KEYS = {"packets", "bytes", "used", "used_unit"}


# ---- differences ---------------------------------------------------------------


def _canon(value):
    """A rule or object with its state left out (counter values, quota use)."""
    if isinstance(value, dict):
        return {
            k: (None if k in ("counter", "last") else _canon(v))
            for k, v in value.items()
            if k not in STATE_KEYS
        }
    if isinstance(value, list):
        return [_canon(v) for v in value]
    return value


def definition(objects) -> dict:
    """{"table": flags, "chains": {name: def}, "rules": {chain: [rule, ...]},
    "objects": {"set NAME": def}} of table inet gnocchi, without handles and elements."""
    found = {"table": None, "chains": {}, "rules": {}, "objects": {}}
    for obj in objects:
        ((kind, body),) = obj.items()
        if (body.get("family"), body.get("table", body.get("name"))) != (FAMILY, NAME):
            continue
        if kind == "table":
            found["table"] = body.get("flags")
        elif kind == "chain":
            found["chains"][body["name"]] = _canon({k: v for k, v in body.items() if k != "handle"})
        elif kind == "rule":
            rule = _canon({k: v for k, v in body.items() if k in ("expr", "comment")})
            found["rules"].setdefault(body["chain"], []).append(json.dumps(rule, sort_keys=True))
        else:
            found["objects"][f"{kind} {body.get('name')}"] = _canon(
                {k: v for k, v in body.items() if k not in ("handle", "elem")}
            )
    return found


def differences(live, expected) -> list[str]:
    """What the live listing lacks or adds against the expected one, one line each;
    [] when its rules, chains, set definitions and flags are what gnocchi loads."""
    have, want = definition(live), definition(expected)
    found = []
    if have["table"] != want["table"]:
        found.append(
            f"table flags {have['table'] or 'none'} (gnocchi loads {want['table'] or 'none'})"
        )
    for kind in ("chains", "objects"):
        what = "chain " if kind == "chains" else ""
        for name in sorted(want[kind].keys() - have[kind].keys()):
            found.append(f"{what}{name} is missing")
        for name in sorted(have[kind].keys() - want[kind].keys()):
            found.append(f"{what}{name} is not gnocchi's")
        for name in sorted(want[kind].keys() & have[kind].keys()):
            if want[kind][name] != have[kind][name]:
                found.append(f"{what}{name} is defined differently")
    for chain in sorted(want["chains"].keys() & have["chains"].keys()):
        wanted, held = want["rules"].get(chain, []), have["rules"].get(chain, [])
        if wanted == held:
            continue
        missing = sum(max(0, wanted.count(r) - held.count(r)) for r in set(wanted))
        extra = sum(max(0, held.count(r) - wanted.count(r)) for r in set(held))
        parts = ([f"{missing} of its {len(wanted)} rules missing"] if missing else []) + (
            [f"{extra} rule{'s' if extra != 1 else ''} added"] if extra else []
        )
        found.append(f"chain {chain}: " + (", ".join(parts) or "rules in another order"))
    return found


# ---- the probes ------------------------------------------------------------------


class Probe(NamedTuple):
    family: str  # "ipv4" | "ipv6"
    l4: str  # "tcp" | "udp"
    flags: int  # TCP flags (0 for UDP)
    ct_state: str  # "new" | "established" | "related" | "untracked"
    ct_status: frozenset
    labels: frozenset  # conntrack labels set so far
    hook: str = "input"  # "input" (to this host) | "forward" (translated to another host)

    @property
    def translated(self) -> bool:
        """A DNAT (a redirect, on input) changed its destination: the port it reaches
        is any, the protected one is where the client sent it."""
        return "dnat" in self.ct_status

    def describe(self) -> str:
        if self.l4 == "tcp":
            names = "+".join(n.upper() for n, bit in TCP_FLAGS.items() if self.flags & bit)
            what = f"a TCP {names} to a protected port"
        else:
            what = "a UDP datagram to a protected port"
        where = (
            ""
            if not self.translated
            else ", forwarded to another host after a DNAT"
            if self.hook == "forward"
            else ", redirected to another port of this host"
        )
        return f"{what} ({self.family[-2:].replace('v', 'IPv')}, conntrack {self.ct_state}{where})"


def probes() -> list[Probe]:
    syn = TCP_FLAGS["syn"]
    found = []
    for family in ("ipv4", "ipv6"):
        for hook, nat in (
            ("input", frozenset()),
            ("input", frozenset({"dnat"})),
            ("forward", frozenset({"dnat"})),
        ):
            for flags in (
                syn,
                syn | TCP_FLAGS["ecn"] | TCP_FLAGS["cwr"],
                syn | TCP_FLAGS["psh"],
                syn | TCP_FLAGS["urg"],
            ):
                found.append(Probe(family, "tcp", flags, "new", nat, frozenset(), hook))
                # A SYN on a flow picked up from a crafted ACK, and one related to an
                # expectation (docs/firewall.md, "How the gate decides").
                found.append(
                    Probe(
                        family,
                        "tcp",
                        flags,
                        "established",
                        nat | frozenset({"confirmed", "seen-reply", "assured"}),
                        frozenset(),
                        hook,
                    )
                )
                found.append(Probe(family, "tcp", flags, "related", nat, frozenset(), hook))
            for state in ("new", "related"):
                found.append(Probe(family, "udp", 0, state, nat, frozenset(), hook))
    return found


class Port(NamedTuple):
    """The probe's destination port: some port of the named set, which one unknown."""

    set_name: str


def _value(left, p: Probe):
    """What the probe has for an expression: a value, ABSENT, or UNKNOWN."""
    if not isinstance(left, dict):
        return UNKNOWN
    if "payload" in left:
        proto, field = left["payload"].get("protocol"), left["payload"].get("field")
        if proto in L4 or proto in OTHER_L4:
            if proto != p.l4:
                return ABSENT
            if field == "dport":
                return UNKNOWN if p.translated else Port(PROTECTED[p.l4])
            return p.flags if field == "flags" and proto == "tcp" else UNKNOWN
        if proto == "th":
            return Port(PROTECTED[p.l4]) if field == "dport" and not p.translated else UNKNOWN
        if proto in ("ip", "ip6"):
            if (proto == "ip") != (p.family == "ipv4"):
                return ABSENT
            return p.l4 if field in ("protocol", "nexthdr") else UNKNOWN
        return UNKNOWN
    if "meta" in left:
        key = left["meta"].get("key")
        return {
            "l4proto": p.l4,
            "nfproto": p.family,
            "protocol": "ip" if p.family == "ipv4" else "ip6",
        }.get(key, UNKNOWN)
    if "ct" in left and left["ct"].get("dir") == "original":
        # The port the client sent it to: the protected one, whatever a DNAT made of it.
        tracked = p.ct_state != "untracked"
        return (
            Port(PROTECTED[p.l4])
            if left["ct"].get("key") == "proto-dst" and tracked
            else (UNKNOWN if tracked else ABSENT)
        )
    if "ct" in left and "dir" not in left["ct"]:
        key = left["ct"].get("key")
        return {
            "state": p.ct_state,
            "status": p.ct_status,
            "direction": "original",
            "label": p.labels,
        }.get(key, UNKNOWN)
    if "concat" in left:
        parts = [_value(part, p) for part in left["concat"]]
        return ABSENT if ABSENT in parts else ("concat", tuple(map(str, parts)))
    if "&" in left:
        inner, mask = left["&"]
        value = _value(inner, p)
        bits = _flag_bits(mask)
        if value is ABSENT or (isinstance(value, int) and bits is not None):
            return value if value is ABSENT else value & bits
        return UNKNOWN
    return UNKNOWN


def _flag_bits(value) -> int | None:
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return TCP_FLAGS.get(value)
    if isinstance(value, list):
        bits = [_flag_bits(v) for v in value]
        return None if None in bits else sum(bits)
    if isinstance(value, dict) and "|" in value:
        return _flag_bits(value["|"])
    return None


def _same(value, right):
    """value == one right-hand constant: True, False or UNKNOWN."""
    if isinstance(value, Port) or isinstance(right, (dict, list)):
        return UNKNOWN  # a port of the set, against a number: could be any
    if isinstance(value, str) and isinstance(right, int) and value in L4:
        return L4[value] == right
    return value == right


def _member(value, right):
    """value in right (an anonymous set, a list, a named set, a constant)."""
    if isinstance(right, str) and right.startswith("@"):
        name = right[1:]
        if isinstance(value, Port):
            return True if name == value.set_name else UNKNOWN
        if isinstance(value, tuple) and value[:1] == ("concat",) and name in KNOCKED.values():
            return False  # a probe is a stranger: it never knocked
        return UNKNOWN
    if isinstance(right, dict) and "set" in right:
        right = right["set"]
    if isinstance(right, list):
        hits = [_member(value, r) for r in right]
        return True if True in hits else (UNKNOWN if UNKNOWN in hits else False)
    if isinstance(right, dict):
        return UNKNOWN  # a range, a prefix, ...
    return _same(value, right)


def _match(m: dict, p: Probe):
    op, value, right = m.get("op", "=="), _value(m.get("left"), p), m.get("right")
    if value is ABSENT:
        return False
    if value is UNKNOWN or op not in ("==", "!=", "in", "!"):
        return UNKNOWN
    negate = op in ("!=", "!")
    if isinstance(value, frozenset):  # ct status, ct label: bits, any of right's
        wanted = right if isinstance(right, list) else [right]
        hit = value == frozenset(wanted) if op in ("==", "!=") else any(w in value for w in wanted)
    elif isinstance(value, int) and not isinstance(value, bool):  # tcp flags
        if isinstance(right, dict) and "set" in right:
            hits = [_flags_equal(value, r) for r in right["set"]]
            hit = True if True in hits else (UNKNOWN if UNKNOWN in hits else False)
        elif op in ("in", "!"):
            bits = _flag_bits(right)
            hit = UNKNOWN if bits is None else bool(value & bits)
        else:
            hit = _flags_equal(value, right)
    else:
        hit = _member(value, right)
    return hit if hit is UNKNOWN or not negate else not hit


def _flags_equal(value: int, right):
    bits = _flag_bits(right)
    return UNKNOWN if bits is None else value == bits


def _rule(exprs: list, start: Probe) -> list[tuple[str, Probe, str | None]]:
    """Each way a rule can end for a probe: ("next" | "accept" | "drop" | "unknown" |
    "return" | "jump" | "goto", probe as it leaves, jump target or why unknown)."""
    out, branches = [], [start]
    for expr in exprs:
        ((key, body),) = expr.items()
        going = []
        for p in branches:
            if key == "match":
                hit = _match(body, p)
                if hit is not False:
                    going.append(p)
                if hit is not True:
                    out.append(("next", p, None))
            elif key in ("accept", "drop", "reject", "return", "continue"):
                out.append(({"reject": "drop", "continue": "next"}.get(key, key), p, None))
            elif key in ("jump", "goto"):
                out.append((key, p, body["target"]))
            elif key == "vmap":
                out.extend(_vmap(body, p))
            elif key == "mangle":
                target = body.get("key", {})
                if target.get("ct", {}).get("key") == "label" and isinstance(
                    body.get("value"), int
                ):
                    p = p._replace(labels=p.labels | {body["value"]})
                going.append(p)
            elif key == "set" and body.get("op") == "delete" or key in NO_EFFECT:
                going.append(p)
            elif key == "set" or key in MAY_STOP:
                going.append(p)
                out.append(("next", p, None))
            elif key == "notrack":
                going.append(p._replace(ct_state="untracked", ct_status=frozenset()))
            else:
                out.append(("unknown", p, f"a {key} statement"))
        branches = going
    out.extend(("next", p, None) for p in branches)
    return out


def _vmap(body: dict, p: Probe) -> list:
    data = body.get("data")
    if not (isinstance(data, dict) and isinstance(data.get("set"), list)):
        return [("unknown", p, "a named verdict map"), ("next", p, None)]
    value, out, certain = _value(body.get("key"), p), [], False
    for key, verdict in data["set"]:
        hit = False if value is ABSENT else (UNKNOWN if value is UNKNOWN else _member(value, key))
        if hit is not False:
            out.extend(_rule([verdict], p)[:1])
        if hit is True:
            certain = True
            break
    if not certain:
        out.append(("next", p, None))
    return out


def _chain(name: str, states: set, rules: dict, depth: int) -> tuple[set, set]:
    """(terminal outcomes {(verdict, probe, why)}, probes that reach the chain's end)."""
    if depth > MAX_DEPTH:
        return {("unknown", p, "jumps nest too deep") for p in states}, set()
    ends, falls, live = set(), set(), set(states)
    for exprs in rules.get(name, []):
        going = set()
        for p in live:
            for kind, q, extra in _rule(exprs, p):
                if kind == "next":
                    going.add(q)
                elif kind == "return":
                    falls.add(q)
                elif kind in ("jump", "goto"):
                    sub_ends, sub_falls = _chain(extra, {q}, rules, depth + 1)
                    ends |= sub_ends
                    (going if kind == "jump" else falls).update(sub_falls)
                else:
                    ends.add((kind, q, f"chain {name}" if kind == "accept" else extra))
        live = going
    return ends, falls | live


def _fate(p: Probe, bases: list, rules: dict) -> str | None:
    """None when every path drops p; else how it gets through."""
    if not any(c["hook"] == p.hook for c in bases):
        return f"no chain of table inet gnocchi hooks {p.hook}"
    bases = [c for c in bases if c["hook"] in ("prerouting", p.hook)]
    states, how = {p}, set()
    for chain in bases:
        passed = set()
        ends, falls = _chain(chain["name"], states, rules, 0)
        for verdict, q, why in ends:
            if verdict == "accept":
                passed.add(q)
                how.add(f"accepted in {why}")
            elif verdict != "drop":
                return f"cannot tell ({why or verdict} in chain {chain['name']})"
        if chain.get("policy", "accept") == "accept" and falls:
            passed |= falls
            how.add(f"passes chain {chain['name']} (policy accept)")
        states = passed
        if not states:
            return None
    return ", ".join(sorted(how))


def unguarded(objects) -> list[str]:
    """The probes the table does not certainly stop, with how each gets through;
    [] when the gate drops every stranger it is meant to."""
    bases, rules, flags = [], {}, None
    for obj in objects:
        ((kind, body),) = obj.items()
        if (body.get("family"), body.get("table", body.get("name"))) != (FAMILY, NAME):
            continue
        if kind == "table":
            flags = body.get("flags")
        elif (
            kind == "chain" and body.get("hook") in HOOKS and body.get("type", "filter") == "filter"
        ):
            bases.append(body)
        elif kind == "rule":
            rules.setdefault(body["chain"], []).append(body["expr"])
    bases.sort(
        key=lambda c: (
            HOOKS.index(c["hook"]),
            c.get("prio", 0) if isinstance(c.get("prio", 0), int) else 0,
        )
    )
    found = []
    for p in probes():
        # A dormant table's chains see no packet; owner and persist change nothing here.
        how = (
            f"the table has flags {flags}: a dormant table filters nothing"
            if set(flags if isinstance(flags, list) else [flags]) - {None, "owner", "persist"}
            else _fate(p, bases, rules)
        )
        if how is not None:
            found.append(f"{p.describe()}: {how}")
    return found


def summary(lines: list[str], most: int = 3) -> str:
    shown = "; ".join(lines[:most])
    return shown + (f" (and {len(lines) - most} more)" if len(lines) > most else "")

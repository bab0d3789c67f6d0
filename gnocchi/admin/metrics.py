"""`gnocchi metrics`: this server's gnocchi in Prometheus's text format, for
node_exporter's textfile collector (gnocchi-metrics.timer writes it every minute).

Gauges are judged now, as `gnocchi status` judges them: armed or not from the
kernel's table (its gate's probes, gnocchi/admin/gate.py), what listens, a
broken config, the table's element counts. Counters come from the journal,
each entry counted once: a run reads the entries `gnocchi audit` reads that
came after the last run's (a journal cursor), adds them to the counts in
STATE, and writes both. Counters stay per server: nothing is shared with
another, and STATE holds only what this server's journal held (lose it, and
the counts start again from what the journal still has: Prometheus reads
that as a counter reset).

Trusts journald's own fields to select entries (_SYSTEMD_UNIT, _UID, as
gnocchi audit does) and the entries' numbers no further: a field that is not
a number counts nothing. Guarantees: the textfile is replaced atomically
(node_exporter never reads half of one; it reads *.prom only, never the
temporary file), and a run reads at most MAX_ENTRIES entries (the rest wait
for the next run), so it ends in bounded time whatever the journal holds.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys
import time
from collections.abc import Iterable

from gnocchi.server import DEFAULT_CONFIG

STATE = "/var/lib/gnocchi-metrics/counts.json"
TEXTFILE = "/var/lib/prometheus/node-exporter/gnocchi.prom"  # Debian's node_exporter reads it
MAX_ENTRIES = 200_000
SOURCE_WINDOW = 3600  # seconds: signature failures' sources are counted over the last hour
# The verifier's verdicts, one entry per knock whose client is known (replay and
# signature: claimed); their excess over the log budget is counted in summaries.
VERDICTS = (
    "accepted",
    "refused",
    "replay",
    "signature",
    "helper-failed",
    "action-run",
    "action-failed",
)
GATE_EVENTS = ("table-missing", "table-changed")


def fresh_state() -> dict:
    return {
        "version": 1,
        "cursor": None,
        "knocks": {},
        "dropped": {},
        "incidents": {},
        "rearms": 0,
        "last_rearm": 0.0,
        "cut": 0,
        "signature_sources": {},
    }


def _number(value: object) -> int:
    text = value.decode("ascii", "replace") if isinstance(value, bytes) else str(value)
    return int(text) if text.isascii() and text.isdigit() else 0  # "²" is a digit to isdigit


def _text(value: object) -> str:
    return value.decode("utf-8", "replace") if isinstance(value, bytes) else str(value)


def _add(counts: dict, key: str, n: int = 1) -> None:
    counts[key] = counts.get(key, 0) + n


def count(entries: Iterable[dict], state: dict) -> dict:
    """state with entries (as systemd.journal.Reader gives them) counted in."""
    for entry in entries:
        event = _text(entry.get("GNOCCHI_EVENT", ""))
        stamp = entry.get("__REALTIME_TIMESTAMP")
        when = stamp.timestamp() if isinstance(stamp, datetime.datetime) else 0.0
        if event in VERDICTS:
            _add(state["knocks"], event)
        if event == "signature" and entry.get("GNOCCHI_SOURCE_IP"):
            state["signature_sources"][_text(entry["GNOCCHI_SOURCE_IP"])] = when
        elif event == "dropped-summary":
            for key, value in entry.items():
                if key.startswith("GNOCCHI_DROPPED_"):
                    reason = key.removeprefix("GNOCCHI_DROPPED_").lower().replace("_", "-")
                    # A signed knock over its client's or address's rate is a knock.
                    _add(
                        state["knocks"] if reason == "rate-limited" else state["dropped"],
                        reason,
                        _number(value),
                    )
                elif key.startswith("GNOCCHI_SUPPRESSED_"):
                    verdict = key.removeprefix("GNOCCHI_SUPPRESSED_").lower().replace("_", "-")
                    _add(state["knocks"], verdict, _number(value))
        elif event in GATE_EVENTS:
            _add(state["incidents"], event)
            if _text(entry.get("GNOCCHI_HOW", "")) == "rearmed":
                state["rearms"] += 1
                state["last_rearm"] = max(state["last_rearm"], when)
        elif event == "connections-cut":
            state["cut"] += _number(entry.get("GNOCCHI_CUT", 0))
        if "__CURSOR" in entry:
            state["cursor"] = entry["__CURSOR"]
    return state


def recent_sources(state: dict, now: float) -> int:
    """Sources of signature failures in the last SOURCE_WINDOW; older ones are forgotten."""
    sources = state["signature_sources"]
    for source in [s for s, t in sources.items() if t < now - SOURCE_WINDOW]:
        del sources[source]
    return len(sources)


def read_new(state: dict, directory: str | None = None, limit: int = MAX_ENTRIES):
    """The journal entries gnocchi audit reads that come after state's cursor."""
    from systemd import journal

    from gnocchi.admin import audit

    reader = journal.Reader(path=directory) if directory else journal.Reader()
    audit.match_gnocchi(reader)
    cursor = state.get("cursor")
    if cursor:
        reader.seek_cursor(cursor)
        first = reader.get_next()
        if first and not reader.test_cursor(cursor):  # that entry is gone: start here
            yield first
    for n, entry in enumerate(reader):
        if n >= limit:
            return
        yield entry


_LABEL_ESCAPES = str.maketrans({"\\": "\\\\", '"': '\\"', "\n": "\\n"})


def _sample(name: str, value: float, labels: dict | None = None) -> str:
    shown = ",".join(f'{k}="{str(v).translate(_LABEL_ESCAPES)}"' for k, v in (labels or {}).items())
    number = repr(float(value)) if isinstance(value, float) else str(value)
    return f"{name}{{{shown}}} {number}" if shown else f"{name} {number}"


def render(facts: dict, state: dict, now: float, version: str) -> str:
    """The text format (version 0.0.4) of facts (status.survey's) and state (count's)."""
    out: list[str] = []

    def family(name: str, kind: str, help_text: str, samples: list[tuple]) -> None:
        out.append(f"# HELP {name} {help_text}")
        out.append(f"# TYPE {name} {kind}")
        out.extend(_sample(name, *sample) for sample in samples)

    knocks = dict.fromkeys((*VERDICTS, "rate-limited"), 0) | state["knocks"]
    family(
        "gnocchi_knocks_total",
        "counter",
        "Knocks decided, by verdict (replay and "
        "signature include entries over the log budget; rate-limited: signed knocks over "
        "their client's or address's rate).",
        [(n, {"verdict": v}) for v, n in sorted(knocks.items())],
    )
    dropped = dict.fromkeys(("size", "mac", "magic", "unknown-client", "repeated"), 0)
    family(
        "gnocchi_dropped_total",
        "counter",
        "Datagrams dropped before any client was known, or as exact repeats, by reason.",
        [(n, {"reason": r}) for r, n in sorted((dropped | state["dropped"]).items())],
    )
    family(
        "gnocchi_signature_failure_sources",
        "gauge",
        "Source addresses of knocks whose "
        f"signature failed in the last {SOURCE_WINDOW} s (each needed the server key).",
        [(recent_sources(state, now),)],
    )
    incidents = dict.fromkeys(GATE_EVENTS, 0) | state["incidents"]
    family(
        "gnocchi_gate_incidents_total",
        "counter",
        "Times the table was found missing or changed while armed.",
        [(n, {"event": e}) for e, n in sorted(incidents.items())],
    )
    family(
        "gnocchi_rearms_total",
        "counter",
        "Times the table was loaded again after it went missing or was changed.",
        [(state["rearms"],)],
    )
    family(
        "gnocchi_last_rearm_timestamp_seconds",
        "gauge",
        "When the table was last loaded again after it went missing or was changed (0: never).",
        [(float(state["last_rearm"]),)],
    )
    family(
        "gnocchi_connections_cut_total",
        "counter",
        "Connections cut after a re-arm (they came in while the gate was gone).",
        [(state["cut"],)],
    )
    family(
        "gnocchi_armed",
        "gauge",
        "1 when table inet gnocchi is loaded with its gate whole (as gnocchi status judges it).",
        [(int(bool(facts.get("armed"))),)],
    )
    family(
        "gnocchi_meant_armed",
        "gauge",
        "1 when gnocchi.socket or gnocchi-arm.service is active: gnocchi is meant to be armed.",
        [(int(bool(facts.get("meant_armed"))),)],
    )
    family(
        "gnocchi_listening",
        "gauge",
        "1 when something listens on the knock port.",
        [(int(bool(facts.get("listening"))),)],
    )
    family(
        "gnocchi_config_broken",
        "gauge",
        "1 when the config does not load (the last good one runs).",
        [(int(bool((facts.get("config") or {}).get("broken"))),)],
    )
    family(
        "gnocchi_flood_limit",
        "gauge",
        "1 when the table limits floods on the knock port.",
        [(int(bool(facts.get("flood_limit"))),)],
    )
    family(
        "gnocchi_trial",
        "gauge",
        "1 while a trial arming waits for --confirm.",
        [(int(facts.get("trial_seconds_left") is not None),)],
    )
    family(
        "gnocchi_clients",
        "gauge",
        "Clients configured (the config and its drop-ins).",
        [(len(facts.get("clients", [])),)],
    )
    family(
        "gnocchi_pending_openings",
        "gauge",
        "Knocks whose opening waits in the table.",
        [(len(facts.get("pending", [])),)],
    )
    family(
        "gnocchi_table_elements",
        "gauge",
        "Elements in each set of table inet gnocchi.",
        [(n, {"set": name}) for name, n in sorted(facts.get("elements", {}).items())],
    )
    family(
        "gnocchi_info",
        "gauge",
        "The server key's fingerprint and gnocchi's version.",
        [(1, {"server_key": ",".join(facts.get("server_keys") or []), "version": version})],
    )
    return "\n".join(out) + "\n"


def load_state(path: str) -> dict:
    """The counts kept by the last run, or fresh ones (a file that is not ours: fresh,
    which Prometheus reads as a counter reset)."""
    try:
        with open(path, encoding="utf-8") as f:
            state = json.load(f)
        if (
            isinstance(state, dict)
            and state.get("version") == 1
            and set(fresh_state()) <= set(state)
        ):
            return state
    except (OSError, ValueError):
        pass
    return fresh_state()


def write(path: str, data: bytes, mode: int) -> None:
    from gnocchi.shared import durable

    os.makedirs(os.path.dirname(path) or ".", mode=0o755, exist_ok=True)
    durable.replace_file(path, data, mode)


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="gnocchi metrics",
        description="Write this server's gnocchi metrics in Prometheus's text format: "
        "knocks by verdict, drops, re-arms (counted from the journal since the "
        "last run), armed, listening, the table's elements (judged now).",
    )
    p.add_argument(
        "--textfile",
        metavar="FILE",
        help=f"replace FILE atomically (gnocchi-metrics.service: {TEXTFILE}); "
        "default: print to stdout",
    )
    p.add_argument(
        "--state",
        default=STATE,
        metavar="FILE",
        help=f"the counts so far and the journal cursor (default {STATE})",
    )
    p.add_argument("--config", default=DEFAULT_CONFIG, metavar="FILE")
    args = p.parse_args(argv[1:])
    if os.geteuid() != 0:
        print(
            "gnocchi metrics: run as root (it reads the kernel's table, the journal and the "
            "server key)",
            file=sys.stderr,
        )
        return 4
    from gnocchi import __version__
    from gnocchi.admin import status

    state = load_state(args.state)
    state = count(read_new(state), state)
    _, _, facts = status.survey(args.config, compare=False)
    text = render(facts, state, time.time(), __version__)
    write(args.state, json.dumps(state, sort_keys=True).encode(), 0o600)
    if args.textfile:
        write(args.textfile, text.encode(), 0o644)
    else:
        sys.stdout.write(text)
    return 0

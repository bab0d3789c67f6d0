"""`gnocchi recover-counters`: the way out of a lost or corrupt counter store.

Trusts the admin's config for the state directory. Guarantees: it writes
one file, the store, durably, with a floor of "now" (the clock in
nanoseconds): every knock captured before, of any client key, is then a
replay, while clients whose counters follow the clock (gnocchi 0.2 and later:
max(last + 1, now)) go on without a change on their side. The store keeps the
owner of its directory (the verifier's user).
"""

from __future__ import annotations

import argparse
import os
import sys
import time

from gnocchi.server import config, counters


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    p = argparse.ArgumentParser(
        prog="gnocchi recover-counters",
        description="Replace a lost or corrupt counter store by one "
        "that treats every counter up to now as a replay.",
    )
    p.add_argument(
        "--config",
        default=config.DEFAULT_CONFIG,
        metavar="FILE",
        help=f"server config (default {config.DEFAULT_CONFIG})",
    )
    args = p.parse_args(argv[1:])
    try:
        cfg = config.load(args.config)
        owner = os.stat(cfg.state_dir)
        print(counters.recover(cfg.state_dir, time.time_ns(), owner.st_uid, owner.st_gid))
    except config.ConfigError as e:
        print(f"gnocchi recover-counters: {e}", file=sys.stderr)
        return 1
    except OSError as e:
        print(
            f"gnocchi recover-counters: state directory: {e.strerror or e}; "
            f"`gnocchi setup` makes it",
            file=sys.stderr,
        )
        return 1
    print("then: systemctl reset-failed gnocchi.service; systemctl restart gnocchi.socket")
    return 0

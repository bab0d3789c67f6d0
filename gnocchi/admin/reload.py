"""`gnocchi reload`: apply the edited config, after checking it.

It is what the docs and the shipped gnocchi.toml give after every edit, and
what add-client, remove-client, protect and unprotect run after theirs
(apply). Trusts the config only once `gnocchi check` passes it. Guarantees:
- a config that check refuses changes nothing: exit 1, each problem named
  with its fix, and gnocchi goes on with what it runs (a broken file is
  never applied; see gnocchi/admin/last_good.py);
- otherwise the config becomes the last good one; if gnocchi is armed, the
  table is reloaded (`systemctl reload gnocchi-arm`: the protected ports of
  [protect], in one transaction that keeps pending knocks); a running
  verifier is told to exit, so that the next knock (kept in its socket)
  starts it with the new config, and the command returns once it has, so a
  removed client is out when it says so;
- it works whether or not the verifier runs and whether or not gnocchi is
  armed (`systemctl reload gnocchi` alone fails when the verifier is idle).
"""

from __future__ import annotations

import argparse
import os
import subprocess
import sys
import time

from gnocchi.admin import last_good, nft_table
from gnocchi.server import config as server_config

SERVICE = "gnocchi.service"
ARM_UNIT = "gnocchi-arm.service"
RELOAD_WAIT = 15  # seconds for the old verifier to exit (at once on SIGTERM; bounds a stuck one)


class ApplyError(Exception):
    """Applying failed part way; str() says what was done and what was not."""


def active(unit: str) -> bool | None:
    """unit is active; None when there is no systemd to ask."""
    if not os.path.isdir("/run/systemd/system"):
        return None
    try:
        return (
            subprocess.run(
                ["systemctl", "is-active", "--quiet", unit], stderr=subprocess.DEVNULL, timeout=30
            ).returncode
            == 0
        )
    except (OSError, subprocess.TimeoutExpired):
        return None


def main_pid() -> str:
    return subprocess.run(
        ["systemctl", "show", "-P", "MainPID", SERVICE], capture_output=True, text=True, timeout=30
    ).stdout.strip()


def apply(config_path: str) -> list[str]:
    """Make gnocchi run the config at config_path (which loads): keep it as the last
    good one, reload an armed table, restart a running verifier. What happened, one
    phrase each; ApplyError when a step failed."""
    done = []
    recorded, said = last_good.record(config_path)
    if not recorded:
        raise ApplyError(said)
    armed = active(ARM_UNIT)
    if armed is None:
        return done + ["no systemd here: restart the verifier and reload the table yourself"]
    if armed:
        proc = subprocess.run(
            ["systemctl", "reload", ARM_UNIT], capture_output=True, text=True, timeout=120
        )
        if proc.returncode != 0:
            raise ApplyError(
                f"the table was not reloaded: {proc.stderr.strip()}; "
                "`systemctl status gnocchi-arm` and `gnocchi check` say why"
            )
        done.append(f"table inet gnocchi reloaded ({ARM_UNIT})")
    else:
        done.append("not armed: arming will use it")
    if not active(SERVICE):
        return done + [f"{SERVICE} is not running; the next knock starts it with this config"]
    old_pid = main_pid()
    proc = subprocess.run(
        ["systemctl", "kill", "--kill-who=main", "--signal=TERM", SERVICE],
        capture_output=True,
        text=True,
        timeout=60,
    )
    if proc.returncode != 0:
        raise ApplyError(
            f"{', '.join(done)}; but the verifier was not restarted: {proc.stderr.strip()}"
        )
    # The old verifier still decides the knocks it reads until it exits (at once on
    # SIGTERM): a removed client is out only then.
    deadline = time.monotonic() + RELOAD_WAIT
    while main_pid() == old_pid:
        if time.monotonic() > deadline:
            raise ApplyError(
                f"{', '.join(done)}; but the old verifier (pid {old_pid}) still "
                f"runs after {RELOAD_WAIT} s"
            )
        time.sleep(0.05)
    return done + [f"{SERVICE} reloaded (the next knock starts it with this config)"]


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="gnocchi reload",
        description="After editing gnocchi.toml: check it (as `gnocchi check`) and refuse it "
        "if gnocchi would not work; otherwise apply it: keep it as the last good "
        "config, reload the table if armed (the protected ports), and restart a "
        "running verifier. Works whether or not the verifier runs.",
    )
    p.add_argument(
        "--config",
        default=server_config.DEFAULT_CONFIG,
        metavar="FILE",
        help=f"server config (default {server_config.DEFAULT_CONFIG})",
    )
    p.add_argument("--table", default=nft_table.DEFAULT_FILE, help=argparse.SUPPRESS)
    p.add_argument("--unit-dir", help=argparse.SUPPRESS)
    return p


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    args = parser().parse_args(argv[1:])
    from gnocchi.admin import check

    report = check.run(args.config, args.table, args.unit_dir)
    for warning in report.warnings:
        print(f"gnocchi reload: warning: {warning}", file=sys.stderr)
    if not report.ok:
        for problem in report.problems:
            print(f"gnocchi reload: {problem}", file=sys.stderr)
        print(
            f"gnocchi reload: REFUSED: {len(report.problems)} problem"
            f"{'s' if len(report.problems) != 1 else ''}; nothing was changed, gnocchi goes "
            "on as it runs now (`gnocchi status` shows it)",
            file=sys.stderr,
        )
        return 1
    try:
        done = apply(args.config)
    except (ApplyError, OSError, subprocess.SubprocessError) as e:
        print(f"gnocchi reload: {e}", file=sys.stderr)
        return 1
    print(f"gnocchi reload: ok: {report.summary(args.config)}; " + "; ".join(done))
    return 0

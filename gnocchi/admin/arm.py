"""`gnocchi arm` and `gnocchi disarm`: arming on trial, confirming, disarming.

`gnocchi arm --trial SECONDS` arms (starts gnocchi.socket) and schedules
the one switch off (`systemctl disable --now gnocchi.socket`) as a transient
systemd timer: PID 1 runs it, so it disarms even if every gnocchi process is
dead, unless `gnocchi arm --confirm` (from a session that came in through a
knock) cancels it and enables gnocchi.socket for good. `gnocchi disarm` is
the one switch off, for the console.

Trusts systemd and the journal; every outcome is a journal entry of
gnocchi.admin.table's (OBJECT_SYSTEMD_UNIT=gnocchi.service).
"""

from __future__ import annotations

import argparse
import ipaddress
import json
import os
import subprocess
import sys
import time

from gnocchi.admin import nft_table
from gnocchi.admin.table import ARM_UNIT, VERIFIER_UNIT, log, systemctl

SOCKET = "gnocchi.socket"
TRIAL = "gnocchi-trial-disarm"  # the transient .timer and .service
MIN_TRIAL, MAX_TRIAL = 10, 86400


def trial_deadline() -> float | None:
    """When the pending automatic disarm fires (time.time() seconds), or None."""
    proc = systemctl("list-timers", "--all", "--output=json", f"{TRIAL}.timer")
    try:
        timers = json.loads(proc.stdout or "[]")
    except ValueError:
        return None
    for timer in timers:
        if timer.get("unit") == f"{TRIAL}.timer" and timer.get("next"):
            return timer["next"] / 1e6
    return None


def trial_seconds_left() -> int | None:
    deadline = trial_deadline()
    return None if deadline is None else max(0, round(deadline - time.time()))


def cancel_trial() -> bool:
    """Stop the automatic disarm; True if one was pending."""
    pending = trial_deadline() is not None
    systemctl("stop", f"{TRIAL}.timer", f"{TRIAL}.service")
    systemctl("reset-failed", f"{TRIAL}.timer", f"{TRIAL}.service")
    return pending


def arm_trial(seconds: int) -> int:
    cancel_trial()
    # The disarm is scheduled before anything is armed: whatever happens to this
    # process from here on, PID 1 disarms in `seconds`. No gnocchi code is needed
    # for it (the ExecStartPre only writes the journal entry, and may fail).
    proc = subprocess.run(
        [
            "systemd-run",
            f"--unit={TRIAL}",
            f"--on-active={seconds}",
            "--timer-property=AccuracySec=1s",
            "--description=gnocchi trial arming: disarm unless `gnocchi arm --confirm`",
            "-p",
            "ExecStartPre=-/usr/bin/gnocchi arm --expired",
            "/bin/systemctl",
            "disable",
            "--now",
            SOCKET,
        ],
        capture_output=True,
        text=True,
        timeout=120,
    )
    if proc.returncode != 0:
        print(
            f"gnocchi arm: cannot schedule the automatic disarm, so nothing was armed: "
            f"{proc.stderr.strip()}",
            file=sys.stderr,
        )
        return 1
    # Not enabled while on trial, so that a reboot disarms too (an earlier refused
    # `systemctl enable --now gnocchi.socket` leaves it enabled): --confirm enables it.
    systemctl("disable", SOCKET)
    start = systemctl("start", SOCKET)
    if start.returncode != 0:
        cancel_trial()
        print(
            f"gnocchi arm: arming refused, nothing was armed:\n{start.stderr.strip()}\n"
            "`gnocchi check` (or `journalctl -u gnocchi`) says why.",
            file=sys.stderr,
        )
        return 1
    deadline = time.strftime("%H:%M:%S", time.localtime(time.time() + seconds))
    log(
        "trial",
        f"armed on trial: disarms by itself at {deadline} (in {seconds} s) unless "
        "`gnocchi arm --confirm` runs first",
        cli=True,
        seconds=seconds,
    )
    print(
        f"gnocchi: ARMED ON TRIAL: the protected ports now need a knock.\n"
        f"It disarms by itself at {deadline} (in {seconds} s), even if gnocchi dies,\n"
        "and at a reboot (gnocchi.socket is not enabled while on trial).\n"
        "Keep this session open. From your client, knock and log in again in a NEW\n"
        "session; from that session run `gnocchi arm --confirm` to stay armed\n"
        "(at every boot, too). `gnocchi disarm` disarms now."
    )
    return 0


def knocked_in_from(address: str, since: float) -> bool:
    """An accepted knock from address since `since` (time.time()) is in the journal."""
    try:
        from systemd import journal
    except ImportError:
        return False
    reader = journal.Reader()
    reader.add_match(
        _SYSTEMD_UNIT=VERIFIER_UNIT, GNOCCHI_EVENT="accepted", GNOCCHI_SOURCE_IP=address
    )
    reader.seek_realtime(since)
    return reader.get_next() != {}


def session_address() -> str | None:
    """The client address of this ssh session, if it is one (SSH_CONNECTION)."""
    parts = os.environ.get("SSH_CONNECTION", "").split()
    if not parts:
        return None
    try:
        address = ipaddress.ip_address(parts[0])
    except ValueError:
        return None
    mapped = getattr(address, "ipv4_mapped", None)
    return str(mapped or address)


def confirm(force: bool) -> int:
    deadline = trial_deadline()
    if deadline is None:
        if systemctl("is-enabled", "--quiet", SOCKET).returncode == 0:
            print(
                "gnocchi arm: nothing to confirm: gnocchi.socket is already enabled "
                "(armed for good)"
            )
            return 0
        print(
            "gnocchi arm: no trial arming to confirm; start one with `gnocchi arm --trial SECONDS`",
            file=sys.stderr,
        )
        return 1
    if nft_table.live() is None or systemctl("is-active", "--quiet", SOCKET).returncode != 0:
        print(
            "gnocchi arm: NOT confirming: gnocchi is not armed and listening right now "
            "(`gnocchi status` says why)",
            file=sys.stderr,
        )
        return 1
    address = session_address()
    if address and not force and not knocked_in_from(address, trial_started()):
        print(
            f"gnocchi arm: NOT confirming: this session comes from {address}, which has "
            "not knocked in since the trial began, so it proves nothing about a knock "
            "working. From your client, knock and log in again, then confirm from that "
            "session (or add --force).",
            file=sys.stderr,
        )
        return 1
    cancel_trial()
    enable = systemctl("enable", SOCKET)
    if enable.returncode != 0:
        print(
            f"gnocchi arm: the automatic disarm is cancelled but enabling failed: "
            f"{enable.stderr.strip()}; gnocchi stays armed until the next boot",
            file=sys.stderr,
        )
        return 1
    log(
        "trial",
        "trial arming confirmed"
        + (f" from a session from {address}" if address else "")
        + ": armed for good (at every boot)",
        cli=True,
    )
    print(
        "gnocchi: ARMED: confirmed; the automatic disarm is cancelled and gnocchi.socket "
        "is enabled (armed at every boot). Disarm with `gnocchi disarm`."
    )
    return 0


def trial_started() -> float:
    """When the pending trial began (its timer's activation), time.time() seconds;
    0 when systemd cannot say (then any accepted knock from the session counts)."""
    proc = systemctl("show", "-P", "ActiveEnterTimestamp", "--timestamp=unix", f"{TRIAL}.timer")
    try:
        return float(proc.stdout.strip().lstrip("@"))
    except ValueError:
        return 0.0


def expired() -> int:
    """ExecStartPre of the automatic disarm: only the journal entry."""
    log(
        "trial",
        "trial arming NOT confirmed in time: disarming now "
        "(systemctl disable --now gnocchi.socket)",
        priority=3,
    )
    return 0


def disarm() -> int:
    cancel_trial()
    proc = systemctl("disable", "--now", SOCKET)
    if proc.returncode != 0:
        print(f"gnocchi disarm: {proc.stderr.strip()}", file=sys.stderr)
        return 1
    # The table is gone already (gnocchi.socket's own stop removes it); wait for
    # gnocchi-arm.service too, which was started first and so stops just after.
    for _ in range(100):
        if nft_table.live() is None and systemctl("is-active", "--quiet", ARM_UNIT).returncode != 0:
            print(
                "gnocchi: NOT ARMED: disarmed; table inet gnocchi is removed and nothing "
                "listens. To arm again: gnocchi arm --trial SECONDS"
            )
            return 0
        time.sleep(0.1)
    print(
        "gnocchi disarm: gnocchi.socket is stopped and disabled, but table inet gnocchi "
        "is still loaded; `systemctl status gnocchi-arm` says why",
        file=sys.stderr,
    )
    return 1


def trial_seconds(text: str) -> int:
    if not text.isdigit() or not MIN_TRIAL <= int(text) <= MAX_TRIAL:
        raise argparse.ArgumentTypeError(
            f"{text!r} is not a number of seconds in {MIN_TRIAL}..{MAX_TRIAL}"
        )
    return int(text)


def arm_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="gnocchi arm",
        description="Arm safely: --trial SECONDS arms with an automatic disarm run by systemd "
        "(no gnocchi process needs to live); --confirm, from a session that came "
        "in through a knock, keeps it armed for good. (`systemctl enable --now "
        "gnocchi.socket` arms for good at once.)",
    )
    what = p.add_mutually_exclusive_group(required=True)
    what.add_argument(
        "--trial",
        type=trial_seconds,
        metavar="SECONDS",
        help=f"arm now, disarm by itself after SECONDS ({MIN_TRIAL}..{MAX_TRIAL})",
    )
    what.add_argument(
        "--confirm",
        action="store_true",
        help="cancel the automatic disarm and enable gnocchi.socket",
    )
    what.add_argument("--expired", action="store_true", help=argparse.SUPPRESS)
    p.add_argument(
        "--force",
        action="store_true",
        help="--confirm even from an ssh session that did not knock in",
    )
    args = p.parse_args(argv[1:])
    if os.geteuid() != 0:
        print("gnocchi arm: run as root", file=sys.stderr)
        return 1
    if args.expired:
        return expired()
    if args.confirm:
        return confirm(args.force)
    return arm_trial(args.trial)


def disarm_main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="gnocchi disarm",
        description="Disarm now and for good: systemctl disable --now gnocchi.socket, and "
        "cancel a trial's automatic disarm. Waits until the table is gone.",
    )
    p.parse_args(argv[1:])
    if os.geteuid() != 0:
        print("gnocchi disarm: run as root", file=sys.stderr)
        return 1
    return disarm()


def main(argv=None) -> int:
    argv = sys.argv if argv is None else argv
    return {"arm": arm_main, "disarm": disarm_main}[argv[0]](argv)

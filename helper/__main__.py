"""gnocchi's root helper: a good request's knocked-set elements, all or none; nothing else.

Socket-activated; README.md here is the contract: what it trusts (systemd's
socket, SO_PEERCRED, the live table; nothing a peer sends) and guarantees.
"""
import argparse
import contextlib
import os
import pwd
import socket
import struct
import sys
import time

import nftables
from systemd import daemon, journal

import nft
import request as rq

RECV_SECONDS = 2.0   # a peer that connects and says nothing holds us this long
# Requests per address: above what the verifier lets one address have (40 at once,
# then two a second), so the helper never decides who gets in when the verifier
# behaves; a stolen verifier still cannot churn one address's knocks faster.
MAX_PER_MINUTE = 200
MESSAGE_ID = "5b0c5e6a0d3e4c58a4f6f2d1b7c9e013"
PRIORITY = {rq.OK: journal.LOG_INFO, rq.NOT_PROTECTED: journal.LOG_WARNING,
            rq.RATE_LIMITED: journal.LOG_WARNING, rq.NFT_FAILED: journal.LOG_ERR,
            rq.EXPIRED: journal.LOG_WARNING}  # anything else (malformed, BAD_PEER): LOG_CRIT


def log(status: int, text: str, fields: dict) -> None:
    """Journald under systemd (else one line on stderr); malformed is LOG_CRIT."""
    name = rq.STATUSES[status]
    fields = {f"GNOCCHI_HELPER_{k}": str(v) for k, v in {**fields, "STATUS": name}.items()}
    st = os.fstat(2)  # systemd.exec(5): JOURNAL_STREAM is stderr's dev:ino in a unit
    if os.environ.get("JOURNAL_STREAM") == f"{st.st_dev}:{st.st_ino}":
        # OBJECT_SYSTEMD_UNIT: `journalctl -u gnocchi` shows it too (a root sender may).
        journal.send(f"{name}: {text}", MESSAGE_ID=MESSAGE_ID, SYSLOG_IDENTIFIER="gnocchi-helper",
                     PRIORITY=PRIORITY.get(status, journal.LOG_CRIT),
                     OBJECT_SYSTEMD_UNIT="gnocchi.service", **fields)
    else:
        print(f"gnocchi-helper: {name}: {text}", *(f"{k}={v}" for k, v in fields.items()),
              file=sys.stderr, flush=True)


def decide(conn, peer_uid: int, table, open_seconds: int, recent, clock=time.monotonic) -> tuple:
    """(status, text, log fields) for one connection; table (nft.Table) and clock are passed in."""
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    fields = {"PEER_UID": uid, "PEER_PID": pid}
    try:
        # Read even a stranger's message: closing on unread data resets the
        # connection before the peer reads its status. One byte more shows a longer
        # message and bounds the hex we log.
        msg = conn.recv(rq.MAX_SIZE + 1)
    except OSError:  # timed out or reset: an empty message
        msg = b""
    if uid != peer_uid:
        return rq.BAD_PEER, f"uid {uid} is not the verifier's", dict(fields, REQUEST_HEX=msg.hex())
    req = rq.parse(msg)
    if isinstance(req, int):
        return req, f"refused {len(msg)} bytes", dict(fields, REQUEST_HEX=msg.hex())
    ports = " ".join(f"{proto}/{port}" for proto, port in req.opens)
    what = f"{req.address} {ports}"
    fields.update(ADDRESS=req.address, PORTS=ports)
    now = clock()
    missing, err = table.unprotected(req.opens, now)
    if err:
        return rq.NFT_FAILED, f"{what}: no protected set to read", dict(fields, NFT_ERROR=err)
    if missing:  # one is enough to refuse them all
        unprotected = " ".join(f"{proto}/{port}" for proto, port in missing)
        return rq.NOT_PROTECTED, f"{what}: not protected: {unprotected}", fields
    # Memory: only addresses with a request in the last minute. The dict is in
    # the order of their last requests (each goes last when it is updated), so
    # those a minute old are at its start.
    while recent and next(iter(recent.values()))[-1] <= now - 60:
        del recent[next(iter(recent))]
    times = [t for t in recent.get(req.address, []) if t > now - 60]
    if len(times) >= MAX_PER_MINUTE:
        return rq.RATE_LIMITED, f"{what}: {MAX_PER_MINUTE} requests for it in a minute", fields
    if clock() * 1000 > req.deadline_ms:  # last, just before acting: the verifier gave up
        return rq.EXPIRED, f"{what}: past its deadline, the verifier no longer waits", fields
    recent.pop(req.address, None)  # to be put back last
    recent[req.address] = times + [now]
    err = table.add(req.address, req.opens, open_seconds)
    if err:
        return rq.NFT_FAILED, f"{what}: libnftables refused the add", dict(fields, NFT_ERROR=err)
    return rq.OK, f"{what} may start one connection each within {open_seconds} s", dict(
        fields, TIMEOUT=open_seconds)


def main() -> int:
    p = argparse.ArgumentParser(prog="gnocchi-helper", description=__doc__.splitlines()[0])
    p.add_argument("--peer-user", default="gnocchi", help="the one user served (default gnocchi)")
    p.add_argument("--open-seconds", type=int, default=30,
                   help="knock timeout, 1..3600 (default 30)")
    args = p.parse_args()
    if not 1 <= args.open_seconds <= 3600:
        p.error(f"--open-seconds {args.open_seconds}: not in 1..3600")
    try:
        peer_uid = pwd.getpwnam(args.peer_user).pw_uid
    except KeyError:
        p.error(f"--peer-user {args.peer_user!r}: no such user")
    fds = daemon.listen_fds()
    if len(fds) != 1:
        p.error(f"expected 1 socket from systemd (LISTEN_FDS), got {len(fds)}")
    listener = socket.socket(fileno=fds[0])
    if (listener.family, listener.type) != (socket.AF_UNIX, socket.SOCK_SEQPACKET):
        p.error("the socket from systemd is not AF_UNIX SOCK_SEQPACKET")
    table, recent = nft.Table(nftables.Nftables(), nft.rearms(os.uname().release)), {}
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(RECV_SECONDS)
            status, text, fields = decide(conn, peer_uid, table, args.open_seconds, recent)
            log(status, text, fields)  # first: no answer goes out unlogged
            with contextlib.suppress(OSError):  # the peer left; the decision stands, logged
                conn.send(bytes([status]))


if __name__ == "__main__":
    sys.exit(main())

"""gnocchi's root helper: a good request's knocked-set elements, all or none; nothing else.

Socket-activated; README.md here is the contract: what it trusts (systemd's
socket, SO_PEERCRED, the live table; nothing a peer sends) and guarantees."""
import argparse
import contextlib
import os
import pwd
import socket
import struct
import sys

import nft
import request as rq

# Every journal entry's own fields. OBJECT_SYSTEMD_UNIT: `journalctl -u gnocchi` shows it too.
ENTRY = {"MESSAGE_ID": "5b0c5e6a0d3e4c58a4f6f2d1b7c9e013", "SYSLOG_IDENTIFIER": "gnocchi-helper",
         "OBJECT_SYSTEMD_UNIT": "gnocchi.service"}
# syslog's: 6 info, 4 warning, 3 err; any other status (malformed, BAD_PEER) 2, crit
PRIORITY = {rq.OK: "6", rq.NOT_PROTECTED: "4", rq.TOO_MANY: "4", rq.EXPIRED: "4",
            rq.NFT_FAILED: "3"}
JOURNAL = "/run/systemd/journal/socket"


def log(status: int, text: str, fields: dict) -> None:
    """Journald under systemd (else one line on stderr); malformed is LOG_CRIT."""
    name = rq.STATUSES[status]
    fields = {f"GNOCCHI_HELPER_{k}": str(v) for k, v in {**fields, "STATUS": name}.items()}
    # systemd.exec(5): JOURNAL_STREAM is stderr's dev:ino in a unit
    if os.environ.get("JOURNAL_STREAM") == "{0.st_dev}:{0.st_ino}".format(os.fstat(2)):
        # The journal's native protocol, written out (python3-systemd's modules cost 3.3 MB):
        # each field's name, a newline, its length (64 bits, little-endian), its bytes, a
        # newline (a root sender may give OBJECT_SYSTEMD_UNIT).
        fields.update(ENTRY, MESSAGE=f"{name}: {text}", PRIORITY=PRIORITY.get(status, "2"))
        with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as journal:
            journal.sendto(b"".join(k.encode() + b"\n" + len(v.encode()).to_bytes(8, "little")
                                    + v.encode() + b"\n" for k, v in fields.items()), JOURNAL)
    else:
        print(f"gnocchi-helper: {name}: {text}", *(f"{k}={v}" for k, v in fields.items()),
              file=sys.stderr, flush=True)


def decide(conn: socket.socket, peer_uid: int, table: nft.Table, open_seconds: int) -> tuple:
    """(status, text, log fields) for one connection; the table (and its clock) passed in."""
    pid, uid, _ = struct.unpack("3i", conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, 12))
    fields = {"PEER_UID": uid, "PEER_PID": pid}
    msg = b""  # if it times out or resets
    with contextlib.suppress(OSError):
        # Read even a stranger's message: closing on unread data resets the
        # connection before the peer reads its status. One byte more shows a longer
        # message and bounds the hex we log.
        msg = conn.recv(rq.MAX_SIZE + 1)
    req = rq.parse(msg) if uid == peer_uid else rq.BAD_PEER
    if isinstance(req, int):
        why = f"uid {uid} is not the verifier's" if uid != peer_uid else f"refused {len(msg)} bytes"
        return req, why, dict(fields, REQUEST_HEX=msg.hex())
    ports = " ".join(f"{proto}/{port}" for proto, port in req.opens)
    what = f"{req.address} {ports} for client {req.client}"
    fields.update(ADDRESS=req.address, PORTS=ports, CLIENT=req.client)
    if err := table.look(req, table.clock()):
        return rq.NFT_FAILED, f"{what}: a set could not be read", dict(fields, NFT_ERROR=err)
    if missing := table.unprotected(req.opens):  # one is enough to refuse them all
        return rq.NOT_PROTECTED, f"{what}: not protected: {' '.join(missing)}", fields
    # The bounds that keep one client (a stolen key), or one source, from filling a
    # knocked set: openings pending, whatever the open time (README.md here).
    if crowded := table.crowded(req):
        return rq.TOO_MANY, f"{what}: {crowded} has {nft.SHARE} openings pending", fields
    if table.clock() * 1000 > req.deadline_ms:  # last, just before acting: the verifier gave up
        return rq.EXPIRED, f"{what}: past its deadline, the verifier no longer waits", fields
    if err := table.add(req, open_seconds):
        return rq.NFT_FAILED, f"{what}: libnftables refused the add", dict(fields, NFT_ERROR=err)
    return rq.OK, f"{what} may start one connection each within {open_seconds} s", dict(
        fields, TIMEOUT=open_seconds)


def main() -> int:
    p = argparse.ArgumentParser(prog="gnocchi-helper", description=__doc__.splitlines()[0])
    p.add_argument("--peer-user", default="gnocchi", help="the one user served (default gnocchi)")
    p.add_argument("--open-seconds", type=int, default=30, help="1..3600 (default 30)")
    args = p.parse_args()
    if not 1 <= args.open_seconds <= 3600:
        p.error(f"--open-seconds {args.open_seconds}: not in 1..3600")
    peer_uid = next((u.pw_uid for u in pwd.getpwall() if u.pw_name == args.peer_user), None)
    if peer_uid is None:
        p.error(f"--peer-user {args.peer_user!r}: no such user")
    # sd_listen_fds(3): LISTEN_FDS sockets from fd 3 on, when LISTEN_PID is this process
    fds = os.environ.get("LISTEN_FDS") if os.environ.get("LISTEN_PID") == str(os.getpid()) else "0"
    listener = socket.socket(fileno=3) if fds == "1" else None
    if not listener or (listener.family, listener.type) != (socket.AF_UNIX, socket.SOCK_SEQPACKET):
        p.error(f"expected 1 AF_UNIX SOCK_SEQPACKET socket from systemd, got LISTEN_FDS={fds}")
    table = nft.Table(nft.nftables.Nftables())
    while True:
        conn, _ = listener.accept()
        with conn:
            conn.settimeout(2.0)  # a peer that connects and says nothing holds us this long
            status, text, fields = decide(conn, peer_uid, table, args.open_seconds)
            log(status, text, fields)  # first: no answer goes out unlogged
            with contextlib.suppress(OSError):  # the peer left; the decision stands, logged
                conn.send(bytes([status]))


if __name__ == "__main__":
    sys.exit(main())

"""Run inside the client namespace: send datagrams, then report any reply.

usage: udp_client.py HOST PORT SECONDS [HEX ...]   (packets also one hex per stdin line;
"-" is an empty datagram)
The socket is connected, so any datagram or ICMP error coming back from the
server is seen (ICMP as ConnectionRefusedError). Prints "replies N".
"""

import socket
import sys
import time

host, port, seconds = sys.argv[1], int(sys.argv[2]), float(sys.argv[3])
# "-" stands for an empty datagram
packets = [bytes.fromhex(h.strip("-")) for h in sys.argv[4:] + sys.stdin.read().split()]
family = socket.AF_INET6 if ":" in host else socket.AF_INET
sock = socket.socket(family, socket.SOCK_DGRAM)
sock.connect((host, port))
replies = 0
for i, packet in enumerate(packets):
    if i % 50 == 49:
        time.sleep(0.005)  # a flood, paced so the receiver's socket buffer never overflows
    try:
        sock.send(packet)
    except ConnectionRefusedError:
        replies += 1
deadline = time.monotonic() + seconds
sock.settimeout(0.05)
while time.monotonic() < deadline:
    try:
        sock.recv(4096)
        replies += 1
    except TimeoutError:
        pass
    except ConnectionRefusedError:
        replies += 1
print(f"replies {replies}")

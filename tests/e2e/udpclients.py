#!/usr/bin/env python3
"""Plain UDP clients and a silent service for tests/e2e/run.sh (lossy_uplink). Run inside the suite's
namespaces only; every loop is bounded in time.

  send  DST_IP DST_PORT CLIENTS SECONDS   CLIENTS sockets, each sends "cI SEQ" once a second to DST
  sink  BIND_IP PORT SECONDS OUTFILE      receives and never answers (as WireGuard with idle peers); rewrites
                                          OUTFILE every second: one line per client, "cI received N from SRC..."
"""
import os
import socket
import sys
import time


def send(dst_ip, dst_port, clients, seconds):
    socks = []
    for _ in range(clients):
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        s.bind(("0.0.0.0", 0))
        socks.append(s)
    start = time.monotonic()
    seq = 0
    while time.monotonic() - start < seconds:
        for i, s in enumerate(socks):
            s.sendto(f"c{i} {seq}".encode(), (dst_ip, dst_port))
        seq += 1
        print(f"sent {seq} rounds", flush=True)
        time.sleep(max(0.0, start + seq - time.monotonic()))


def sink(bind_ip, port, seconds, outfile):
    s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    s.bind((bind_ip, port))
    s.settimeout(0.2)
    seen = {}  # client id -> {source: count}
    start = time.monotonic()
    last_write = 0.0
    print("listening", flush=True)
    while time.monotonic() - start < seconds:
        try:
            data, src = s.recvfrom(2048)
            client = data.split(b" ", 1)[0].decode(errors="replace")
            by_src = seen.setdefault(client, {})
            key = f"{src[0]}:{src[1]}"
            by_src[key] = by_src.get(key, 0) + 1
        except socket.timeout:
            pass
        if time.monotonic() - last_write >= 1.0:
            last_write = time.monotonic()
            lines = []
            for client in sorted(seen):
                n = sum(seen[client].values())
                lines.append(f"{client} received {n} from {' '.join(sorted(seen[client]))}\n")
            with open(outfile + ".tmp", "w") as f:
                f.writelines(lines)
            os.replace(outfile + ".tmp", outfile)


def main():
    if len(sys.argv) == 6 and sys.argv[1] == "send":
        send(sys.argv[2], int(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5]))
    elif len(sys.argv) == 6 and sys.argv[1] == "sink":
        sink(sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), sys.argv[5])
    else:
        sys.exit(__doc__)


if __name__ == "__main__":
    main()

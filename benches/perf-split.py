#!/usr/bin/env python3
"""Where the CPU time of the tunnel path goes, from a profile written by `RUT_BENCH_PERF=1 make bench`.

    python3 benches/perf-split.py target/release/bench-logs/perf-16x8-64B.data

For each process (the bench harness, the relay, the inside agent, as named in the FILE.pids the bench writes
beside it): its share of the CPU samples, and each sample placed by its call stack: in user space, in a system
call (the first __x64_sys_* frame; "switching out" when __schedule is on the stack too: the thread's own cost of
going to sleep or being switched; the cost of waking a thread is in the waker's send), or elsewhere in the
kernel. On loopback a send does the
receiver's work as well (the kernel delivers the datagram to the receiving socket and wakes its reader inside
the sender's call), so sendmmsg/sendto carry most of each hop.
"""
import collections
import re
import subprocess
import sys


def samples(path):
    out = subprocess.run(
        ["perf", "script", "-i", path, "-F", "pid,tid,comm,ip,sym,dso"],
        capture_output=True, text=True, check=True,
    ).stdout
    for block in out.split("\n\n"):
        lines = [l for l in block.strip().split("\n") if l.strip()]
        head = re.match(r"\s*(\S.*?)\s+(\d+)/(\d+)", lines[0]) if lines else None
        if head:
            frames = [l.split(None, 1)[1] if len(l.split(None, 1)) > 1 else "" for l in lines[1:]]
            yield head.group(1), head.group(2), frames


def place(frames):
    if not frames or "kernel" not in frames[0]:
        return "user"
    call = next((m.group(1) for f in frames for m in [re.match(r"__(?:x64|se|do)_sys_(\w+)", f)] if m), None)
    if call and any(f.startswith("__schedule") for f in frames):
        return call + " (switching out)"
    return call or "kernel, outside a system call"


def main(path):
    per = collections.defaultdict(collections.Counter)
    comms = collections.defaultdict(set)
    for comm, pid, frames in samples(path):
        comms[pid].add(comm)
        per[pid][place(frames)] += 1
    total = sum(sum(c.values()) for c in per.values()) or 1

    roles = {}
    try:
        with open(path + ".pids") as f:
            roles = dict(line.split() for line in f if line.strip())
    except OSError:
        pass

    def name(pid):
        if pid in roles:
            return roles[pid]
        # Without the .pids file, a guess: the inside's tunnel threads are named tunnel-N.
        if any(re.fullmatch(r"tunnel-\d{1,7}", c) for c in comms[pid]):
            return "inside"
        if any(c.startswith("reverse-udp") for c in comms[pid]):
            return "relay"
        return "harness"

    for pid, c in sorted(per.items(), key=lambda kv: -sum(kv[1].values())):
        n = sum(c.values())
        if n >= total / 100:
            parts = ", ".join(f"{k} {v * 100 / n:.0f}%" for k, v in c.most_common(8))
            print(f"{name(pid):8s} {n * 100 / total:4.1f}% of samples: {parts}")


if __name__ == "__main__":
    if len(sys.argv) != 2:
        sys.exit("usage: perf-split.py PERF_DATA")
    main(sys.argv[1])

#!/usr/bin/env python3
"""10 KB write + fdatasync, 2,000 in a row, into a file that grows as written and into one
zero-filled ahead (4 KiB zero writes, as the LogStore's WAL does, and 1 MiB ones): p50 / p99
in ms, bytes counted by /proc/self/io and bytes the device wrote (/sys/block/DEV/stat) per
byte synced. Usage: scripts/fsync-probe.py [DIR] [DEVICE] (defaults: . and vda). Used for the
README's "Preallocated log segments"."""
import os, sys, time

DIR = sys.argv[1] if len(sys.argv) > 1 else "."
DEV = sys.argv[2] if len(sys.argv) > 2 else "vda"


def device_bytes():
    try:
        return int(open(f"/sys/block/{DEV}/stat").read().split()[6]) * 512
    except OSError:
        return 0


def accounted_bytes():
    for line in open("/proc/self/io"):
        if line.startswith("write_bytes"):
            return int(line.split()[1])
    return 0


def run(zero_write, n=2000, size=10240):
    path = os.path.join(DIR, "fsync-probe.dat")
    fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_TRUNC)
    try:
        if zero_write:
            zeros = b"\0" * zero_write
            for _ in range((n * size + (1 << 20)) // zero_write + 1):
                os.write(fd, zeros)
            os.fdatasync(fd)
        a0, d0 = accounted_bytes(), device_bytes()
        buf, times = os.urandom(size), []
        for i in range(n):
            t = time.perf_counter()
            os.pwrite(fd, buf, i * size)
            os.fdatasync(fd)
            times.append((time.perf_counter() - t) * 1000)
        a1, d1 = accounted_bytes(), device_bytes()
    finally:
        os.close(fd)
        os.unlink(path)
    times.sort()
    return (times[len(times) // 2], times[int(len(times) * 0.99)],
            (a1 - a0) / (n * size), (d1 - d0) / (n * size))


for name, zero_write in [("grows as written", 0), ("zero-filled, 4 KiB writes", 4096),
                         ("zero-filled, 1 MiB writes", 1 << 20)]:
    p50, p99, acct, dev = run(zero_write)
    print(f"{name:28} p50 {p50:.3f} ms  p99 {p99:.3f} ms  "
          f"/proc/self/io {acct:.2f}x  device {dev:.2f}x")

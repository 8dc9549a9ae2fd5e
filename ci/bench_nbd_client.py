#!/usr/bin/python3
"""An NBD write client for ci/bench.py's FUA and FLUSH figures: keeps QD writes in flight for a
fixed time, each plain, with FUA, or followed by a FLUSH before its slot is reused, and prints
one JSON line {ios, seconds, latencies_us}. libnbd's Python binding (Debian's python3-libnbd),
so it runs under the system python, not the repository's .venv.

Usage: bench_nbd_client.py URI MODE(plain|fua|flush) QD IO_BYTES SPAN_BYTES SECONDS [STEP [MAX]]
Offsets walk the span sequentially, STEP bytes apart (default IO_BYTES), wrapping at its end;
at most MAX writes (default: no limit) within SECONDS.
"""

import json
import sys
import time

import nbd


def main():
    uri, mode, qd, io_bytes, span_bytes, seconds = sys.argv[1:7]
    qd, io_bytes, span_bytes, seconds = int(qd), int(io_bytes), int(span_bytes), float(seconds)
    step = int(sys.argv[7]) if len(sys.argv) > 7 else io_bytes
    max_ios = int(sys.argv[8]) if len(sys.argv) > 8 else None
    if mode not in ("plain", "fua", "flush"):
        sys.exit(f"unknown mode {mode}")
    handle = nbd.NBD()
    handle.connect_uri(uri)
    if mode == "fua" and not handle.can_fua():
        sys.exit("the export does not offer FUA")
    if mode == "flush" and not handle.can_flush():
        sys.exit("the export does not offer FLUSH")
    buffers = [nbd.Buffer(io_bytes) for _ in range(qd)]
    flags = nbd.CMD_FLAG_FUA if mode == "fua" else 0
    # Per slot: ("write" | "flush", cookie, started_ns) while busy.
    slots = [None] * qd
    next_offset = 0
    issued = 0
    ios = 0
    latencies_us = []
    deadline = time.monotonic() + seconds
    started = time.monotonic()

    def issue_write(slot):
        nonlocal next_offset, issued
        if max_ios is not None and issued >= max_ios:
            return
        cookie = handle.aio_pwrite(buffers[slot], next_offset, flags=flags)
        slots[slot] = ("write", cookie, time.monotonic_ns())
        issued += 1
        next_offset += step
        if next_offset + io_bytes > span_bytes:
            next_offset = 0

    for slot in range(qd):
        issue_write(slot)
    while any(slots):
        handle.poll(-1)
        now = time.monotonic()
        for slot, busy in enumerate(slots):
            if busy is None or not handle.aio_command_completed(busy[1]):
                continue
            stage, _, began_ns = busy
            if stage == "write" and mode == "flush":
                slots[slot] = ("flush", handle.aio_flush(), began_ns)
                continue
            ios += 1
            latencies_us.append((time.monotonic_ns() - began_ns) / 1000.0)
            slots[slot] = None
            if now < deadline:
                issue_write(slot)
    elapsed = time.monotonic() - started
    handle.shutdown()
    print(json.dumps({"ios": ios, "seconds": elapsed, "latencies_us": latencies_us}))


if __name__ == "__main__":
    main()

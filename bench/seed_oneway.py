#!/usr/bin/env python3
"""OUR RECONSTRUCTION of the seed's one-way program, for the benchmark only.

The original Python program is not available; its published description (seed.md, beside the
project's SPEC.md) describes it: a one-way mirror that decides whether a file
changed by comparing the SHA-256 of the source file and of its backup, computed with hashlib in
4 KiB reads (its `file_checksum`, quoted verbatim below), at every pass, with no cache; every
operation logged to the console and a log file. What the text does not say (how files are
copied and deleted) is filled in with what such a program most plausibly did: os.walk,
shutil.copy2 (content, permission bits and file mtime; directory mtimes are not carried),
os.remove / os.rmdir of what the source no longer has.

It exists so that the benchmark can show how far the Rust port is from its starting point.
`--once` (one pass, then exit) is our addition; the seed only ran at an interval.

    seed_oneway.py SOURCE BACKUP [--interval S] [--log FILE] [--once]
"""

import argparse
import hashlib
import logging
import os
import shutil
import sys
import time


def file_checksum(file):  # verbatim from the seed's description
    file_hash = hashlib.sha256()
    with open(file, "rb") as f:
        for chunk in iter(lambda: f.read(4096), b""):
            file_hash.update(chunk)
    return file_hash.hexdigest()


def sync(source, backup, log):
    ops = 0
    for root, dirs, files in os.walk(source):
        rel = os.path.relpath(root, source)
        broot = os.path.normpath(os.path.join(backup, rel))
        if not os.path.isdir(broot):
            os.makedirs(broot)
            log.info(f"Created directory {broot}")
            ops += 1
        for name in files:
            s, b = os.path.join(root, name), os.path.join(broot, name)
            # The seed's rule: copy when missing or when the SHA-256 differs; both files are
            # read in full at every pass.
            if not os.path.exists(b) or file_checksum(s) != file_checksum(b):
                shutil.copy2(s, b)
                log.info(f"Copied {s} to {b}")
                ops += 1
    for root, dirs, files in os.walk(backup, topdown=False):
        rel = os.path.relpath(root, backup)
        sroot = os.path.normpath(os.path.join(source, rel))
        for name in files:
            if not os.path.exists(os.path.join(sroot, name)):
                os.remove(os.path.join(root, name))
                log.info(f"Removed file {os.path.join(root, name)}")
                ops += 1
        for name in dirs:
            if not os.path.exists(os.path.join(sroot, name)):
                os.rmdir(os.path.join(root, name))  # emptied above: the walk is bottom-up
                log.info(f"Removed directory {os.path.join(root, name)}")
                ops += 1
    return ops


def main():
    p = argparse.ArgumentParser(description="reconstruction of the seed's one-way sync")
    p.add_argument("source")
    p.add_argument("backup")
    p.add_argument("--interval", type=int, default=60)
    p.add_argument("--log", default="oneway.log")
    p.add_argument("--once", action="store_true", help="one pass, then exit (benchmark only)")
    a = p.parse_args()
    log = logging.getLogger("oneway")
    log.setLevel(logging.INFO)
    fmt = logging.Formatter("[ONEWAY][%(asctime)s - %(levelname)s] - %(message)s", "%Y-%m-%d %H:%M:%S")
    for h in (logging.FileHandler(a.log), logging.StreamHandler()):
        h.setFormatter(fmt)
        log.addHandler(h)
    total = 0
    try:
        while True:
            total += sync(a.source, a.backup, log)
            if a.once:
                break
            time.sleep(a.interval)
    except KeyboardInterrupt:
        pass
    log.info(f"Total number of operations: {total}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

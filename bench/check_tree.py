#!/usr/bin/env python3
"""Checks that each ACTUAL tree is an exact copy of EXPECTED: the same paths, the same kinds
(file, directory, symlink), contents, permission bits and modification times (nanoseconds).
Exits 1 and names the first differences otherwise. Symlinks are never followed. The two root
directories' own mode and mtime are not compared.

    check_tree.py [--no-dir-mtime] [--mtime-slack-ns N] EXPECTED ACTUAL...

--no-dir-mtime: directory mtimes are not compared (the seed and Unison do not carry them).
--mtime-slack-ns N: mtimes may differ by up to N ns (Unison keeps times as floating-point
seconds: it lands within 2 us of the original, not on it).
"""

import argparse
import os
import stat
import sys

CHUNK = 1 << 20


def walk(root):
    """rel -> lstat result, for everything under root. The roots' own mode and times are not
    compared: the user picks the roots (BACKUP may be a mount point), oneway does not set them."""
    out = {}
    stack = [""]
    while stack:
        rel = stack.pop()
        with os.scandir(os.path.join(root, rel) if rel else root) as it:
            for e in it:
                r = f"{rel}/{e.name}" if rel else e.name
                st = e.stat(follow_symlinks=False)
                out[r] = st
                if stat.S_ISDIR(st.st_mode):
                    stack.append(r)
    return out


def same_content(a, b):
    with open(a, "rb") as fa, open(b, "rb") as fb:
        while True:
            x, y = fa.read(CHUNK), fb.read(CHUNK)
            if x != y:
                return False
            if not x:
                return True


def compare(expected, actual, dir_mtime, slack_ns):
    want, got = walk(expected), walk(actual)
    diffs = []
    for rel in sorted(set(want) - set(got)):
        diffs.append(f"missing: {rel}")
    for rel in sorted(set(got) - set(want)):
        diffs.append(f"extra: {rel}")
    for rel in sorted(set(want) & set(got)):
        w, g = want[rel], got[rel]
        if stat.S_IFMT(w.st_mode) != stat.S_IFMT(g.st_mode):
            diffs.append(f"kind differs: {rel}")
            continue
        if stat.S_IMODE(w.st_mode) != stat.S_IMODE(g.st_mode):
            diffs.append(f"mode differs: {rel} {oct(w.st_mode)} vs {oct(g.st_mode)}")
        is_dir = stat.S_ISDIR(w.st_mode)
        off = abs(w.st_mtime_ns - g.st_mtime_ns)
        if (dir_mtime or not is_dir) and not stat.S_ISLNK(w.st_mode) and off > slack_ns:
            diffs.append(f"mtime differs: {rel} {w.st_mtime_ns} vs {g.st_mtime_ns}")
        wp, gp = os.path.join(expected, rel), os.path.join(actual, rel)
        if stat.S_ISLNK(w.st_mode):
            if os.readlink(wp) != os.readlink(gp):
                diffs.append(f"link target differs: {rel}")
        elif stat.S_ISREG(w.st_mode):
            if w.st_size != g.st_size or not same_content(wp, gp):
                diffs.append(f"content differs: {rel}")
    return len(want), diffs


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--no-dir-mtime", action="store_true")
    p.add_argument("--mtime-slack-ns", type=int, default=0)
    p.add_argument("expected")
    p.add_argument("actual", nargs="+")
    a = p.parse_args()
    bad = False
    for actual in a.actual:
        n, diffs = compare(a.expected, actual, not a.no_dir_mtime, a.mtime_slack_ns)
        if diffs:
            bad = True
            print(f"CHECK FAILED: {actual} is not a copy of {a.expected} ({len(diffs)} differences):",
                  file=sys.stderr)
            for d in diffs[:15]:
                print(f"  {d}", file=sys.stderr)
        else:
            print(f"  ok: {actual} == {a.expected} ({n} entries)")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())

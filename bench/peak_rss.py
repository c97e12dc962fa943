#!/usr/bin/env python3
"""Peak memory of a command and of all its processes.

GNU time's %M (wait4's ru_maxrss) is the peak RSS of the largest single process of the tree.
rsync copying locally runs as three processes (sender, receiver, generator), each holding the
file list, so %M undercounts it; this script also samples /proc every few milliseconds and
adds up each process's own high-water mark (VmHWM), which bounds what the tool held at once.
Not used for timing: the sampling costs CPU.

    peak_rss.py CMD [ARGS...]     prints: max_single_kib=N sum_of_peaks_kib=N processes=N
"""

import os
import subprocess
import sys
import time


def children_map():
    kids = {}
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                ppid = int(f.read().rsplit(")", 1)[1].split()[1])
        except (OSError, ValueError, IndexError):
            continue
        kids.setdefault(ppid, []).append(int(d))
    return kids


def hwm_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def main():
    proc = subprocess.Popen(sys.argv[1:], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    peaks = {}
    while True:
        kids = children_map()
        tree, todo = [], [proc.pid]
        while todo:
            p = todo.pop()
            tree.append(p)
            todo.extend(kids.get(p, []))
        for p in tree:
            h = hwm_kib(p)
            if h is not None:
                peaks[p] = max(peaks.get(p, 0), h)
        pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
        if pid:
            break
        time.sleep(0.005)
    if os.waitstatus_to_exitcode(status) != 0:
        print(f"command failed: {sys.argv[1:]}", file=sys.stderr)
        return 1
    # Not wait4's ru_maxrss: the child was forked from this Python process, and ru_maxrss keeps
    # the high-water mark it had before exec (Python's own size). VmHWM starts afresh at exec.
    del usage
    print(f"max_single_kib={max(peaks.values(), default=0)} sum_of_peaks_kib={sum(peaks.values())} "
          f"processes={len(peaks)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

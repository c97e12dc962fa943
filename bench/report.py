#!/usr/bin/env python3
"""Turns one benchmark run's raw results (hyperfine JSON, GNU time peaks, openssl speed) into
the markdown report. Called by run.sh: report.py RAW_DIR > results/latest.md"""

import json
import os
import re
import statistics
import sys

RAW = sys.argv[1]
META = dict(
    line.rstrip("\n").split("=", 1)
    for line in open(os.path.join(RAW, "meta.env"))
    if "=" in line
)
QUICK = META["mode"] == "quick"
TWOWAY = bool(META.get("twoway"))
NPROC = int(META["nproc"])


def load(scen):
    path = os.path.join(RAW, f"{scen}.json")
    if not os.path.exists(path):
        return None
    return {r["command"]: r for r in json.load(open(path))["results"]}


def median(scen, tool):
    r = (load(scen) or {}).get(tool)
    return None if r is None else statistics.median(r["times"])


def gnu_time_lines(scen, tool):
    """GNU time's lines for the tool's runs in this scenario, warm-up first: [KiB, user, sys]."""
    path = os.path.join(RAW, "rss", f"{scen}-{tool}.txt")
    if not os.path.exists(path):
        return []
    lines = []
    for line in open(path):
        fields = line.split()
        # A line that is not three numbers is what GNU time says of a command that failed.
        try:
            lines.append([int(fields[0]), float(fields[1]), float(fields[2])])
        except (IndexError, ValueError):
            continue
    return lines


def peak_rss_mib(scen, tool):
    """Largest GNU time %M (KiB) over the tool's runs in this scenario, in MiB."""
    vals = [kib for kib, _, _ in gnu_time_lines(scen, tool)]
    return max(vals) / 1024 if vals else None


def cpu_seconds(scen, tool):
    """Median user + system CPU time of the tool's timed runs (the warm-up left out)."""
    runs = gnu_time_lines(scen, tool)[1:]
    return statistics.median(u + s for _, u, s in runs) if runs else None


def missing(scen):
    if scen.startswith("tw-") and not TWOWAY:
        return "not built yet"
    if scen.startswith(("many", "flat")) and QUICK:
        return "skipped (--quick)"
    if scen.endswith("-cold"):
        return "skipped (quick, or caches cannot be dropped)"
    return "missing"


# How the tables name a tool, where its id alone would not say which command line it ran (the
# command lines are in bench/lib.sh's tool_cmd; the report's header gives them in full).
LABEL = {
    "rsync-full": "rsync -aHAXS",  # rsync -aHAXS --numeric-ids --delete: the targets' rsync
    "rsync": "rsync -a",  # rsync -a --delete: carries less, no target
    "rsync-durable": "rsync -a + syncfs",
}


def label(tool):
    return LABEL.get(tool, tool)


def verdict(ratio, limit, at_least=False):
    ok = ratio >= limit if at_least else ratio <= limit
    return "yes" if ok else "**no**"


rows = []


def time_row(desc, scen, ours, theirs, limit):
    a, b = median(scen, ours), median(scen, theirs)
    if a is None or b is None:
        rows.append((desc, missing(scen), "", "", "", ""))
        return
    ratio = a / b
    target = f"≤ {limit}" if limit else "–"
    rows.append((desc, f"{label(ours)} {a:.3f} s", f"{label(theirs)} {b:.3f} s", f"{ratio:.2f}",
                 target, verdict(ratio, limit) if limit else "–"))


def openssl_mbps(name):
    """The sha256 figure of an `openssl speed` output, in MB/s (it prints 1000s of bytes/s)."""
    text = open(os.path.join(RAW, name)).read()
    return float(re.search(r"^sha256\s.*?([\d.]+)k\s*$", text, re.M).group(1)) / 1000


def sha_throughput():
    """(MB/s per core with all threads, MB/s with one thread, openssl MB/s, bytes) or None."""
    try:
        ossl = openssl_mbps("openssl.txt")
        per_file = int(META["large_bytes"]) / int(re.search(r"(\d+) x", META["large"]).group(1))
        out = []
        for tool, cores in (("oneway-checksum", NPROC), ("oneway-checksum-1thread", 1)):
            hashed = int(open(os.path.join(RAW, f"{tool}.hashed")).read().strip())
            out.append(hashed * per_file / 1e6 / median("large-checksum", tool) / cores)
        return out[0], out[1], ossl, hashed * per_file
    except (OSError, AttributeError, ValueError, TypeError):
        return None


# --- the targets of issue 6 ----------------------------------------------------------------------
# Since issue 21 every oneway target is judged against `rsync -aHAXS --numeric-ids` (rsync-full),
# the flags that do the work oneway does; the `rsync -a` rows stay beside them, without a target.
FULL = "against `rsync -aHAXS --numeric-ids`"
LESS = "against `rsync -a` (carries less)"
time_row(f"small: first copy into an empty directory, {FULL}", "small-first", "oneway",
         "rsync-full", 0.6)
time_row(f"small: first copy, {LESS}", "small-first", "oneway", "rsync", None)
time_row("small: first copy with the progress line drawn, against without", "small-first",
         "oneway-progress", "oneway", 1.02)
time_row("small: first copy, against the `cp -a` floor", "small-first", "oneway", "cp", None)
time_row("small: first copy, against `rsync -a` + syncfs (both durable)", "small-first", "oneway",
         "rsync-durable", None)
time_row(f"small: nothing changed, {FULL}", "small-nochange", "oneway", "rsync-full", 0.5)
time_row(f"small: nothing changed, {LESS}", "small-nochange", "oneway", "rsync", None)
time_row("small: nothing changed, against the seed (our Python reconstruction)", "small-nochange",
         "oneway", "seed", 0.1)
time_row("small: first copy, against the seed (our Python reconstruction)", "small-first",
         "oneway", "seed", None)
time_row(f"small: 1% of files changed, added or deleted, {FULL}", "small-1pct", "oneway",
         "rsync-full", 0.5)
time_row(f"small: 1% of files changed, added or deleted, {LESS}", "small-1pct", "oneway", "rsync",
         None)
time_row(f"small: nothing changed, **cold** caches, {FULL}", "small-nochange-cold", "oneway",
         "rsync-full", None)
time_row(f"small: nothing changed, **cold** caches, {LESS}", "small-nochange-cold", "oneway",
         "rsync", None)
time_row(f"large: first copy, {FULL}", "large-first", "oneway", "rsync-full", 0.6)
time_row(f"large: first copy, {LESS}", "large-first", "oneway", "rsync", None)
time_row("large: first copy, against the `cp -a` floor", "large-first", "oneway", "cp", None)
time_row("large: first copy, against `rsync -a` + syncfs (both durable)", "large-first", "oneway",
         "rsync-durable", None)
time_row(f"large: 64 KiB changed inside one file, {FULL}", "large-64k", "oneway", "rsync-full",
         0.5)
time_row(f"large: 64 KiB changed inside one file, {LESS}", "large-64k", "oneway", "rsync", None)
time_row("large: 64 KiB changed, against `rsync -a` + syncfs (both durable)", "large-64k",
         "oneway", "rsync-durable", None)
sha = sha_throughput()
if sha:
    per_core, one, ossl, _ = sha
    rows.append(("large: `oneway --checksum`, nothing changed: SHA-256 MB/s per core "
                 f"({NPROC} threads)", f"oneway {per_core:,.0f} MB/s", f"openssl {ossl:,.0f} MB/s",
                 f"{per_core / ossl:.2f}", "≥ 0.9", verdict(per_core / ossl, 0.9, at_least=True)))
    rows.append(("large: same, one thread (`RAYON_NUM_THREADS=1`)", f"oneway {one:,.0f} MB/s",
                 f"openssl {ossl:,.0f} MB/s", f"{one / ossl:.2f}", "–", "–"))
else:
    rows.append(("large: `oneway --checksum` SHA-256 throughput", "missing", "", "", "", ""))
time_row(f"many (200,000 files): nothing changed, time, {FULL}", "many-nochange", "oneway",
         "rsync-full", 0.5)
time_row(f"many (200,000 files): nothing changed, time, {LESS}", "many-nochange", "oneway",
         "rsync", None)


def rss_row(desc, theirs, limit):
    a, b = peak_rss_mib("many-nochange", "oneway"), peak_rss_mib("many-nochange", theirs)
    if a and b:
        rows.append((f"many (200,000 files): nothing changed, peak RSS (GNU time %M), {desc}",
                     f"oneway {a:.1f} MiB", f"{label(theirs)} {b:.1f} MiB", f"{a / b:.2f}",
                     f"≤ {limit}" if limit else "–", verdict(a / b, limit) if limit else "–"))
    else:
        rows.append((f"many (200,000 files): nothing changed, peak RSS, {desc}", missing("many"),
                     "", "", "", ""))


rss_row(FULL, "rsync-full", 1.5)
rss_row(LESS, "rsync", None)


def sum_of_peaks_mib(path):
    """The sum of each process's peak RSS that peak_rss.py wrote to `path`, or None."""
    path = os.path.join(RAW, path)
    if not os.path.exists(path):
        return None
    kv = dict(x.split("=") for x in open(path).read().split())
    return int(kv["sum_of_peaks_kib"]) / 1024


for theirs, desc in (("rsync-full", FULL), ("rsync", LESS)):
    a = sum_of_peaks_mib("many-first-procs-oneway.txt")
    b = sum_of_peaks_mib(f"many-first-procs-{theirs}.txt")
    if a and b:
        rows.append(("many (200,000 files): first copy, peak RSS (sum of each process's peak, "
                     f"sampled; untimed), {desc}", f"oneway {a:.1f} MiB",
                     f"{label(theirs)} {b:.1f} MiB", f"{a / b:.2f}", "–", "–"))
time_row(f"flat (100,000 files in one directory): first copy, {FULL}", "flat-first", "oneway",
         "rsync-full", None)
time_row(f"flat (100,000 files in one directory): first copy, {LESS}", "flat-first", "oneway",
         "rsync", None)
time_row(f"flat (100,000 files in one directory): nothing changed, {FULL}", "flat-nochange",
         "oneway", "rsync-full", None)
time_row(f"flat (100,000 files in one directory): nothing changed, {LESS}", "flat-nochange",
         "oneway", "rsync", None)
time_row("two-way, small: first sync", "tw-first", "twoway", "unison", None)
time_row("two-way, small: nothing changed", "tw-nochange", "twoway", "unison", 0.5)
time_row("two-way, small: 1% changed on one side", "tw-1pct", "twoway", "unison", 0.5)
time_row("two-way, small: 1% changed on each side", "tw-both", "twoway", "unison", 0.5)

out = []
p = out.append
p(f"# Benchmark results ({META['mode']} run)\n")
p(f"Produced by `bench/run.sh{' --quick' if QUICK else ''}` on {META['date']}, "
  f"commit {META['commit']}; the whole run took {int(META['elapsed']) // 60} min "
  f"{int(META['elapsed']) % 60} s.\n")
p(f"- machine: {META['nproc']} cores ({META['cpu']}), {META['mem']} RAM, {META['kernel']}")
p(f"- file system: {META['fs']}")
p("- page cache: **warm**. Every scenario starts with one untimed warm-up run of each command "
  "(after its preparation step), and all data fit in RAM, so file reads come from the "
  "page cache. Writes are not waited for unless the tool asks (oneway flushes what it writes; "
  "rsync and cp do not); every preparation step ends with a `syncfs` of the bench file system, "
  "so no run pays for an earlier run's writeback. "
  + ("The row marked cold drops the page, dentry and inode caches before every run."
     if META.get("cold") == "yes" else "No cold-cache rows in this run."))
counts = {}
for scen in ("small-first", "small-nochange"):
    for r in (load(scen) or {}).values():
        counts[scen] = len(r["times"])
p(f"- timing: {counts.get('small-first', '?')} timed runs per measurement "
  f"({counts.get('small-nochange', '?')} for the passes with nothing changed), medians in "
  "seconds. The tools take turns: each round runs every command of a scenario once, timed by "
  "hyperfine, in an order rotated from round to round, so that the machine's drift during a "
  "scenario falls on all tools alike; the warm-up round is not counted. Each command runs "
  "under GNU time for its peak RSS.")
p(f"- corpora: small = 20,000 files of 1–16 KiB in 1,000 directories (~165 MiB); "
  f"large = {META['large']}; many = 200,000 files of 256 B–4 KiB in 2,000 directories; "
  f"flat = 100,000 files of 256 B–4 KiB in one directory"
  f"{' (many and flat not in quick runs)' if QUICK else ''}. Generated by "
  "`bench/gen_corpus.py` (seeded).")
p("- rsync, two ways (since issue 21). **`rsync -aHAXS --numeric-ids --delete SRC/ DST/`** "
  "(rows \"against `rsync -aHAXS --numeric-ids`\", tool `rsync-full`) does the work oneway does: "
  "owners and groups (run as root, by number), hard links, ACLs, extended attributes, sparse "
  "files, special files; every oneway target is judged against it. **`rsync -a --delete SRC/ "
  "DST/`** (rows \"against `rsync -a` (carries less)\", tool `rsync`; the target rows until "
  "issue 21): run as root it carries owners, groups and special files too, but not hard links, "
  "ACLs, extended attributes or holes; its rows have no target. `rsync -a` + syncfs "
  "(`rsync-durable`) is `rsync -a --delete` then `sync -f DST`.")
p(f"- versions: {META['versions']}")
p(f"- load average: {META.get('load', '?')} (anything else running skews the times)")
p("\nOnly the ratios mean something: absolute times vary between machines and runs.\n")
p("| scenario | ours | theirs | ours / theirs | target | met? |")
p("|---|---|---|---|---|---|")
for r in rows:
    p("| " + " | ".join(r) + " |")

p("\n## Every measurement\n")
p("| scenario | tool | median (s) | min (s) | max (s) | CPU, user + system (s, median) | "
  "peak RSS (MiB, largest process) |")
p("|---|---|---|---|---|---|---|")
for scen in ["small-first", "small-nochange", "small-1pct", "small-nochange-cold", "tw-first",
             "tw-nochange", "tw-1pct", "tw-both", "large-first", "large-64k", "large-checksum",
             "flat-first", "flat-nochange", "many-nochange"]:
    for tool, r in (load(scen) or {}).items():
        rss, cpu = peak_rss_mib(scen, tool), cpu_seconds(scen, tool)
        p(f"| {scen} | {label(tool)} | {statistics.median(r['times']):.3f} | {min(r['times']):.3f} | "
          f"{max(r['times']):.3f} | {'' if cpu is None else f'{cpu:.2f}'} | "
          f"{'' if rss is None else f'{rss:.1f}'} |")

p("\n## Notes\n")
if sha:
    per_core, one, ossl, nbytes = sha
    p(f"- `--checksum` pass: {nbytes / 2**30:.2f} GiB hashed per pass (every file of SOURCE and "
      f"of BACKUP); scaling from 1 to {NPROC} threads: "
      f"{median('large-checksum', 'oneway-checksum-1thread') / median('large-checksum', 'oneway-checksum'):.2f}×. "
      "`openssl speed -evp sha256 -bytes 16384 -seconds 3` measures one core.")
    try:
        multi = openssl_mbps("openssl-multi.txt")
        total = per_core * NPROC
        p(f"- the same openssl on all {NPROC} cores (`-multi {NPROC}`): {multi:,.0f} MB/s "
          f"({multi / ossl:.2f}× one core); oneway with {NPROC} threads: {total:,.0f} MB/s, "
          f"{total / multi:.2f} of that.")
    except (OSError, AttributeError):
        pass
for tool in ("oneway", "rsync-full", "rsync"):
    path = os.path.join(RAW, f"many-procs-{tool}.txt")
    if os.path.exists(path):
        kv = dict(x.split("=") for x in open(path).read().split())
        p(f"- 200,000 files, nothing changed, {label(tool)}: {kv['processes']} process(es); "
          f"largest {int(kv['max_single_kib']) / 1024:.1f} MiB, sum of each process's peak "
          f"{int(kv['sum_of_peaks_kib']) / 1024:.1f} MiB (rsync copies locally with three "
          "processes; GNU time's %M counts only the largest).")
p("- The seed is our reconstruction (`bench/seed_oneway.py`) from its description: it hashes "
  "both sides of every file at every pass, with Python's hashlib; it does not carry directory "
  "times.")
p("- `rsync -a` + syncfs (`rsync-durable`): `rsync -a --delete` followed by `sync -f` of the "
  "destination, not a target row: oneway makes what it wrote durable before it exits "
  "(SPEC §7), rsync and cp do not, which weighs most where much is written.")
p("- The generated corpora hold no hard links, ACLs, extended attributes or holes: what "
  "`rsync -aHAXS --numeric-ids` does there beyond `rsync -a` is look for them (oneway's passes "
  "look for them too); what carrying them costs is not measured here.")
p("- Unison runs as `unison -batch -auto -times` (`-times` so that it carries modification "
  "times, as twoway does), with its archive in a directory of its own (`UNISON=`); its file "
  "times are checked to within 2 µs (it stores them as floating-point seconds).")
if not TWOWAY:
    p("- twoway: not built yet, so the two-way rows are empty; they run once "
      "`target/release/twoway` exists.")
print("\n".join(out))

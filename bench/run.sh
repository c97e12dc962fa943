#!/usr/bin/env bash
# The benchmark of issue 6 (SPEC §9): oneway against rsync (and twoway against Unison, once
# twoway is built) on generated corpora, in one run, on a file system of its own.
#
# Two rsyncs (since issue 21): `rsync -aHAXS --numeric-ids --delete` (tool rsync-full), which does
# the work oneway does (owners and groups as root, hard links, ACLs, extended attributes, sparse
# files, special files) and against which the targets are judged; and `rsync -a --delete` (tool
# rsync), which carries less, in rows without a target. bench/lib.sh has every command line.
#
#   bench/run.sh            full run (~10-15 min on 2 cores): results in bench/results/latest.md
#   bench/run.sh --quick    smoke run: large corpus 4 x 64 MiB, no 200,000-file or flat profile, 3 runs
#                           per measurement; results in bench/results/latest-quick.md
#                           (BENCH_QUICK=1 does the same)
#
# Run as root (as in CI): it installs packages with apt-get, loop-mounts an image and drops
# caches. Environment: BENCH_RUNS (timed runs per measurement, default 5, quick 3),
# BENCH_IMAGE_DIR (where the 16 GiB image goes, 4 GiB with --quick; default /var/tmp),
# TWOWAY_BIN (a twoway binary to time instead of target/release/twoway).
#
# Only ratios measured in one run count: absolute times vary between machines and runs.
set -euo pipefail

die() { echo "bench: $*" >&2; exit 1; }
say() { printf '\n== %s ==\n' "$*"; }

QUICK=${BENCH_QUICK:-0}
for arg in "$@"; do
    case $arg in
        --quick) QUICK=1 ;;
        -h | --help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
        *) die "unknown argument $arg (try --help)" ;;
    esac
done
if [[ $QUICK == 1 ]]; then
    RUNS=${BENCH_RUNS:-3} LARGE_COUNT=4 LARGE_MIB=64 MODE=quick IMAGE_GIB=4
else
    RUNS=${BENCH_RUNS:-5} LARGE_COUNT=8 LARGE_MIB=256 MODE=full IMAGE_GIB=16
fi
[[ $EUID -eq 0 ]] || die "run as root: it mounts a file system, drops caches and may apt-get install"

BENCH_DIR=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
REPO=$(dirname "$BENCH_DIR")
RESULTS=$BENCH_DIR/results
# The report, and the raw data it is made from (hyperfine JSON, peak RSS per run, openssl
# output). Raw data is collected on the bench file system and copied here only when the run
# succeeds, so a failed run leaves the last good results in place.
if [[ $MODE == full ]]; then
    REPORT=$RESULTS/latest.md KEEP_RAW=$RESULTS/raw
else
    REPORT=$RESULTS/latest-quick.md KEEP_RAW=$RESULTS/raw-quick
fi
STARTED=$(date +%s)
# Other work on the machine skews the times (two cores here): recorded, not prevented.
LOAD_START=$(cut -d' ' -f1-3 /proc/loadavg)
if awk -v l="${LOAD_START%% *}" -v n="$(nproc)" 'BEGIN {exit !(l > n / 2)}'; then
    echo "bench: warning: load average $LOAD_START on $(nproc) cores: other work will skew the times" >&2
fi

# --- Tools -------------------------------------------------------------------------------------
missing=()
for pair in rsync:rsync unison:unison hyperfine:hyperfine /usr/bin/time:time; do
    [[ -x $(command -v "${pair%%:*}" || true) ]] || missing+=("${pair##*:}")
done
if ((${#missing[@]})); then
    say "installing ${missing[*]}"
    apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${missing[@]}" >/dev/null
fi
for cmd in python3 openssl mkfs.ext4 cargo; do
    command -v "$cmd" >/dev/null || die "$cmd is needed"
done

say "building (cargo build --release)"
(cd "$REPO" && cargo build --release)
TARGET=${CARGO_TARGET_DIR:-$REPO/target}
ONEWAY=$TARGET/release/oneway
TWOWAY=${TWOWAY_BIN:-$TARGET/release/twoway}
[[ -x $TWOWAY ]] || TWOWAY=""

# --- A file system of our own ------------------------------------------------------------------
# Not the root file system: on these machines it is ext4 without a journal, which is slow to
# reuse just-freed inodes, so deleting and recreating 20,000 files there runs 10-20x slower and
# measures the file system, not the tools. A fresh journaled ext4 on a loop-mounted image is
# what a user's disk looks like (see below); tmpfs is the fallback where loop devices are
# unavailable.
TMP=$(mktemp -d "${BENCH_IMAGE_DIR:-/var/tmp}/oneway-bench.XXXXXX")
MNT=$TMP/mnt
cleanup() {
    cd /
    if mountpoint -q "$MNT"; then
        umount "$MNT" 2>/dev/null || { sleep 2; umount "$MNT" 2>/dev/null; } || umount -l "$MNT"
    fi
    rm -rf "$TMP"
}
trap cleanup EXIT
trap 'exit 130' INT TERM
mkdir "$MNT"
# 16 GiB (4 for --quick): at its fullest (the large section: source and five copies) a full run
# holds ~12.5 GiB.
# Inode tables and journal are written now (lazy_*_init=0), not by a kernel thread later, during
# the timed runs.
#
# The image is a disk, as near as a loop device gets to one. Its blocks are written once (zeros)
# before mkfs, so that no timed write is the first into a hole of the image, which costs the
# host an allocation; and the loop device does direct I/O on the image, so that a page written
# to the bench file system goes to the host's disk as a real disk would take it, rather than
# being copied a second time into the host's page cache and written back from there by the
# host's file system. Either cost falls only on a tool that waits for its data to reach the
# disk (oneway does, SPEC section 7; rsync and cp do not), within its timed run. Measured on
# this machine (2026-12-02, the small first copy in the five-tool rotation): on a fresh sparse
# image with a buffered loop, oneway's rounds took 1.06-1.63 s and its kernel's writeback
# (the loop worker's copies) a quarter of both cores; rsync's took 1.84-2.15 s. Where the image
# cannot be filled (no room) or the loop cannot do direct I/O, the run goes on and the report
# says so. fallocate comes first because it fails at once where there is no room; dd then
# writes every block.
say "writing the $IMAGE_GIB GiB image"
if fallocate -l "${IMAGE_GIB}G" "$TMP/fs.img" 2>/dev/null &&
    dd if=/dev/zero of="$TMP/fs.img" bs=16M count=$((IMAGE_GIB * 64)) conv=notrunc,fsync status=none 2>/dev/null; then
    IMAGE="$IMAGE_GIB GiB image, every block written before mkfs,"
else
    echo "bench: cannot write a $IMAGE_GIB GiB image in $(dirname "$TMP") (room?); a sparse image instead" >&2
    rm -f "$TMP/fs.img"
    truncate -s "${IMAGE_GIB}G" "$TMP/fs.img"
    IMAGE="$IMAGE_GIB GiB sparse image (no room to write it whole)"
fi
if mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$TMP/fs.img" &&
    mount -o loop "$TMP/fs.img" "$MNT" 2>"$TMP/mount.err"; then
    rm -f "$TMP/mount.err"
    LOOP_DEV=$(findmnt -no SOURCE "$MNT")
    journal=$(dumpe2fs -h "$LOOP_DEV" 2>/dev/null | grep -c has_journal || true)
    ((journal)) || die "the bench file system has no journal"
    if losetup --direct-io=on "$LOOP_DEV" 2>/dev/null &&
        [[ $(cat "/sys/block/${LOOP_DEV#/dev/}/loop/dio" 2>/dev/null) == 1 ]]; then
        LOOP_IO="direct I/O"
    else
        LOOP_IO="buffered I/O (direct I/O refused here)"
    fi
    FS="ext4 with journal ($(findmnt -no OPTIONS "$MNT")) on a loop device ($LOOP_IO) backed by a $IMAGE in $(dirname "$TMP")"
else
    echo "bench: loop mount impossible ($(cat "$TMP/mount.err" 2>/dev/null)); falling back to tmpfs" >&2
    rm -f "$TMP/fs.img"
    mount -t tmpfs -o size=${IMAGE_GIB}g tmpfs "$MNT" || die "cannot mount tmpfs either"
    FS="tmpfs (a loop-mounted ext4 image could not be mounted here)"
fi
echo "file system: $FS"

export BENCH_DIR ONEWAY TWOWAY
export W=$MNT/w CORPUS=$MNT/w/corpus LOGS=$MNT/w/logs STATE=$MNT/w/state RAW=$MNT/w/raw
# oneway's hash cache lives on the bench file system, apart from the user's own.
export XDG_CACHE_HOME=$MNT/w/xdg-cache
# twoway's archives (its sync-state directory), on the bench file system too.
export XDG_STATE_HOME=$MNT/w/xdg-state
mkdir -p "$CORPUS" "$LOGS" "$STATE" "$XDG_CACHE_HOME"
mkdir -p "$RAW/rss"
source "$BENCH_DIR/lib.sh"

gen() { python3 "$BENCH_DIR/gen_corpus.py" "$@"; }
step() { q bash "$BENCH_DIR/step.sh" "$@"; }
check() { python3 "$BENCH_DIR/check_tree.py" "$@" || die "result tree check failed (see above)"; }

# Commands are queued with `add` and timed together by `hf`, in turns. Each command runs under
# GNU time (-f '%M %U %S': peak RSS of its largest process, and its user and system CPU time,
# one line per run appended to one file per scenario and tool); that costs about a millisecond
# per run, for every tool alike.
HF_NAMES=() HF_CMDS=() HF_PREPS=()
add() { # add SCENARIO TOOL SRC DST [PREPARE]
    HF_NAMES+=("$2")
    HF_CMDS+=("$(q /usr/bin/time -f '%M %U %S' -a -o "$RAW/rss/$1-$2.txt") $(tool_cmd "$2" "$3" "$4")")
    if (($# > 4)); then HF_PREPS+=("$5"); fi
}
# The tools take turns: a round times every queued command once (after its preparation step),
# in an order rotated from round to round, and round 0 is the warm-up, not kept. Timing one
# tool's runs after the other's would let the machine's drift during a sitting (large on these
# VMs) land on whichever tool ran then.
hf() { # hf SCENARIO [RUNS]: time the queued commands; one warm-up round, then RUNS timed rounds
    local runs=${2:-$RUNS} n=${#HF_CMDS[@]} r k i
    mkdir -p "$RAW/rounds"
    for ((r = 0; r <= runs; r++)); do
        local args=(-N --style none --runs 1 --export-json "$RAW/rounds/$1-$r.json")
        for ((k = 0; k < n; k++)); do
            i=$(((k + r) % n))
            args+=(-n "${HF_NAMES[$i]}" "${HF_CMDS[$i]}")
            if ((${#HF_PREPS[@]})); then args+=(--prepare "${HF_PREPS[$i]}"); fi
        done
        if ! hyperfine "${args[@]}"; then
            tail -40 "$RAW/step-errors.txt" >&2 2>/dev/null || true
            die "hyperfine failed in $1 (round $r)"
        fi
    done
    python3 "$BENCH_DIR/merge_rounds.py" "$RAW" "$1" "$runs"
    HF_NAMES=() HF_CMDS=() HF_PREPS=()
}

say "generating the small corpus"
gen small "$CORPUS/small"
SRC=$W/small-src
cp -a "$CORPUS/small" "$SRC"

# --- small: oneway vs both rsyncs, cp -a (the floor) and the seed -------------------------------
say "small: first copy into an empty directory"
for t in oneway oneway-progress rsync-full rsync cp seed rsync-durable; do
    add small-first "$t" "$SRC" "$W/small-$t" "$(step empty "$t" "$W/small-$t")"
done
hf small-first
check "$SRC" "$W/small-oneway" "$W/small-oneway-progress" "$W/small-rsync-full" "$W/small-rsync" \
    "$W/small-cp" "$W/small-rsync-durable"
rm -rf "$W/small-oneway-progress"
check --no-dir-mtime "$SRC" "$W/small-seed" # the seed never set directory times
rm -rf "$W/small-rsync-durable"

say "small: nothing changed"
# Each mirror is as its tool's last first copy left it; the warm-up pass settles caches.
for t in oneway rsync-full rsync seed; do add small-nochange "$t" "$SRC" "$W/small-$t"; done
# Passes with nothing to do are short and cheap to repeat: twice the runs, a steadier median.
hf small-nochange $((2 * RUNS))
check "$SRC" "$W/small-oneway" "$W/small-rsync-full" "$W/small-rsync"
check --no-dir-mtime "$SRC" "$W/small-seed"
rm -rf "$W/small-cp" "$W/small-seed"

say "small: 1% of files changed, added or deleted"
# Before each run: SOURCE back to the pristine corpus, the mirror synced to it by the tool
# itself (untimed), then the same 200 changes applied to SOURCE.
for t in oneway rsync-full rsync; do
    add small-1pct "$t" "$SRC" "$W/small-$t" "$(step changed small "$t" "$SRC" "$W/small-$t")"
done
hf small-1pct
check "$SRC" "$W/small-oneway" "$W/small-rsync-full" "$W/small-rsync"

COLD=no
if [[ $MODE == full ]] && (sync && echo 3 >/proc/sys/vm/drop_caches) 2>/dev/null; then
    COLD=yes
    say "small: nothing changed, cold caches (dropped before every run)"
    for t in oneway rsync-full rsync; do add small-nochange-cold "$t" "$SRC" "$W/small-$t" "$(step drop-caches)"; done
    hf small-nochange-cold $((2 * RUNS))
    check "$SRC" "$W/small-oneway" "$W/small-rsync-full" "$W/small-rsync"
fi
rm -rf "$W/small-oneway" "$W/small-rsync-full" "$W/small-rsync"

# --- two-way: twoway vs Unison -----------------------------------------------------------------
if [[ -n $TWOWAY ]]; then
    # What both sides must hold after a pass with changes on one side or on both.
    cp -a "$CORPUS/small" "$W/expected-one"
    gen mutate-small "$W/expected-one" --tag a --dir-times now
    cp -a "$CORPUS/small" "$W/expected-both"
    gen mutate-small "$W/expected-both" --tag a --part even --dir-times now
    gen mutate-small "$W/expected-both" --tag b --part odd --dir-times now
    # Neither is asked to carry directory times; Unison's file times land within 2 us.
    twcheck() { # twcheck TOOL EXPECTED
        local flags=(--no-dir-mtime)
        if [[ $1 == unison ]]; then flags+=(--mtime-slack-ns 2000); fi
        check "${flags[@]}" "$2" "$W/tw-$1-A" "$W/tw-$1-B"
    }
    for t in twoway unison; do restore_small_now "$W/tw-$t-A"; done

    say "two-way: first sync (SOURCE full, BACKUP empty, no archive)"
    for t in twoway unison; do add tw-first "$t" "$W/tw-$t-A" "$W/tw-$t-B" "$(step empty "$t" "$W/tw-$t-B")"; done
    hf tw-first
    for t in twoway unison; do twcheck "$t" "$CORPUS/small"; done

    say "two-way: nothing changed"
    for t in twoway unison; do add tw-nochange "$t" "$W/tw-$t-A" "$W/tw-$t-B"; done
    hf tw-nochange $((2 * RUNS))
    for t in twoway unison; do twcheck "$t" "$CORPUS/small"; done

    say "two-way: 1% changed on one side"
    for t in twoway unison; do
        add tw-1pct "$t" "$W/tw-$t-A" "$W/tw-$t-B" "$(step tw-changed one "$t" "$W/tw-$t-A" "$W/tw-$t-B")"
    done
    hf tw-1pct
    for t in twoway unison; do twcheck "$t" "$W/expected-one"; done

    say "two-way: 1% changed on each side"
    for t in twoway unison; do
        add tw-both "$t" "$W/tw-$t-A" "$W/tw-$t-B" "$(step tw-changed both "$t" "$W/tw-$t-A" "$W/tw-$t-B")"
    done
    hf tw-both
    for t in twoway unison; do twcheck "$t" "$W/expected-both"; done
    rm -rf "$W"/tw-* "$W"/expected-*
else
    say "two-way: not built yet (no $TARGET/release/twoway): twoway-vs-Unison rows skipped"
fi

# --- large: oneway vs both rsyncs, cp -a ----------------------------------------------------------
say "generating the large corpus ($LARGE_COUNT x $LARGE_MIB MiB)"
LSRC=$W/large-src
gen large "$LSRC" --count "$LARGE_COUNT" --mib "$LARGE_MIB"
cp -a "$LSRC/f00.bin" "$CORPUS/large-f00.bin" # pristine copy of the file the mutation edits

say "large: first copy into an empty directory"
for t in oneway rsync-full rsync cp rsync-durable; do
    add large-first "$t" "$LSRC" "$W/large-$t" "$(step empty "$t" "$W/large-$t")"
done
hf large-first
check "$LSRC" "$W/large-oneway" "$W/large-rsync-full" "$W/large-rsync" "$W/large-cp" \
    "$W/large-rsync-durable"
rm -rf "$W/large-cp"

say "large: 64 KiB changed inside one file"
for t in oneway rsync-full rsync rsync-durable; do
    add large-64k "$t" "$LSRC" "$W/large-$t" "$(step changed large "$t" "$LSRC" "$W/large-$t")"
done
hf large-64k
check "$LSRC" "$W/large-oneway" "$W/large-rsync-full" "$W/large-rsync" \
    "$W/large-rsync-durable"
rm -rf "$W/large-rsync-durable"

say "large: oneway --checksum, nothing changed (SHA-256 throughput)"
# Every file of both trees is read and hashed; with one rayon thread too, to see the scaling.
for t in oneway-checksum oneway-checksum-1thread; do add large-checksum "$t" "$LSRC" "$W/large-oneway"; done
hf large-checksum
check "$LSRC" "$W/large-oneway"
# Files hashed by the last pass of each variant, from its log line "... N files hashed ...".
for v in oneway-checksum oneway-checksum-1thread; do
    grep -o '[0-9]* files hashed' "$LOGS/$v.log" | tail -1 | cut -d' ' -f1 >"$RAW/$v.hashed"
done
LARGE_BYTES=$(stat -c %s "$LSRC"/*.bin | awk '{s += $1} END {printf "%.0f\n", s}')
say "openssl speed -evp sha256 -bytes 16384 -seconds 3 (one core, then all cores)"
openssl speed -evp sha256 -bytes 16384 -seconds 3 2>/dev/null | tee "$RAW/openssl.txt" | tail -1
openssl speed -evp sha256 -bytes 16384 -seconds 3 -multi "$(nproc)" 2>/dev/null |
    tee "$RAW/openssl-multi.txt" | tail -1
rm -rf "$W"/large-* "$CORPUS/large-f00.bin"

# --- flat: 100,000 files in one directory -----------------------------------------------------
# Work that grows faster than the number of files in a directory shows here first: a first copy
# and a pass with nothing changed, against both rsyncs.
if [[ $MODE == full ]]; then
    say "generating the flat corpus (100,000 files in one directory)"
    FSRC=$W/flat-src
    gen flat "$FSRC"
    say "flat: first copy into an empty directory"
    for t in oneway rsync-full rsync; do
        add flat-first "$t" "$FSRC" "$W/flat-$t" "$(step empty "$t" "$W/flat-$t")"
    done
    hf flat-first
    check "$FSRC" "$W/flat-oneway" "$W/flat-rsync-full" "$W/flat-rsync"
    say "flat: nothing changed"
    for t in oneway rsync-full rsync; do add flat-nochange "$t" "$FSRC" "$W/flat-$t"; done
    hf flat-nochange $((2 * RUNS))
    check "$FSRC" "$W/flat-oneway" "$W/flat-rsync-full" "$W/flat-rsync"
    rm -rf "$W"/flat-*
fi

# --- many: 200,000 files -----------------------------------------------------------------------
if [[ $MODE == full ]]; then
    say "generating the 200,000-file corpus"
    MSRC=$W/many-src
    gen many "$MSRC"
    say "many: first copies (untimed set-up; the memory of all processes sampled)"
    for t in oneway rsync-full rsync; do
        mkdir "$W/many-$t"
        t0=$(date +%s%N)
        eval "python3 $(q "$BENCH_DIR/peak_rss.py") $(tool_cmd "$t" "$MSRC" "$W/many-$t")" \
            >"$RAW/many-first-procs-$t.txt" || die "the first copy of the 200,000 files by $t failed"
        echo "  $t: $((($(date +%s%N) - t0) / 1000000)) ms (one run, sampled, not timed in the report); $(cat "$RAW/many-first-procs-$t.txt")"
    done
    say "many: nothing changed"
    for t in oneway rsync-full rsync; do add many-nochange "$t" "$MSRC" "$W/many-$t"; done
    hf many-nochange $((2 * RUNS))
    say "many: peak RSS of all processes (sampled, one more untimed pass each)"
    for t in oneway rsync-full rsync; do
        eval "python3 $(q "$BENCH_DIR/peak_rss.py") $(tool_cmd "$t" "$MSRC" "$W/many-$t")" | tee "$RAW/many-procs-$t.txt"
    done
    check "$MSRC" "$W/many-oneway" "$W/many-rsync-full" "$W/many-rsync"
    rm -rf "$W"/many-*
fi

# --- Report ------------------------------------------------------------------------------------
{
    echo "mode=$MODE"
    echo "runs=$RUNS"
    echo "date=$(date -u '+%Y-%m-%d %H:%M UTC')"
    echo "nproc=$(nproc)"
    echo "cpu=$(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2- | sed 's/^ *//')"
    echo "mem=$(free -g | awk '/^Mem:/ {print $2}') GiB"
    echo "kernel=$(uname -sr)"
    echo "fs=$FS"
    echo "cold=$COLD"
    echo "large=$LARGE_COUNT x $LARGE_MIB MiB"
    echo "large_bytes=$LARGE_BYTES"
    echo "commit=$(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo unknown)$(git -C "$REPO" diff --quiet HEAD -- crates oneway twoway Cargo.toml Cargo.lock 2>/dev/null || echo ' (with uncommitted changes)')"
    echo "twoway=${TWOWAY:+built}"
    echo "versions=$("$ONEWAY" --version 2>/dev/null | head -1); $(rsync --version | head -1 | awk '{print "rsync " $3}'); $(unison -version 2>/dev/null | awk '{print "unison " $3}'); $(hyperfine --version); $(openssl version | awk '{print "openssl " $2}'); $(python3 --version)"
    echo "elapsed=$(($(date +%s) - STARTED))"
    echo "load=$LOAD_START at the start, $(cut -d' ' -f1-3 /proc/loadavg) at the end"
} >"$RAW/meta.env"
mkdir -p "$RESULTS"
python3 "$BENCH_DIR/report.py" "$RAW" >"$REPORT.tmp"
mv "$REPORT.tmp" "$REPORT"
rm -rf "$KEEP_RAW" && cp -r "$RAW" "$KEEP_RAW" && rm -f "$KEEP_RAW/step-errors.txt"
say "results (also in ${REPORT#"$REPO"/})"
cat "$REPORT"

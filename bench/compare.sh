#!/usr/bin/env bash
# Two builds of oneway/twoway, pass by pass, in alternating runs on one file system: what a
# change to the engine costs or saves. (run.sh compares us with rsync and Unison; this compares
# us with ourselves.)
#
#   bench/compare.sh OLD NEW [ROUNDS]
#   SCENARIOS="first onepct" bench/compare.sh OLD NEW [ROUNDS]   (only these scenarios)
#
# OLD and NEW are directories holding a oneway and a twoway binary (e.g. two target/release
# directories). Each scenario runs ROUNDS rounds (default 6); in each round both builds run
# once, in alternating order, from the same prepared state. Prints the median wall time of
# each build per scenario and their ratio NEW / OLD. Run as root (it loop-mounts an image).
set -euo pipefail
OLD=$(realpath "$1")
NEW=$(realpath "$2")
ROUNDS=${3:-6}
BENCH_DIR=$(cd "$(dirname "$0")" && pwd)
for b in "$OLD" "$NEW"; do
    [[ -x $b/oneway && -x $b/twoway ]] || { echo "compare: no oneway/twoway in $b" >&2; exit 2; }
done

TMP=$(mktemp -d /var/tmp/oneway-compare.XXXXXX)
MNT=$TMP/mnt
cleanup() {
    cd /
    mountpoint -q "$MNT" && { umount "$MNT" 2>/dev/null || umount -l "$MNT"; }
    rm -rf "$TMP"
}
trap cleanup EXIT
mkdir "$MNT"
# A fresh journaled ext4 of its own, written whole before mkfs (see run.sh for why).
fallocate -l 3G "$TMP/fs.img"
dd if=/dev/zero of="$TMP/fs.img" bs=16M count=192 conv=notrunc,fsync status=none
mkfs.ext4 -q -F -E lazy_itable_init=0,lazy_journal_init=0 "$TMP/fs.img"
mount -o loop "$TMP/fs.img" "$MNT"
losetup --direct-io=on "$(findmnt -no SOURCE "$MNT")" 2>/dev/null || true
W=$MNT
gen() { python3 "$BENCH_DIR/gen_corpus.py" "$@" >/dev/null; }
gen small "$W/corpus"

# Everything one build keeps between passes, per build: its trees, cache and twoway state.
tree() { echo "$W/$1"; }
state() { echo "$TMP/state-$1"; }
ms() { echo $((($(date +%s%N) - $1) / 1000000)); }
restore() { rsync -a --delete "$W/corpus/" "$1/"; }

# prepare SCENARIO BUILD-NAME BIN: untimed, puts the build's trees where the scenario starts.
prepare() {
    local s=$1 n=$2 bin=$3 src dst st
    src=$(tree "$n-src") dst=$(tree "$n-dst") st=$(state "$n")
    mkdir -p "$src" "$st/xdg" "$st/tw"
    restore "$src"
    case $s in
        first)
            rm -rf "$dst" "$st/xdg/oneway" && mkdir "$dst" ;;
        nochange | onepct)
            mkdir -p "$dst"
            XDG_CACHE_HOME=$st/xdg XDG_STATE_HOME=$st/xdg "$bin/oneway" --once --log "$st/log" "$src" "$dst" >/dev/null 2>&1
            [[ $s == onepct ]] && gen mutate-small "$src" --tag a ;;
        tw-nochange | tw-onepct)
            mkdir -p "$dst"
            (cd "$st/tw" && XDG_CACHE_HOME=$st/xdg XDG_STATE_HOME=$st/xdg "$bin/twoway" --once --no-recovery \
                --log "$st/log" "$src" "$dst" >/dev/null 2>&1)
            [[ $s == tw-onepct ]] && gen mutate-small "$src" --tag a --dir-times now ;;
        ver-nochange | ver-onepct)
            mkdir -p "$dst"
            XDG_CACHE_HOME=$st/xdg XDG_STATE_HOME=$st/xdg "$bin/oneway" --once --versioned --log "$st/log" "$src" "$dst" \
                >/dev/null 2>&1
            [[ $s == ver-onepct ]] && gen mutate-small "$src" --tag a ;;
    esac
    sync -f "$W"
}

# timed SCENARIO BUILD-NAME BIN: one timed pass; prints its milliseconds.
timed() {
    local s=$1 n=$2 bin=$3 src dst st t0
    src=$(tree "$n-src") dst=$(tree "$n-dst") st=$(state "$n")
    t0=$(date +%s%N)
    case $s in
        first | nochange | onepct)
            XDG_CACHE_HOME=$st/xdg XDG_STATE_HOME=$st/xdg "$bin/oneway" --once --log "$st/log" "$src" "$dst" >/dev/null 2>&1 ;;
        tw-*)
            (cd "$st/tw" && XDG_CACHE_HOME=$st/xdg XDG_STATE_HOME=$st/xdg "$bin/twoway" --once --no-recovery \
                --log "$st/log" "$src" "$dst" >/dev/null 2>&1) ;;
        ver-*)
            XDG_CACHE_HOME=$st/xdg XDG_STATE_HOME=$st/xdg "$bin/oneway" --once --versioned --log "$st/log" "$src" "$dst" \
                >/dev/null 2>&1 ;;
    esac
    ms "$t0"
}

median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

echo "OLD=$OLD"
echo "NEW=$NEW"
echo "file system: $(findmnt -no FSTYPE,OPTIONS "$MNT"); small corpus (20,000 files); $ROUNDS rounds"
printf '%-12s %10s %10s %8s   %s\n' scenario "old ms" "new ms" new/old "every run (old | new)"
for s in ${SCENARIOS:-first nochange onepct tw-nochange tw-onepct ver-nochange ver-onepct}; do
    old=() new=()
    for ((r = 0; r < ROUNDS; r++)); do
        order=(old new)
        ((r % 2)) && order=(new old)
        for n in "${order[@]}"; do
            bin=$OLD
            [[ $n == new ]] && bin=$NEW
            prepare "$s" "$n" "$bin"
            t=$(timed "$s" "$n" "$bin")
            if [[ $n == old ]]; then old+=("$t"); else new+=("$t"); fi
        done
    done
    mo=$(printf '%s\n' "${old[@]}" | median)
    mn=$(printf '%s\n' "${new[@]}" | median)
    printf '%-12s %10s %10s %8s   %s | %s\n' "$s" "$mo" "$mn" \
        "$(awk -v a="$mn" -v b="$mo" 'BEGIN {printf "%.2f", a / b}')" "${old[*]}" "${new[*]}"
done

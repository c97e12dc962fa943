#!/usr/bin/env bash
# Untimed preparation steps, run by hyperfine (--prepare) before every timed run, so that each
# run starts from the same state. See run.sh for where each is used.
#
#   step.sh empty TOOL DST                  DST empty, TOOL's state reset (a first copy)
#   step.sh changed small|large TOOL SRC DST
#                                           SRC back to the pristine corpus, DST synced to it by
#                                           TOOL itself (so its cache/archive is as after a real
#                                           pass), then SRC mutated: 1% of the small files, or
#                                           64 KiB inside one large file
#   step.sh tw-changed one|both TOOL A B    A back to the pristine corpus and B brought back by
#                                           TOOL itself (untimed), then 1% of A changed (one) or
#                                           1% of each side (both). B is never restored from
#                                           outside: a tool's own writes are what its archive
#                                           knows (Unison stores times as floating point and
#                                           would take an exact restored time for a change).
#                                           Directory times are left to the kernel (see lib.sh).
#   step.sh drop-caches                     empty the page, dentry and inode caches
set -euo pipefail
source "$(dirname "${BASH_SOURCE[0]}")/lib.sh"
# hyperfine hides what a --prepare command prints: keep it where run.sh shows it on failure.
exec 2>>"$RAW/step-errors.txt"
trap 'echo "step.sh $*: failed at line $LINENO" >&2' ERR
gen() { python3 "$BENCH_DIR/gen_corpus.py" "$@" >/dev/null; }

case $1 in
    empty)
        rm -rf "$3" && mkdir "$3"
        reset_state "$2"
        ;;
    changed)
        "restore_$2" "$4"
        sync -f "$W" # flush the copy, and step out of the hash cache's "changed just now" window
        run_untimed "$3" "$4" "$5"
        if [[ $2 == small ]]; then gen mutate-small "$4" --tag a; else gen mutate-large "$4"; fi
        ;;
    tw-changed)
        restore_small_now "$4"
        sync -f "$W"
        run_untimed "$3" "$4" "$5"
        if [[ $2 == one ]]; then
            gen mutate-small "$4" --tag a --dir-times now
        else
            gen mutate-small "$4" --tag a --part even --dir-times now
            gen mutate-small "$5" --tag b --part odd --dir-times now
        fi
        ;;
    drop-caches)
        sync
        echo 3 >/proc/sys/vm/drop_caches
        ;;
    *)
        echo "step.sh: unknown step $1" >&2
        exit 2
        ;;
esac
# Write back what the step dirtied now, not during the timed run that follows (syncfs of the
# bench file system only).
sync -f "$W"

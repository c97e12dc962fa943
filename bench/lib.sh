# Shared by run.sh (which builds the timed command lines) and step.sh (which hyperfine runs
# as --prepare, untimed, to put the trees into the state a scenario starts from). Keeping the
# command lines here means the untimed set-up syncs run exactly what is timed.
#
# Expects, exported by run.sh: BENCH_DIR, RAW, W (the bench file system's work dir), CORPUS,
# LOGS, STATE, ONEWAY, TWOWAY, XDG_CACHE_HOME.

# Quote words for hyperfine -N (no shell; it splits with POSIX shell quoting rules).
q() { printf '%q ' "$@"; }

# tool_cmd TOOL SRC DST: the command line that makes DST a copy of SRC (or, for the two-way
# tools, syncs the pair SRC/DST) with TOOL.
tool_cmd() {
    local tool=$1 src=$2 dst=$3
    case $tool in
        oneway) q "$ONEWAY" --once --log "$LOGS/oneway.log" "$src" "$dst" ;;
        # The progress line forced on (hyperfine sends stderr to /dev/null, no terminal): what
        # drawing it costs a pass, against the plain oneway row (issue 23: at most 2%).
        oneway-progress) q "$ONEWAY" --once --progress --log "$LOGS/oneway-progress.log" "$src" "$dst" ;;
        # Separate logs: run.sh reads how many files each of these passes hashed.
        oneway-checksum) q "$ONEWAY" --once --checksum --log "$LOGS/oneway-checksum.log" "$src" "$dst" ;;
        oneway-checksum-1thread)
            q env RAYON_NUM_THREADS=1 "$ONEWAY" --once --checksum \
                --log "$LOGS/oneway-checksum-1thread.log" "$src" "$dst" ;;
        # Two rsyncs (issue 21). rsync-full does the work oneway does: owners and groups (as
        # root, by number), hard links, ACLs, extended attributes, sparse files, special files;
        # the targets are judged against it. rsync (-a) carries less: no hard links, ACLs,
        # xattrs or holes (and, run as a user, no owners); its rows stay, without a target.
        rsync-full) q rsync -aHAXS --numeric-ids --delete "$src/" "$dst/" ;;
        rsync) q rsync -a --delete "$src/" "$dst/" ;;
        # rsync does not wait for its writes to reach the disk, oneway does (SPEC §7): this
        # variant shows what rsync costs when made as durable.
        rsync-durable) q sh -c 'rsync -a --delete "$1/" "$2/" && sync -f "$2"' sh "$src" "$dst" ;;
        cp) q cp -a "$src/." "$dst/" ;;
        seed) q python3 "$BENCH_DIR/seed_oneway.py" --once --log "$LOGS/seed.log" "$src" "$dst" ;;
        # twoway keeps its state (archive, log) in the directory it runs from.
        twoway) q env -C "$STATE/twoway" "$TWOWAY" --once --no-recovery \
                    --log "$LOGS/twoway.log" "$src" "$dst" ;;
        # -times: carry modification times, as twoway does, so both are checked alike.
        unison) q env "UNISON=$STATE/unison" unison -batch -auto -times \
                    -logfile "$LOGS/unison.log" "$src" "$dst" ;;
        *) echo "unknown tool $tool" >&2; return 2 ;;
    esac
}

# run_untimed TOOL SRC DST: one sync, its output kept in a file and shown only if it fails.
run_untimed() {
    local out="$LOGS/untimed-$1.out" rc=0
    eval "$(tool_cmd "$@")" >"$out" 2>&1 || rc=$?
    if ((rc)); then
        echo "untimed $1 sync of $2 -> $3 failed (exit $rc):" >&2
        tail -c 3000 "$out" | tr '\r' '\n' | grep -v '^ *$' >&2
        return 1
    fi
}

# Put a working copy back to the pristine corpus. Small: rsync rewrites only what a mutation
# changed. restore_small DIR: directory times put back too, so one-way sources are the same
# at every run, times included. restore_small_now DIR (two-way): directories keep the times the
# kernel gives them. Putting a recorded mtime back on a directory whose entries changed is
# something no real edit does, and Unison 2.52 was seen to miss the changed files when the
# directory's inode and mtime matched its archive.
# Large: the mutation only edits f00.bin, in place.
restore_small() { rsync -a --delete "$CORPUS/small/" "$1/"; }
restore_small_now() { rsync -a --omit-dir-times --delete "$CORPUS/small/" "$1/"; }
restore_large() { cp -a "$CORPUS/large-f00.bin" "$1/f00.bin"; }

# Tool state (oneway's hash cache, twoway's archive, Unison's archive) is reset only for a
# first copy: any other pass is timed with the state the tool's previous pass left.
reset_state() {
    case $1 in
        oneway*) rm -rf "$XDG_CACHE_HOME/oneway" ;;
        # twoway's archive lives in its sync-state directory (XDG_STATE_HOME/oneway).
        twoway) rm -rf "${STATE:?}/$1" "${XDG_STATE_HOME:?}/oneway" && mkdir -p "$STATE/$1" ;;
        unison) rm -rf "${STATE:?}/$1" && mkdir -p "$STATE/$1" ;;
    esac
}

#!/usr/bin/env python3
"""Deterministic corpora and mutations for the benchmark (bench/run.sh).

Every byte, name, size, permission and modification time comes from a seeded PRNG, so two runs
(or two machines) get identical trees and a mutation can be replayed on a fresh copy to reach
the same state again.

    gen_corpus.py small DIR                    20,000 files of 1-16 KiB in 1,000 directories
    gen_corpus.py large DIR [--count N --mib M] N files of M MiB (default 8 x 256 MiB)
    gen_corpus.py many DIR                     200,000 files of 256 B-4 KiB in 2,000 directories
    gen_corpus.py flat DIR                     100,000 files of 256 B-4 KiB in one directory
    gen_corpus.py mutate-small DIR --tag T [--part all|even|odd] [--dir-times fixed|now]
                                               1% of the small profile's files changed, added
                                               or deleted (changes the files of PART only);
                                               the directories touched get a fixed mtime, or
                                               keep the one the kernel gave them
    gen_corpus.py mutate-large DIR             64 KiB overwritten inside the first large file
"""

import argparse
import os
import random
import sys

SEED = 20261125
# Fixed timestamps (ns) so that trees compare equal, mtimes included, across replays.
T_BASE = 1_700_000_000 * 10**9
T_MUT = 1_750_000_000 * 10**9  # every mutated / added file and touched directory gets this

EXTS = [".txt", ".dat", ".json", ".rs", ".jpg", ".md"]


def mode_for(rng):
    r = rng.random()
    return 0o755 if r < 0.07 else 0o600 if r < 0.10 else 0o644


def tree_spec(profile):
    """The (dirs, files) of a many-small-files profile, without touching the disk.

    dirs: relative paths, parents first. files: (rel, size, mode, mtime_ns), in a fixed order
    that the mutation relies on (it picks files by index).
    """
    if profile == "small":
        tops, subs, nfiles, lo, hi = 40, 24, 20_000, 1024, 16 * 1024  # 40 + 960 = 1,000 dirs
    elif profile == "many":
        tops, subs, nfiles, lo, hi = 40, 49, 200_000, 256, 4096  # 40 + 1,960 = 2,000 dirs
    elif profile == "flat":
        tops, subs, nfiles, lo, hi = 0, 0, 100_000, 256, 4096  # every file in the root
    else:
        raise ValueError(profile)
    rng = random.Random(f"{SEED}/{profile}/spec")
    dirs = []
    for t in range(tops):
        dirs.append(f"t{t:02d}")
        for s in range(subs):
            dirs.append(f"t{t:02d}/s{s:02d}")
    files = []
    for i in range(nfiles):
        d = dirs[i % len(dirs)] if dirs else ""
        rel = f"{d}/file{i:06d}{EXTS[i % len(EXTS)]}".lstrip("/")
        # Nanosecond parts too: a tool that drops them fails the tree check.
        mtime = T_BASE + i * 10**9 + (i * 7919 % 10**9)
        files.append((rel, rng.randint(lo, hi), mode_for(rng), mtime))
    return dirs, files


def write_file(path, data, mode, mtime_ns):
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, mode)
    try:
        os.write(fd, data)
    finally:
        os.close(fd)
    os.chmod(path, mode)  # O_CREAT's mode is masked by the umask, and ignored for existing files
    os.utime(path, ns=(mtime_ns, mtime_ns))


def set_dir_times(root, rels, mtime_of):
    """Directory mtimes last and deepest first: creating entries moves a directory's mtime."""
    for rel in sorted(rels, key=lambda r: r.count("/"), reverse=True):
        t = mtime_of(rel)
        os.utime(os.path.join(root, rel) if rel else root, ns=(t, t))


def gen_tree(profile, root):
    dirs, files = tree_spec(profile)
    os.makedirs(root, exist_ok=True)
    for d in dirs:
        os.makedirs(os.path.join(root, d), mode=0o755, exist_ok=True)
    content = random.Random(f"{SEED}/{profile}/content")
    for rel, size, mode, mtime in files:
        write_file(os.path.join(root, rel), content.randbytes(size), mode, mtime)
    set_dir_times(root, dirs + [""], lambda rel: T_BASE - (len(rel) + 1) * 10**9)
    total = sum(f[1] for f in files)
    print(f"{profile}: {len(files)} files, {len(dirs)} directories, {total / 2**20:.1f} MiB")


def gen_large(root, count, mib):
    os.makedirs(root, exist_ok=True)
    rng = random.Random(f"{SEED}/large/content")
    chunk = 16 * 2**20
    for i in range(count):
        path = os.path.join(root, f"f{i:02d}.bin")
        with open(path, "wb") as f:
            left = mib * 2**20
            while left:
                n = min(chunk, left)
                f.write(rng.randbytes(n))
                left -= n
        os.chmod(path, 0o644)
        t = T_BASE + i * 10**9 + 123_456_789
        os.utime(path, ns=(t, t))
    os.utime(root, ns=(T_BASE, T_BASE))
    print(f"large: {count} files of {mib} MiB")


def mutate_small(root, tag, part, dir_times):
    """1% of the files: 40% of those changed (half same size, half resized), 30% deleted,
    30% added (half in existing directories, half in three new ones). With part even/odd only
    files of even/odd index are changed or deleted, so two sides mutated with different parts
    and tags never touch the same path (no conflicts in the two-way runs)."""
    dirs, files = tree_spec("small")
    if part == "all":
        cands = files
    else:
        cands = [f for i, f in enumerate(files) if i % 2 == (0 if part == "even" else 1)]
    rng = random.Random(f"{SEED}/mutate/{tag}/{part}")
    n = len(files) // 100
    n_mod, n_add = n * 2 // 5, n * 3 // 10
    n_del = n - n_mod - n_add
    chosen = rng.sample(cands, n_mod + n_del)
    touched = set()
    for j, (rel, size, mode, _) in enumerate(chosen[:n_mod]):
        new_size = size if j % 2 == 0 else size + rng.randint(1, 4096)
        write_file(os.path.join(root, rel), rng.randbytes(new_size), mode, T_MUT)
    for rel, *_ in chosen[n_mod:]:
        os.remove(os.path.join(root, rel))
        touched.add(os.path.dirname(rel))
    new_dirs = [f"t{k:02d}/new-{tag}-{k}" for k in range(3)]
    for d in new_dirs:
        os.mkdir(os.path.join(root, d), 0o755)
        touched.update([d, os.path.dirname(d)])
    for j in range(n_add):
        d = new_dirs[j % 3] if j % 2 else rng.choice(dirs[1:])
        rel = f"{d}/added-{tag}-{j:03d}.dat"
        write_file(os.path.join(root, rel), rng.randbytes(rng.randint(1024, 16384)), 0o644, T_MUT)
        touched.add(d)
    if dir_times == "fixed":
        set_dir_times(root, touched, lambda rel: T_MUT)
    print(f"mutated {root}: {n_mod} changed, {n_del} deleted, {n_add} added ({part}, tag {tag})")


def mutate_large(root):
    path = os.path.join(root, "f00.bin")
    size = os.path.getsize(path)
    offset = size // 3 + 1234  # not block-aligned, as an application write would be
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(random.Random(f"{SEED}/mutate/large").randbytes(64 * 1024))
    os.utime(path, ns=(T_MUT, T_MUT))
    print(f"mutated {path}: 64 KiB at offset {offset}")


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("what", choices=["small", "large", "many", "flat", "mutate-small",
                                    "mutate-large"])
    p.add_argument("dir")
    p.add_argument("--count", type=int, default=8)
    p.add_argument("--mib", type=int, default=256)
    p.add_argument("--tag", default="a")
    p.add_argument("--part", choices=["all", "even", "odd"], default="all")
    p.add_argument("--dir-times", choices=["fixed", "now"], default="fixed")
    a = p.parse_args()
    os.umask(0o022)
    if a.what in ("small", "many", "flat"):
        gen_tree(a.what, a.dir)
    elif a.what == "large":
        gen_large(a.dir, a.count, a.mib)
    elif a.what == "mutate-small":
        mutate_small(a.dir, a.tag, a.part, a.dir_times)
    else:
        mutate_large(a.dir)


if __name__ == "__main__":
    sys.exit(main())

//! The mirror pass on real directories, with proptest: whatever SOURCE and BACKUP hold (files,
//! directories, links and FIFOs, of any kind at any name on either side), one pass leaves BACKUP
//! equal to SOURCE (contents, link targets, modes, file and directory mtimes), leaves alone
//! whatever lies at a name where SOURCE has a FIFO, and the next pass finds nothing to do and
//! reads nothing. A same-size edit that keeps the mtime is still seen (by its change time), and
//! a large file that was only touched keeps its copy in BACKUP.

use std::collections::BTreeMap;
use std::fs;
use std::os::unix::fs::{MetadataExt, PermissionsExt};
use std::path::{Path, PathBuf};

use filetime::FileTime;
use proptest::prelude::*;
use sync_core::hash::DirCache;
use sync_core::pass::PassOptions;
use sync_core::pass::mirror::mirror_pass;
use sync_core::scan::Filter;
use sync_core::tree::LocalTree;

#[derive(Debug, Clone)]
enum Spec {
    Dir(u32),
    File(u8, u32),
    Link(u8),
    Fifo,
}

/// What a path holds, as compared between the trees.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Held {
    Dir {
        mode: u32,
        mtime: i64,
    },
    File {
        bytes: Vec<u8>,
        mode: u32,
        mtime: i64,
    },
    Link {
        target: PathBuf,
        mtime: i64,
    },
    Fifo,
}

fn arb_tree() -> impl Strategy<Value = Vec<(Vec<u8>, Spec)>> {
    let spec = prop_oneof![
        3 => prop::sample::select(vec![0o755, 0o700, 0o555]).prop_map(Spec::Dir),
        4 => (0u8..4, prop::sample::select(vec![0o644, 0o600, 0o755])).prop_map(|(c, m)| Spec::File(c, m)),
        1 => (0u8..3).prop_map(Spec::Link),
        1 => Just(Spec::Fifo),
    ];
    prop::collection::vec((prop::collection::vec(0u8..3, 1..4), spec), 0..14)
}

/// Makes the tree: each entry's missing ancestors become directories; an entry that would lie
/// under a non-directory, or at a name already taken, is left out.
fn build(root: &Path, raw: &[(Vec<u8>, Spec)], stamp: i64) {
    let mut taken: BTreeMap<PathBuf, bool> = BTreeMap::new();
    let mut dirs = Vec::new();
    'entries: for (parts, spec) in raw {
        let mut rel = PathBuf::new();
        for (i, p) in parts.iter().enumerate() {
            rel.push(["a", "b", "c"][*p as usize]);
            let last = i + 1 == parts.len();
            match taken.get(&rel) {
                Some(true) if !last => continue,
                Some(_) => continue 'entries,
                None if !last => {
                    fs::create_dir(root.join(&rel)).unwrap();
                    taken.insert(rel.clone(), true);
                    dirs.push((rel.clone(), 0o755));
                }
                None => {}
            }
        }
        let path = root.join(&rel);
        match spec {
            Spec::Dir(mode) => {
                fs::create_dir(&path).unwrap();
                dirs.push((rel.clone(), *mode));
            }
            Spec::File(content, mode) => {
                // Contents 0 and 1 have one size: telling them apart takes their digests.
                let bytes = match content {
                    0 => b"same size A".to_vec(),
                    1 => b"same size B".to_vec(),
                    2 => Vec::new(),
                    _ => vec![7; 5000],
                };
                fs::write(&path, bytes).unwrap();
                fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
                let t = FileTime::from_unix_time(stamp + i64::from(*content), 0);
                filetime::set_file_mtime(&path, t).unwrap();
            }
            Spec::Link(target) => {
                std::os::unix::fs::symlink(format!("target-{target}"), &path).unwrap();
            }
            Spec::Fifo => {
                rustix::fs::mknodat(
                    rustix::fs::CWD,
                    &path,
                    rustix::fs::FileType::Fifo,
                    rustix::fs::Mode::from_raw_mode(0o644),
                    0,
                )
                .unwrap();
            }
        }
        taken.insert(rel, matches!(spec, Spec::Dir(_)));
    }
    // Deepest first: a read-only directory is finished after its content. One mtime for the
    // directories of both trees, so that a pass must keep as well as set them.
    for (rel, mode) in dirs.iter().rev() {
        let path = root.join(rel);
        filetime::set_file_mtime(&path, FileTime::from_unix_time(1_700_000_000, 0)).unwrap();
        fs::set_permissions(&path, fs::Permissions::from_mode(*mode)).unwrap();
    }
}

fn read_tree(root: &Path) -> BTreeMap<PathBuf, Held> {
    let mut out = BTreeMap::new();
    let mut stack = vec![PathBuf::new()];
    while let Some(rel) = stack.pop() {
        for item in fs::read_dir(root.join(&rel)).unwrap() {
            let item = item.unwrap();
            let child = rel.join(item.file_name());
            let meta = fs::symlink_metadata(item.path()).unwrap();
            let ft = meta.file_type();
            let held = if ft.is_dir() {
                stack.push(child.clone());
                Held::Dir {
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                }
            } else if ft.is_file() {
                Held::File {
                    bytes: fs::read(item.path()).unwrap(),
                    mode: meta.mode() & 0o7777,
                    mtime: meta.mtime(),
                }
            } else if ft.is_symlink() {
                Held::Link {
                    target: fs::read_link(item.path()).unwrap(),
                    mtime: meta.mtime(),
                }
            } else {
                Held::Fifo
            };
            out.insert(child, held);
        }
    }
    out
}

/// BACKUP after a pass: SOURCE, FIFOs included (made as FIFOs, never opened).
fn expected(
    src: &BTreeMap<PathBuf, Held>,
    _dst: &BTreeMap<PathBuf, Held>,
) -> BTreeMap<PathBuf, Held> {
    src.clone()
}

/// A temporary directory holding an empty SOURCE `s` and an empty BACKUP `b`.
fn empty_roots() -> (tempfile::TempDir, PathBuf, PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let (s, b) = (dir.path().join("s"), dir.path().join("b"));
    fs::create_dir(&s).unwrap();
    fs::create_dir(&b).unwrap();
    (dir, s, b)
}

/// Gives SOURCE's root a time long past once it is filled, so that a first pass always has the
/// root's time to carry: left as it is, the root may be changed within the same clock tick as
/// BACKUP's, and then there is nothing to carry.
fn date_root(source: &Path) {
    filetime::set_file_mtime(source, FileTime::from_unix_time(1_400_000_000, 0)).unwrap();
}

fn options(source: &Path, backup: &Path) -> PassOptions {
    PassOptions {
        source: source.to_path_buf(),
        backup: backup.to_path_buf(),
        trees: [
            LocalTree::open(source).unwrap(),
            LocalTree::open(backup).unwrap(),
        ],
        filter: Filter::new(&[]).unwrap(),
        dry_run: false,
        checksum: false,
        force: true,
        one_file_system: false,
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn one_pass_makes_backup_equal_source_and_the_next_finds_nothing(
        src in arb_tree(),
        dst in arb_tree(),
    ) {
        let (_dir, s, b) = empty_roots();
        build(&s, &src, 1_600_000_000);
        build(&b, &dst, 1_500_000_000);
        let want = expected(&read_tree(&s), &read_tree(&b));

        let opts = options(&s, &b);
        let mut cache = DirCache::in_memory();
        let first = mirror_pass(&opts, &mut cache).unwrap();
        prop_assert_eq!(first.errors, 0);
        prop_assert_eq!(&read_tree(&b), &want);

        let second = mirror_pass(&opts, &mut cache).unwrap();
        prop_assert_eq!((second.operations, second.errors, second.hashed), (0, 0, 0));
        prop_assert_eq!(&read_tree(&b), &want);
    }
}

#[test]
fn same_size_edit_with_the_old_mtime_is_copied() {
    let dir = tempfile::tempdir().unwrap();
    let (s, b) = (dir.path().join("s"), dir.path().join("b"));
    fs::create_dir_all(s.join("d")).unwrap();
    fs::create_dir(&b).unwrap();
    let file = s.join("d/f");
    fs::write(&file, b"before").unwrap();
    let opts = options(&s, &b);
    let mut cache = DirCache::in_memory();
    mirror_pass(&opts, &mut cache).unwrap();
    let again = mirror_pass(&opts, &mut cache).unwrap();
    assert_eq!(
        (again.operations, again.hashed, again.cache_hits),
        (0, 0, 2)
    );

    let mtime = FileTime::from_last_modification_time(&fs::metadata(&file).unwrap());
    fs::write(&file, b"after!").unwrap();
    filetime::set_file_mtime(&file, mtime).unwrap();
    let third = mirror_pass(&opts, &mut cache).unwrap();
    assert_eq!(third.operations, 1);
    assert_eq!(fs::read(b.join("d/f")).unwrap(), b"after!");
}

/// A name gone from both sides leaves the cache with the pass that no longer sees it, even
/// when nothing else in its directory changed and every name before it still matches.
#[test]
fn a_name_gone_from_both_sides_leaves_its_directory_block() {
    let (_dir, s, b) = empty_roots();
    for name in ["a", "m", "z"] {
        fs::write(s.join(name), name).unwrap();
    }
    date_root(&s);
    let opts = options(&s, &b);
    let mut cache = DirCache::in_memory();
    // Three copies, and the root's time.
    assert_eq!(mirror_pass(&opts, &mut cache).unwrap().operations, 4);
    let names = |cache: &mut DirCache| -> Vec<Vec<u8>> {
        let block = cache.block(b"");
        block.into_iter().map(|r| r.name.to_vec()).collect()
    };
    assert_eq!(names(&mut cache), [b"a", b"m", b"z"]);

    // The last name, then a middle one: each time the names before it still match.
    for (gone, left) in [("z", vec![b"a", b"m"]), ("m", vec![b"a"])] {
        fs::remove_file(s.join(gone)).unwrap();
        fs::remove_file(b.join(gone)).unwrap();
        // The roots' times as a pass would leave them: nothing differs but the cache.
        let time = FileTime::from_last_modification_time(&fs::metadata(&s).unwrap());
        filetime::set_file_mtime(&b, time).unwrap();
        let pass = mirror_pass(&opts, &mut cache).unwrap();
        assert_eq!((pass.operations, pass.hashed), (0, 0), "without {gone}");
        assert_eq!(names(&mut cache), left, "without {gone}");
    }
}

/// A copy remembers the digest of both its files: when only the copy in BACKUP is touched
/// afterwards, it alone is read to see that its bytes still match SOURCE's.
#[test]
fn a_copy_remembers_both_digests_so_a_touched_backup_file_is_read_alone() {
    let (_dir, s, b) = empty_roots();
    fs::write(s.join("f"), b"the bytes").unwrap();
    date_root(&s);
    let opts = options(&s, &b);
    let mut cache = DirCache::in_memory();
    // The copy, and the root's time.
    assert_eq!(mirror_pass(&opts, &mut cache).unwrap().operations, 2);

    filetime::set_file_mtime(b.join("f"), FileTime::from_unix_time(1_500_000_000, 0)).unwrap();
    let after = mirror_pass(&opts, &mut cache).unwrap();
    // The time put back, the copy kept, and only BACKUP's file read.
    assert_eq!((after.operations, after.hashed), (1, 1));
    let again = mirror_pass(&opts, &mut cache).unwrap();
    assert_eq!((again.operations, again.hashed), (0, 0));
}

/// A large file whose stamp moved is hashed while it is copied (not read first): the copy is
/// installed only if the bytes differ; otherwise the file in BACKUP stays (same inode) and
/// only its mode and time follow. Either way both digests are remembered, the replacement's
/// too (hashed from a mapping of the copy when a second thread is free).
#[test]
fn large_file_touched_keeps_its_backup_and_edited_is_replaced() {
    let (_dir, s, b) = empty_roots();
    let (file, copy) = (s.join("big"), b.join("big"));
    // Above the size from which a copy hashes on a second thread.
    let mut bytes: Vec<u8> = (0..9u32 << 20).map(|i| (i % 251) as u8).collect();
    fs::write(&file, &bytes).unwrap();
    let opts = options(&s, &b);
    let mut cache = DirCache::in_memory();
    let ino = |p: &Path| fs::metadata(p).unwrap().ino();
    // Operations, and files hashed before the plan (a large file whose stamp moved is read
    // by its copy instead, counted in `hashed_by_copies`).
    let quiet = |cache: &mut DirCache| {
        let p = mirror_pass(&opts, cache).unwrap();
        (p.operations, p.hashed - p.hashed_by_copies)
    };
    mirror_pass(&opts, &mut cache).unwrap();
    assert_eq!(quiet(&mut cache), (0, 0));
    let first = ino(&copy);

    // Same bytes, same mode and time, new change time: nothing to do.
    fs::set_permissions(&file, fs::Permissions::from_mode(0o644)).unwrap();
    assert_eq!(quiet(&mut cache), (0, 0));
    assert_eq!(ino(&copy), first);

    // Same bytes, new time: the time is carried over, the file kept.
    filetime::set_file_mtime(&file, FileTime::from_unix_time(1_600_000_000, 5)).unwrap();
    fs::set_permissions(&file, fs::Permissions::from_mode(0o600)).unwrap();
    assert_eq!(quiet(&mut cache).0, 1);
    assert_eq!(ino(&copy), first);
    let kept = fs::metadata(&copy).unwrap();
    assert_eq!((kept.mtime(), kept.mtime_nsec()), (1_600_000_000, 5));
    assert_eq!(kept.mode() & 0o7777, 0o600);
    assert_eq!(quiet(&mut cache), (0, 0));

    // A same-size edit: replaced, with the new bytes.
    bytes[5 << 20] ^= 0xff;
    fs::write(&file, &bytes).unwrap();
    assert_eq!(quiet(&mut cache).0, 1);
    assert_ne!(ino(&copy), first);
    assert!(fs::read(&copy).unwrap() == bytes);
    assert_eq!(quiet(&mut cache), (0, 0));

    // The digest the replacement left is its own: a touch now keeps the copy, even with the
    // touched file hashed another way (one thread: no second thread to hash the copy).
    let replaced = ino(&copy);
    filetime::set_file_mtime(&file, FileTime::from_unix_time(1_600_000_100, 0)).unwrap();
    let one_thread = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    assert_eq!(one_thread.install(|| quiet(&mut cache)).0, 1);
    assert_eq!(ino(&copy), replaced);
}

/// More large files than threads: they are copied two at a time on one thread and hashed
/// together. Each copy is whole, and the digest each leaves in the cache is its own: touching
/// the sources afterwards is taken for what it is (the copies kept, their times carried over),
/// where a wrong digest would make the touch look like an edit and replace the copy.
#[test]
fn large_files_copied_in_pairs_are_whole_and_each_keeps_its_own_digest() {
    let (_dir, s, b) = empty_roots();
    // From the pair threshold up; the two largest make the pair, one ending four buffers
    // before the other, and the third is copied alone.
    let sizes: [u32; 3] = [(9 << 20) + 12_345, (8 << 20) + 3, 8 << 20];
    let contents: Vec<Vec<u8>> = sizes
        .iter()
        .enumerate()
        .map(|(k, &n)| {
            (0..n)
                .map(|i| ((i >> 12) as u8) ^ (i as u8) ^ (k as u8 * 85))
                .collect()
        })
        .collect();
    for (k, bytes) in contents.iter().enumerate() {
        fs::write(s.join(format!("big{k}")), bytes).unwrap();
    }
    date_root(&s);
    // One thread: more large files than threads on any machine.
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(1)
        .build()
        .unwrap();
    let opts = options(&s, &b);
    let mut cache = DirCache::in_memory();
    let mut pass = || {
        let p = pool.install(|| mirror_pass(&opts, &mut cache).unwrap());
        (p.operations, p.errors, p.hashed)
    };
    // Three copies, and the root's time; each file read once, by its copy.
    assert_eq!(pass(), (4, 0, 3));
    for (k, bytes) in contents.iter().enumerate() {
        assert!(
            fs::read(b.join(format!("big{k}"))).unwrap() == *bytes,
            "big{k} differs"
        );
    }
    assert_eq!(pass(), (0, 0, 0));

    let inodes: Vec<u64> = (0..3)
        .map(|k| fs::metadata(b.join(format!("big{k}"))).unwrap().ino())
        .collect();
    for k in 0..3 {
        filetime::set_file_mtime(
            s.join(format!("big{k}")),
            FileTime::from_unix_time(1_600_000_000 + k, 0),
        )
        .unwrap();
    }
    assert_eq!(pass().0, 3);
    for (k, ino) in inodes.iter().enumerate() {
        let kept = fs::metadata(b.join(format!("big{k}"))).unwrap();
        assert_eq!(
            kept.ino(),
            *ino,
            "big{k} was replaced: its digest was wrong"
        );
        assert_eq!(kept.mtime(), 1_600_000_000 + k as i64);
    }
}

/// A walk that recursed would need a frame per level: on workers with a 128 KiB stack, a tree
/// 500 levels deep (far from PATH_MAX) is too deep for that, in a first copy (applied as it is
/// walked) as in a pass that compares both trees.
#[test]
fn a_tree_deeper_than_the_stack_could_hold_frames_for_is_mirrored() {
    let (_dir, s, b) = empty_roots();
    let mut bottom = s.clone();
    for _ in 0..500 {
        bottom.push("d");
        fs::create_dir(&bottom).unwrap();
    }
    let file = bottom.join("f");
    fs::write(&file, "at the bottom").unwrap();
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(2)
        .stack_size(128 * 1024)
        .build()
        .unwrap();
    let opts = options(&s, &b);
    let mut cache = DirCache::in_memory();

    let first = pool.install(|| mirror_pass(&opts, &mut cache)).unwrap();
    assert_eq!(first.errors, 0);
    assert_eq!(read_tree(&b), read_tree(&s));

    fs::write(&file, "edited at the bottom").unwrap();
    let second = pool.install(|| mirror_pass(&opts, &mut cache)).unwrap();
    assert_eq!((second.operations, second.errors), (1, 0));
    assert_eq!(read_tree(&b), read_tree(&s));
}

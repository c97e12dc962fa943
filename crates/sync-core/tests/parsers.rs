//! Fuzzing the parsers of sync-core's state files with proptest (issue 7), which runs bounded
//! inside `cargo test` on stable, as CI does (cargo-fuzz needs nightly and a runner of its own):
//! the two-way archive, the listing line format it shares with version manifests, and the hash
//! cache (one block per directory). Whatever bytes they are given,
//! they must return a value or an error, never panic; damage must never read as a valid state
//! that differs from what was written beyond what one edited line can say; and a damaged hash
//! cache must never hand out a digest that was not written. Each property runs a few thousand
//! cases; the whole file takes seconds.

use std::collections::{BTreeMap, BTreeSet};
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};
use std::sync::OnceLock;

use proptest::prelude::*;
use sync_core::hash::dircache::{BlockOut, DirCache, Record};
use sync_core::hash::stamp::Stamp;
use sync_core::model::{Item, Items, Meta, NOT_CARRIED, Node, Timestamp};
use sync_core::state::archive;
use sync_core::state::text::{decode_item, encode_item};

const CASES: u32 = 2000;

/// `cases` cases, and no regression files written beside the tests: a failure prints its
/// minimal input, which belongs in a named regression test.
fn config(cases: u32) -> ProptestConfig {
    ProptestConfig {
        cases,
        failure_persistence: None,
        ..ProptestConfig::default()
    }
}

// ---------------------------------------------------------------------------------------------
// Strategies

/// One path component: any bytes but `/` and NUL, never `.` or `..`.
fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        // Mostly plain names, so that paths share prefixes and directories.
        prop::sample::select(vec![
            "a",
            "b",
            "dir",
            "x.txt",
            "caf\u{e9}",
            "sp ace",
            "100%"
        ])
        .prop_map(|s| s.as_bytes().to_vec()),
        prop::collection::vec(
            any::<u8>().prop_filter("no / or NUL", |b| *b != b'/' && *b != 0),
            1..10
        ),
    ]
    .prop_filter("not . or ..", |c| c != b"." && c != b"..")
}

/// A plain relative path of one to four components.
fn rel_path() -> impl Strategy<Value = PathBuf> {
    prop::collection::vec(component(), 1..5)
        .prop_map(|parts| PathBuf::from(OsString::from_vec(parts.join(&b'/'))))
}

fn timestamp() -> impl Strategy<Value = Timestamp> {
    prop_oneof![
        (any::<i64>(), 0u32..1_000_000_000),
        (-5i64..2_000_000_000, 0u32..1_000_000_000),
    ]
    .prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

/// Metadata as a state file records it: owners and attributes carried or not.
fn meta(mode: u32, mtime: Timestamp) -> impl Strategy<Value = Meta> {
    (
        prop_oneof![Just(NOT_CARRIED), 0u32..70_000],
        prop_oneof![Just(NOT_CARRIED), 0u32..70_000],
        prop_oneof![Just(0u64), any::<u64>()],
    )
        .prop_map(move |(uid, gid, xattrs)| Meta {
            mode,
            mtime,
            uid,
            gid,
            xattrs,
        })
}

fn item() -> impl Strategy<Value = Item> {
    let node = prop_oneof![
        Just(Node::Fifo),
        Just(Node::Socket),
        any::<u64>().prop_map(Node::Char),
        any::<u64>().prop_map(Node::Block),
    ];
    prop_oneof![
        (any::<[u8; 32]>(), any::<u64>(), 0u32..=0o7777, timestamp()).prop_flat_map(
            |(digest, size, mode, mtime)| meta(mode, mtime).prop_map(move |meta| Item::File {
                digest,
                size,
                meta
            })
        ),
        (0u32..=0o7777, timestamp())
            .prop_flat_map(|(mode, mtime)| meta(mode, mtime).prop_map(|meta| Item::Dir { meta })),
        (
            prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..24),
            timestamp()
        )
            .prop_flat_map(|(target, mtime)| meta(0o777, mtime).prop_map(move |meta| {
                Item::Symlink {
                    target: PathBuf::from(OsString::from_vec(target.clone())),
                    meta,
                }
            })),
        (node, 0u32..=0o7777, timestamp()).prop_flat_map(|(node, mode, mtime)| meta(mode, mtime)
            .prop_map(move |meta| Item::Special { node, meta })),
    ]
}

fn items() -> impl Strategy<Value = Items> {
    prop::collection::btree_map(rel_path(), item(), 0..10)
}

/// Text that looks like an archive or a listing line often enough to get past the first checks.
fn listing_like_text() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "twoway-archive 1",
        "source /s",
        "backup /b",
        "end 0",
        "end 1",
        "end 18446744073709551616",
        "F",
        "D",
        "L",
        " ",
        "\n",
        "755",
        "7777",
        "17777",
        "1.000000000",
        "-1.5",
        "1.1000000000",
        "0",
        "18446744073709551615",
        "%",
        "%2",
        "%2F",
        "%00",
        "..",
        "/",
        "a",
        "a/b",
        "\u{e9}",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

// ---------------------------------------------------------------------------------------------
// The archive

/// The roots every archive of these tests belongs to.
const SRC: &str = "/s";
const DST: &str = "/b";

/// A scratch file of this test thread, in a directory shared by the whole file: one file per
/// case would cost more than the parsing under test.
fn scratch(name: &str) -> PathBuf {
    static DIR: OnceLock<tempfile::TempDir> = OnceLock::new();
    let dir = DIR.get_or_init(|| tempfile::tempdir().unwrap());
    let thread = format!("{:?}", std::thread::current().id())
        .replace(|c: char| !c.is_ascii_alphanumeric(), "");
    dir.path().join(format!("{thread}-{name}"))
}

/// The text `archive::save` writes for `items` and the roots (SRC, DST), made without `save`'s
/// flush to disk, which would dominate the run time; `archive_round_trips` checks that the two
/// agree.
fn archive_text(items: &Items) -> Vec<u8> {
    archive::encode(Path::new(SRC), Path::new(DST), items).into_bytes()
}

/// Writes `bytes` as an archive and loads it for the roots (SRC, DST).
fn load_archive(bytes: &[u8]) -> Result<Option<Items>, String> {
    let path = scratch("archive.txt");
    std::fs::write(&path, bytes).unwrap();
    let result = archive::load(&path, Path::new(SRC), Path::new(DST)).map_err(|e| e.to_string());
    if let Err(message) = &result {
        // Every refusal names the file, so the user knows what to move away.
        assert!(
            message.contains(&path.display().to_string()),
            "the error does not name the archive: {message}"
        );
    }
    // Loading never rewrites the file, whatever it holds.
    assert_eq!(
        std::fs::read(&path).unwrap(),
        bytes,
        "load changed the file"
    );
    result
}

/// Paths whose entries differ between two trees.
fn changed_paths(a: &Items, b: &Items) -> BTreeSet<PathBuf> {
    a.keys()
        .chain(b.keys())
        .filter(|k| a.get(*k) != b.get(*k))
        .cloned()
        .collect()
}

fn is_plain_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Random bytes, and random archive-looking text, load as an error or a tree, never a panic.
    #[test]
    fn archive_load_never_panics_on_random_input(
        bytes in prop::collection::vec(any::<u8>(), 0..400),
        text in listing_like_text(),
    ) {
        let _ = load_archive(&bytes);
        let _ = load_archive(text.as_bytes());
        let mut with_header = format!("twoway-archive 1\nsource {SRC}\nbackup {DST}\n");
        with_header.push_str(&text);
        if let Ok(Some(items)) = load_archive(with_header.as_bytes()) {
            for rel in items.keys() {
                prop_assert!(is_plain_relative(rel), "{:?} leaves the tree", rel);
            }
        }
    }

    /// A truncated archive is always an error (dropping only the final newline loses nothing).
    #[test]
    fn truncated_archive_is_always_an_error(items in items(), cut in any::<prop::sample::Index>()) {
        let bytes = archive_text(&items);
        let cut = cut.index(bytes.len() - 1);
        let result = load_archive(&bytes[..cut]);
        prop_assert!(
            result.is_err(),
            "truncated to {} of {} bytes, loaded as {:?}", cut, bytes.len(), result
        );
    }

    /// An archive with one line removed or repeated is always an error.
    #[test]
    fn archive_with_a_line_removed_or_repeated_is_an_error(
        items in items(),
        which in any::<prop::sample::Index>(),
        repeat in any::<bool>(),
    ) {
        let bytes = archive_text(&items);
        let text = String::from_utf8(bytes).unwrap();
        let lines: Vec<&str> = text.lines().collect();
        let n = which.index(lines.len());
        // A repeated `end` line is text after the end: `text_after_the_end_line_is_refused`.
        prop_assume!(!(repeat && n == lines.len() - 1));
        let mut edited: Vec<&str> = Vec::new();
        for (i, l) in lines.iter().enumerate() {
            if i != n || repeat {
                edited.push(l);
            }
            if i == n && repeat {
                edited.push(l);
            }
        }
        let edited = edited.join("\n") + "\n";
        let result = load_archive(edited.as_bytes());
        prop_assert!(result.is_err(), "line {} {} and it still loaded: {:?}", n + 1,
            if repeat { "repeated" } else { "removed" }, result);
    }

    /// One byte changed anywhere: an error, or a tree that differs from the saved one in what a
    /// single edited line can hold (one entry changed, or one entry renamed), and that a save
    /// writes back as it was read.
    #[test]
    fn archive_with_one_byte_changed_reads_as_at_most_one_edited_entry(
        items in items(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = archive_text(&items);
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        if let Ok(Some(loaded)) = load_archive(&bytes) {
            prop_assert_eq!(loaded.len(), items.len());
            let changed = changed_paths(&items, &loaded);
            prop_assert!(changed.len() <= 2, "one byte changed {:?}", changed);
            for rel in loaded.keys() {
                prop_assert!(is_plain_relative(rel), "{:?} leaves the tree", rel);
            }
            prop_assert_eq!(load_archive(&archive_text(&loaded)), Ok(Some(loaded)));
        }
    }
}

proptest! {
    // These go through the real writer, which flushes to disk: fewer cases.
    #![proptest_config(config(CASES / 8))]

    /// What `save` writes is the text the other properties build, and `load` reads it back
    /// exactly.
    #[test]
    fn archive_round_trips(items in items()) {
        let path = scratch("saved.txt");
        archive::save(&path, Path::new(SRC), Path::new(DST), &items).unwrap();
        prop_assert_eq!(std::fs::read(&path).unwrap(), archive_text(&items));
        prop_assert_eq!(load_archive(&archive_text(&items)), Ok(Some(items)));
    }

    /// An archive is bound to its pair of roots: one saved for other roots is refused.
    #[test]
    fn archive_of_other_roots_is_refused(items in items(), other in 0..3usize) {
        let path = scratch("other-roots.txt");
        let (s, b) = [(SRC, "/elsewhere"), ("/elsewhere", DST), (DST, "/elsewhere")][other];
        archive::save(&path, Path::new(s), Path::new(b), &items).unwrap();
        prop_assert!(archive::load(&path, Path::new(SRC), Path::new(DST)).is_err());
    }

    /// The pair named the other way round is the same pair: its archive is read.
    #[test]
    fn archive_of_the_pair_named_the_other_way_round_is_read(items in items()) {
        let path = scratch("swapped-roots.txt");
        archive::save(&path, Path::new(DST), Path::new(SRC), &items).unwrap();
        prop_assert_eq!(
            archive::load(&path, Path::new(SRC), Path::new(DST)).unwrap(),
            Some(items)
        );
    }
}

// ---------------------------------------------------------------------------------------------
// Listing lines

proptest! {
    #![proptest_config(config(CASES * 2))]

    /// Any text decodes to an entry or to nothing, never a panic; what decodes is a plain
    /// relative path (a listing never points outside its tree) and encodes back to a line that
    /// decodes to the same entry.
    #[test]
    fn decode_item_never_panics_and_never_leaves_the_tree(
        line in prop_oneof![listing_like_text(), ".*", "[FDL] [0-9a-f%./ -]{0,90}"],
    ) {
        if let Some((rel, item)) = decode_item(&line) {
            prop_assert!(is_plain_relative(&rel), "{:?} leaves the tree", rel);
            let mut again = String::new();
            encode_item(&mut again, &rel, &item);
            prop_assert_eq!(decode_item(again.trim_end_matches('\n')), Some((rel, item)));
        }
    }

    /// Every entry, whatever bytes its name and link target hold, is one line that decodes to
    /// exactly that entry.
    #[test]
    fn encode_item_round_trips_any_byte_name(rel in rel_path(), item in item()) {
        let mut line = String::new();
        encode_item(&mut line, &rel, &item);
        prop_assert!(line.ends_with('\n'));
        prop_assert_eq!(line.matches('\n').count(), 1, "not one line: {:?}", line);
        let decoded = decode_item(&line[..line.len() - 1]);
        prop_assert_eq!(decoded, Some((rel, item)));
    }
}

// ---------------------------------------------------------------------------------------------
// Damage done to a saved file

/// How the saved cache file is damaged.
#[derive(Debug, Clone)]
enum Damage {
    Flip { at: prop::sample::Index, mask: u8 },
    Truncate(prop::sample::Index),
    Append(Vec<u8>),
    Insert { at: prop::sample::Index, byte: u8 },
    Remove(prop::sample::Index),
}

fn damage() -> impl Strategy<Value = Damage> {
    prop_oneof![
        (any::<prop::sample::Index>(), 1u8..=255).prop_map(|(at, mask)| Damage::Flip { at, mask }),
        any::<prop::sample::Index>().prop_map(Damage::Truncate),
        prop::collection::vec(any::<u8>(), 1..64).prop_map(Damage::Append),
        (any::<prop::sample::Index>(), any::<u8>())
            .prop_map(|(at, byte)| Damage::Insert { at, byte }),
        any::<prop::sample::Index>().prop_map(Damage::Remove),
    ]
}

fn apply(damage: &Damage, bytes: &mut Vec<u8>) {
    match damage {
        Damage::Flip { at, mask } => {
            let i = at.index(bytes.len());
            bytes[i] ^= mask;
        }
        Damage::Truncate(at) => bytes.truncate(at.index(bytes.len())),
        Damage::Append(more) => bytes.extend_from_slice(more),
        Damage::Insert { at, byte } => {
            let i = at.index(bytes.len() + 1);
            bytes.insert(i, *byte);
        }
        Damage::Remove(at) => {
            let i = at.index(bytes.len());
            bytes.remove(i);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// Regressions found by the properties above

/// Whatever follows the `end N` line is damage too (a second archive appended, a repeated end
/// line, text written after it): an archive that says more than its end line is not one whose
/// content can be trusted, and twoway refuses damaged archives rather than guess.
#[test]
fn text_after_the_end_line_is_refused() {
    let mut items = Items::new();
    items.insert(
        "a.txt".into(),
        Item::File {
            digest: [1; 32],
            size: 1,
            meta: Meta::plain(0o644, Timestamp { secs: 1, nanos: 0 }),
        },
    );
    let good = archive_text(&items);
    assert_eq!(load_archive(&good), Ok(Some(items)));
    let text = String::from_utf8(good).unwrap();
    for tail in [
        "end 1\n",
        "D 755 1.000000000 gone\n",
        concat!(
            "F 0101010101010101010101010101010101010101010101010101010101010101",
            " 1 644 1.000000000 b.txt\nend 2\n"
        ),
        "this is not an archive line\n",
    ] {
        let damaged = format!("{text}{tail}");
        let result = load_archive(damaged.as_bytes());
        assert!(
            result.is_err(),
            "archive with {tail:?} after its end line loaded as {result:?}"
        );
    }
}

// ---------------------------------------------------------------------------------------------
// The mirror's per-directory hash cache

fn stamp() -> impl Strategy<Value = Stamp> {
    (
        any::<u64>(),
        timestamp(),
        timestamp(),
        any::<u64>(),
        any::<u64>(),
    )
        .prop_map(|(size, mtime, ctime, ino, xattrs)| Stamp {
            size,
            mtime,
            ctime,
            ino,
            xattrs,
        })
}

/// Up to four directories, each with up to five file records sorted by name.
fn dir_blocks() -> impl Strategy<Value = BTreeMap<Vec<u8>, Vec<Record>>> {
    let side = || prop::option::of((stamp(), any::<[u8; 32]>()));
    let records = prop::collection::btree_map(component(), (side(), side()), 0..5).prop_map(|m| {
        m.into_iter()
            .map(|(name, (src, dst))| Record {
                name: name.into(),
                sides: [src, dst],
            })
            .collect::<Vec<_>>()
    });
    prop::collection::btree_map(
        prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 0..12),
        records,
        1..4,
    )
}

fn save_blocks(path: &Path, tag: &[u8], blocks: &BTreeMap<Vec<u8>, Vec<Record>>) {
    let _ = std::fs::remove_file(path);
    let mut cache = DirCache::open(path.to_path_buf(), tag.to_vec());
    let out = blocks
        .iter()
        .map(|(dir, records)| {
            (
                dir.clone().into_boxed_slice(),
                BlockOut::New(records.clone()),
            )
        })
        .collect();
    cache.save(out, &[], None).unwrap();
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Random bytes open as an empty cache.
    #[test]
    fn dir_cache_of_random_bytes_holds_nothing(
        bytes in prop::collection::vec(any::<u8>(), 0..300),
        dir in prop::collection::vec(any::<u8>(), 0..12),
    ) {
        let path = scratch("random.dircache");
        std::fs::write(&path, &bytes).unwrap();
        let cache = DirCache::open(path, b"/s\0/b".to_vec());
        prop_assert!(cache.block(&dir).is_empty());
    }

    /// A saved cache gives back every block; damaged anywhere, each block it still gives is
    /// exactly the one written (damage to one directory's block drops only that block).
    #[test]
    fn damaged_dir_cache_never_returns_a_record_not_written(
        blocks in dir_blocks(),
        damage in damage(),
    ) {
        let path = scratch("saved.dircache");
        let tag = b"/s\0/b";
        save_blocks(&path, tag, &blocks);
        let good = DirCache::open(path.clone(), tag.to_vec());
        for (dir, records) in &blocks {
            prop_assert_eq!(&good.block(dir), records);
        }
        let other_pair = DirCache::open(path.clone(), b"/s\0/c".to_vec());
        for dir in blocks.keys() {
            prop_assert!(other_pair.block(dir).is_empty());
        }

        let saved = std::fs::read(&path).unwrap();
        let mut bytes = saved.clone();
        apply(&damage, &mut bytes);
        prop_assume!(bytes != saved);
        std::fs::write(&path, &bytes).unwrap();
        let damaged = DirCache::open(path, tag.to_vec());
        for (dir, records) in &blocks {
            let got = damaged.block(dir);
            prop_assert!(got.is_empty() || &got == records,
                "a damaged cache ({:?}) returned other records for {:?}", damage, dir);
        }
    }
}

//! Fuzzing the parsers of the versioning crate's state files with proptest (issue 7; see
//! sync-core's `tests/parsers.rs` for why proptest): version manifests, `.info.json` and
//! `config.json`. Whatever they are given, they return a value or an error that names the file,
//! never panic, and never rewrite the file they read; a damaged manifest never reads as a version
//! with other contents. Each property runs a few thousand cases; the whole file takes seconds.

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::os::unix::ffi::OsStringExt;
use std::path::{Component, Path, PathBuf};

use proptest::prelude::*;
use serde_json::Value;
use sync_core::model::{Meta, NOT_CARRIED, Node, Timestamp};
use versioning::Links;
use versioning::manifest::{Item, Items, Manifest};
use versioning::recovery::{Config, INFO_FILE, Info};

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
// Manifests

fn component() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
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

fn timestamp() -> impl Strategy<Value = Timestamp> {
    (-5i64..2_000_000_000, 0u32..1_000_000_000).prop_map(|(secs, nanos)| Timestamp { secs, nanos })
}

/// Metadata as a version records it: owners and attributes carried or not.
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

fn leaf() -> impl Strategy<Value = Item> {
    let node = prop_oneof![
        Just(Node::Fifo),
        Just(Node::Socket),
        any::<u64>().prop_map(Node::Char),
        any::<u64>().prop_map(Node::Block),
    ];
    prop_oneof![
        3 => (any::<[u8; 32]>(), 0u64..1 << 40, 0u32..=0o7777, timestamp())
            .prop_flat_map(|(digest, size, mode, mtime)| meta(mode, mtime)
                .prop_map(move |meta| Item::File { digest, size, meta })),
        1 => (0u32..=0o7777, timestamp())
            .prop_flat_map(|(mode, mtime)| meta(mode, mtime).prop_map(|meta| Item::Dir { meta })),
        1 => (
            prop::collection::vec(any::<u8>().prop_filter("no NUL", |b| *b != 0), 1..24),
            timestamp()
        )
            .prop_flat_map(|(target, mtime)| meta(0o777, mtime).prop_map(move |meta| Item::Symlink {
                target: PathBuf::from(OsString::from_vec(target.clone())),
                meta,
            })),
        1 => (node, 0u32..=0o7777, timestamp())
            .prop_flat_map(|(node, mode, mtime)| meta(mode, mtime)
                .prop_map(move |meta| Item::Special { node, meta })),
    ]
}

/// A consistent tree, as a version holds: every ancestor of an entry is a directory entry.
fn tree_items() -> impl Strategy<Value = Items> {
    prop::collection::vec((prop::collection::vec(component(), 1..4), leaf()), 0..10).prop_map(
        |raw| {
            let mut items = Items::new();
            for (parts, item) in raw {
                let mut path = PathBuf::new();
                let mut blocked = false;
                for (i, part) in parts.iter().enumerate() {
                    path.push(OsString::from_vec(part.clone()));
                    if i + 1 < parts.len() {
                        match items.get(&path) {
                            Some(Item::Dir { .. }) => {}
                            Some(_) => {
                                blocked = true;
                                break;
                            }
                            None => {
                                items.insert(
                                    path.clone(),
                                    Item::Dir {
                                        meta: Meta::plain(0o755, Timestamp { secs: 7, nanos: 0 }),
                                    },
                                );
                            }
                        }
                    }
                }
                let has_children = items.keys().any(|k| k != &path && k.starts_with(&path));
                if !blocked && !items.contains_key(&path) && !has_children {
                    items.insert(path, item);
                }
            }
            items
        },
    )
}

/// A version's manifest: a consistent tree, its root's metadata or none (a manifest written
/// before it was recorded), and hard links: some files made further names of an earlier
/// file (and so given its content and metadata), as names of one inode are.
fn manifests() -> impl Strategy<Value = Manifest> {
    let root = prop_oneof![
        Just(None),
        (0u32..=0o7777, timestamp())
            .prop_flat_map(|(mode, mtime)| meta(mode, mtime).prop_map(Some)),
    ];
    (tree_items(), root, any::<u16>()).prop_map(|(mut items, root, chosen)| {
        let files: Vec<PathBuf> = items
            .iter()
            .filter(|(_, item)| matches!(item, Item::File { .. }))
            .map(|(rel, _)| rel.clone())
            .collect();
        let mut links = Links::default();
        if let Some((first, rest)) = files.split_first() {
            for (i, further) in rest.iter().enumerate() {
                if chosen & (1 << (i % 16)) != 0 {
                    let item = items[first].clone();
                    items.insert(further.clone(), item);
                    assert!(links.insert(further.clone(), first.clone()));
                }
            }
        }
        Manifest::of(root, items, links)
    })
}

fn manifest_path() -> &'static Path {
    Path::new("/versions/docs/.v-18a-1.manifest")
}

/// Decodes `text`; an error must name the manifest.
fn decode(text: &str) -> Result<Manifest, String> {
    Manifest::decode(text, manifest_path()).map_err(|e| {
        let message = e.to_string();
        assert!(
            message.contains(&manifest_path().display().to_string()),
            "the error does not name the manifest: {message}"
        );
        message
    })
}

fn manifest_like_text() -> impl Strategy<Value = String> {
    let token = prop::sample::select(vec![
        "dirsync-manifest 1",
        "dirsync-manifest 2",
        "digest ",
        "full-digest ",
        "R",
        "H",
        "-:-:0",
        "0:65534:1f",
        "digest e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855",
        "F",
        "D",
        "L",
        " ",
        "\n",
        "755",
        "1.000000000",
        "-1.5",
        "0",
        "%",
        "%2F",
        "..",
        "/",
        "a",
        "a/b",
        "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
    ]);
    prop::collection::vec(token, 0..40).prop_map(|t| t.concat())
}

fn is_plain_relative(path: &Path) -> bool {
    !path.as_os_str().is_empty() && path.components().all(|c| matches!(c, Component::Normal(_)))
}

proptest! {
    #![proptest_config(config(CASES))]

    /// Random text decodes as a manifest or an error naming the file, never a panic; a decoded
    /// manifest only holds plain relative paths (a restore never writes outside its directory).
    #[test]
    fn manifest_decode_never_panics(
        text in prop_oneof![manifest_like_text(), ".*"],
        bytes in prop::collection::vec(any::<u8>(), 0..300),
    ) {
        for t in [text, String::from_utf8_lossy(&bytes).into_owned()] {
            if let Ok(m) = decode(&t) {
                for rel in m.items.keys() {
                    prop_assert!(is_plain_relative(rel), "{:?} leaves the version", rel);
                }
            }
        }
    }

    /// What `encode` writes, `decode` reads back exactly.
    #[test]
    fn manifest_round_trips(m in manifests()) {
        prop_assert_eq!(decode(&m.encode()), Ok(m));
    }

    /// A truncated manifest is always an error (dropping only the final newline loses nothing).
    #[test]
    fn truncated_manifest_is_always_an_error(
        m in manifests(),
        cut in any::<prop::sample::Index>(),
    ) {
        let text = m.encode();
        let cut = cut.index(text.len() - 1);
        prop_assume!(text.is_char_boundary(cut));
        let result = decode(&text[..cut]);
        prop_assert!(
            result.is_err(),
            "truncated to {} of {} bytes, decoded as {:?}", cut, text.len(), result
        );
    }

    /// A manifest with one line removed or repeated is always an error: the full digest covers
    /// every entry (a directory with entries beneath it, which the seed's tree digest implies
    /// rather than records, included), the root line and the hard links.
    #[test]
    fn manifest_with_a_line_removed_or_repeated_is_an_error(
        m in manifests(),
        which in any::<prop::sample::Index>(),
        repeat in any::<bool>(),
    ) {
        let text = m.encode();
        let lines: Vec<&str> = text.lines().collect();
        let n = which.index(lines.len());
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
        let result = decode(&edited);
        prop_assert!(
            result.is_err(),
            "line {} ({:?}) {} and it still decoded", n + 1, lines[n],
            if repeat { "repeated" } else { "removed" }
        );
    }

    /// One byte changed anywhere: an error, or the same manifest (a hex digit or an escape
    /// written in the other case).
    #[test]
    fn manifest_with_one_byte_changed_never_reads_as_other_contents(
        m in manifests(),
        at in any::<prop::sample::Index>(),
        byte in any::<u8>(),
    ) {
        let mut bytes = m.encode().into_bytes();
        let i = at.index(bytes.len());
        prop_assume!(bytes[i] != byte);
        bytes[i] = byte;
        let Ok(text) = String::from_utf8(bytes) else {
            // Not text: `Manifest::read` refuses it before decoding.
            return Ok(());
        };
        if let Ok(got) = decode(&text) {
            prop_assert_eq!(got, m);
        }
    }
}

// ---------------------------------------------------------------------------------------------
// config.json and .info.json

/// Any JSON value, shaped often enough like the files to reach every check.
fn json_value() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::Bool),
        any::<i64>().prop_map(Value::from),
        (-1e9f64..1e9).prop_map(Value::from),
        prop::sample::select(vec![
            "",
            "oneway",
            "sh",
            "/bin/sh",
            "./missing",
            "/no/such/program",
            "--interval",
            "60",
            "/abs/dir",
            "relative/dir",
            "..",
            "a/b",
            "\u{0}",
            "caf\u{e9}",
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            prop::collection::btree_map(
                prop::sample::select(vec![
                    "script", "interval", "docs", "docs-2", "", ".", "..", "a/b", "name"
                ])
                .prop_map(str::to_owned),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// JSON-ish text: whole values, values cut short or with one byte changed, token soup, and
/// arbitrary text.
fn json_text() -> impl Strategy<Value = Vec<u8>> {
    let tokens = prop::collection::vec(
        prop::sample::select(vec![
            "{",
            "}",
            "[",
            "]",
            ":",
            ",",
            "\"",
            "\"script\"",
            "\"interval\"",
            "\"--interval\"",
            "\"60\"",
            "\"/bin/sh\"",
            "\"/abs\"",
            "null",
            "true",
            "1e400",
            "-0",
            " ",
            "\n",
            "\\u0000",
            "\\ud800",
        ]),
        0..30,
    )
    .prop_map(|t| t.concat().into_bytes());
    prop_oneof![
        json_value().prop_map(|v| v.to_string().into_bytes()),
        (json_value(), any::<prop::sample::Index>()).prop_map(|(v, cut)| {
            let text = serde_json::to_string_pretty(&v).unwrap().into_bytes();
            let n = cut.index(text.len() + 1);
            text[..n].to_vec()
        }),
        (json_value(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(v, at, b)| {
            let mut text = v.to_string().into_bytes();
            let i = at.index(text.len());
            text[i] = b;
            text
        }),
        tokens,
        prop::collection::vec(any::<u8>(), 0..200),
    ]
}

proptest! {
    #![proptest_config(config(CASES))]

    /// `.info.json` of any content loads or fails naming the file, never panics, and is never
    /// rewritten; what loads maps plain names to absolute paths.
    #[test]
    fn info_load_never_panics_and_never_rewrites(bytes in json_text()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join(INFO_FILE);
        std::fs::write(&path, &bytes).unwrap();
        match Info::load(dir.path()) {
            Ok(info) => {
                for (key, target) in &info.keys {
                    prop_assert!(!key.is_empty() && !key.contains('/') && key != "." && key != "..",
                        "key {:?} is not a plain name", key);
                    prop_assert!(target.is_absolute(), "{:?} is not absolute", target);
                }
            }
            Err(err) => {
                let message = sync_core::error::one_line(&err);
                prop_assert!(
                    message.contains(INFO_FILE),
                    "the error does not name the file: {}", message
                );
            }
        }
        prop_assert_eq!(std::fs::read(&path).unwrap(), bytes, ".info.json was rewritten");
    }

    /// `config.json` of any content loads or fails naming the file, never panics, and is never
    /// rewritten; what loads names a program that exists.
    #[test]
    fn config_load_never_panics_and_never_rewrites(bytes in json_text()) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, &bytes).unwrap();
        match Config::load_or_create(&path) {
            Ok(config) => prop_assert!(config.program.is_file(), "{:?}", config.program),
            Err(err) => {
                let message = sync_core::error::one_line(&err);
                prop_assert!(
                    message.contains("config.json"),
                    "the error does not name the file: {}", message
                );
            }
        }
        prop_assert_eq!(std::fs::read(&path).unwrap(), bytes, "config.json was rewritten");
        let others: BTreeSet<_> = std::fs::read_dir(dir.path()).unwrap()
            .map(|e| e.unwrap().file_name()).collect();
        prop_assert_eq!(others.len(), 1, "files left beside config.json: {:?}", others);
    }
}

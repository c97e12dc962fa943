//! A tree written down as text, one entry per line: the format shared by version manifests
//! and the two-way archive.
//!
//! `F <sha256> <size> <mode> <mtime> <path>`, `D <mode> <mtime> <path>`,
//! `L <mtime> <path> <target>`, `S <node> <mode> <mtime> <path>` (a node: `p` FIFO, `s`
//! socket, `c<dev>` or `b<dev>` a device, its number in hex); modes in octal, mtimes as
//! `secs.nanos`. Where owners or extended attributes are carried, the line ends with
//! `+<uid>:<gid>:<xattrs>` (`-` for what is not carried; the attributes' digest in hex): lines
//! written before they were carried read as carrying none. The root of a tree, where a
//! listing records it (the two-way archive), is the directory named `.`. Paths and link targets
//! are percent-encoded bytes, so any name (newlines, spaces, bytes that are not UTF-8)
//! round-trips exactly, and a line never holds a space that is not a separator.

use std::ffi::OsString;
use std::fmt::Write as _;
use std::io::{self, Write};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::{Path, PathBuf};

use checksum::Digest;

use crate::model::{Item, Meta, NOT_CARRIED, Node, Timestamp};

/// Appends the line of one entry (with its newline) to `out`, with no allocation of its own:
/// a two-way pass writes one line per entry of its archive.
pub fn encode_item(out: &mut String, rel: &Path, item: &Item) {
    let path = match rel.as_os_str().as_bytes() {
        // The root has no name: it is written `.`, which no entry below it is.
        b"" => ROOT.as_bytes(),
        path => path,
    };
    let meta = item.meta();
    let (mode, mtime) = (meta.mode, meta.mtime);
    let _ = match item {
        Item::File { digest, size, .. } => {
            out.push_str("F ");
            push_hex(out, digest);
            write!(out, " {size} {mode:o} {}.{:09} ", mtime.secs, mtime.nanos)
        }
        Item::Dir { .. } => {
            write!(out, "D {mode:o} {}.{:09} ", mtime.secs, mtime.nanos)
        }
        Item::Symlink { .. } => write!(out, "L {}.{:09} ", mtime.secs, mtime.nanos),
        Item::Special { node, .. } => {
            let _ = match node {
                Node::Fifo => write!(out, "S p"),
                Node::Socket => write!(out, "S s"),
                Node::Char(dev) => write!(out, "S c{dev:x}"),
                Node::Block(dev) => write!(out, "S b{dev:x}"),
            };
            write!(out, " {mode:o} {}.{:09} ", mtime.secs, mtime.nanos)
        }
    };
    escape_into(out, path);
    if let Item::Symlink { target, .. } = item {
        out.push(' ');
        escape_into(out, target.as_os_str().as_bytes());
    }
    if meta.uid != NOT_CARRIED || meta.gid != NOT_CARRIED || meta.xattrs != 0 {
        out.push_str(" +");
        for id in [meta.uid, meta.gid] {
            let _ = match id {
                NOT_CARRIED => write!(out, "-:"),
                id => write!(out, "{id}:"),
            };
        }
        let _ = write!(out, "{:x}", meta.xattrs);
    }
    out.push('\n');
}

/// Parses the `+<uid>:<gid>:<xattrs>` field of [`encode_item`].
fn parse_extra(field: &str) -> Option<(u32, u32, u64)> {
    let mut parts = field.strip_prefix('+')?.split(':');
    let mut id = || -> Option<u32> {
        match parts.next()? {
            "-" => Some(NOT_CARRIED),
            n => n.parse().ok().filter(|&n| n != NOT_CARRIED),
        }
    };
    let (uid, gid) = (id()?, id()?);
    let xattrs = u64::from_str_radix(parts.next()?, 16).ok()?;
    parts.next().is_none().then_some((uid, gid, xattrs))
}

/// Appends `bytes` to `out` as lowercase hex.
fn push_hex(out: &mut String, bytes: &[u8]) {
    const DIGITS: &[u8; 16] = b"0123456789abcdef";
    for &b in bytes {
        out.push(char::from(DIGITS[usize::from(b >> 4)]));
        out.push(char::from(DIGITS[usize::from(b & 0xf)]));
    }
}

/// Parses the line of one entry; `None` if it is malformed, or if its path is not a plain
/// relative path (a listing must never point outside its tree).
pub fn decode_item(line: &str) -> Option<(PathBuf, Item)> {
    parse_item(line, parse_path)
}

/// How [`encode_item`] names the root of a tree (the empty path): a name no entry has.
pub const ROOT: &str = ".";

/// Parses the line [`encode_item`] writes for the root of a tree (a directory named
/// [`ROOT`]); `None` for any other line. Only a listing that records its root (the two-way
/// archive) reads it: [`decode_item`] refuses the name.
pub fn decode_root(line: &str) -> Option<Item> {
    let root = |s: &str| (s == ROOT).then(PathBuf::new);
    match parse_item(line, root)? {
        (_, item @ Item::Dir { .. }) => Some(item),
        _ => None,
    }
}

/// The name prefix of the temporary file [`write_atomically`] renames into place; a leftover
/// of a killed write starts with it.
pub const TEMP_PREFIX: &str = ".listing-tmp-";

/// Writes `text` to `path` atomically: a temporary file in the same directory, flushed, then
/// renamed over the old one.
///
/// Fails if the directory cannot be written.
pub fn write_atomically(path: &Path, text: &str) -> io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("."));
    let mut tmp = tempfile::Builder::new()
        .prefix(TEMP_PREFIX)
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.as_file().sync_all()?;
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

/// Percent-encodes a path for one field of a line.
pub fn encode_path(path: &Path) -> String {
    escape(path.as_os_str().as_bytes())
}

/// Decodes a field written by [`encode_path`].
pub fn decode_path(field: &str) -> Option<PathBuf> {
    unescape(field).map(|b| PathBuf::from(OsString::from_vec(b)))
}

/// Each byte's value as a hex digit, or `0xFF` if it is not one.
const HEX_VALUE: [u8; 256] = {
    let mut table = [0xFF; 256];
    let mut i = 0;
    while i < 10 {
        table[b'0' as usize + i] = i as u8;
        i += 1;
    }
    let mut i = 0;
    while i < 6 {
        table[b'a' as usize + i] = 10 + i as u8;
        table[b'A' as usize + i] = 10 + i as u8;
        i += 1;
    }
    table
};

/// The byte that two hex digits spell.
fn hex_byte(hi: u8, lo: u8) -> Option<u8> {
    let (hi, lo) = (HEX_VALUE[usize::from(hi)], HEX_VALUE[usize::from(lo)]);
    ((hi | lo) < 16).then_some(hi << 4 | lo)
}

/// Parses a lowercase or uppercase hex SHA-256.
pub fn parse_digest(s: &str) -> Option<Digest> {
    let s = s.as_bytes();
    if s.len() != 64 {
        return None;
    }
    // Invalid digits are collected rather than tested one by one: a branch per digit cost
    // more than the rest of a listing line's parsing put together.
    let mut digest = [0; 32];
    let mut invalid = 0;
    for (byte, pair) in digest.iter_mut().zip(s.chunks_exact(2)) {
        let (hi, lo) = (
            HEX_VALUE[usize::from(pair[0])],
            HEX_VALUE[usize::from(pair[1])],
        );
        invalid |= hi | lo;
        *byte = hi << 4 | lo;
    }
    (invalid < 16).then_some(digest)
}

fn parse_time(s: &str) -> Option<Timestamp> {
    let (secs, nanos) = s.split_once('.')?;
    let nanos: u32 = nanos.parse().ok()?;
    (nanos < 1_000_000_000).then_some(())?;
    Some(Timestamp {
        secs: secs.parse().ok()?,
        nanos,
    })
}

fn parse_mode(s: &str) -> Option<u32> {
    u32::from_str_radix(s, 8).ok().filter(|m| *m <= 0o7777)
}

fn parse_path(s: &str) -> Option<PathBuf> {
    let bytes = unescape(s)?;
    // Only plain relative paths, written exactly as a scan names them: every component a
    // name, so no leading or trailing `/`, no `a//b`, no `.` or `..` (a manifest must never
    // point a restore outside its tree).
    let plain = bytes
        .split(|&b| b == b'/')
        .all(|c| !c.is_empty() && c != b"." && c != b"..");
    plain.then(|| PathBuf::from(OsString::from_vec(bytes)))
}

fn parse_item(line: &str, parse_path: impl Fn(&str) -> Option<PathBuf>) -> Option<(PathBuf, Item)> {
    let mut f = line.split(' ');
    let meta = |mode, mtime| Meta::plain(mode, mtime);
    let (rel, item) = match f.next()? {
        "F" => {
            let digest = parse_digest(f.next()?)?;
            let size = f.next()?.parse().ok()?;
            let mode = parse_mode(f.next()?)?;
            let mtime = parse_time(f.next()?)?;
            let rel = parse_path(f.next()?)?;
            let meta = meta(mode, mtime);
            (rel, Item::File { digest, size, meta })
        }
        "D" => {
            let mode = parse_mode(f.next()?)?;
            let mtime = parse_time(f.next()?)?;
            let meta = meta(mode, mtime);
            (parse_path(f.next()?)?, Item::Dir { meta })
        }
        "L" => {
            let mtime = parse_time(f.next()?)?;
            let rel = parse_path(f.next()?)?;
            let target = PathBuf::from(OsString::from_vec(unescape(f.next()?)?));
            let meta = meta(0o777, mtime);
            (rel, Item::Symlink { target, meta })
        }
        "S" => {
            let node = f.next()?;
            let dev = || u64::from_str_radix(node.get(1..)?, 16).ok();
            let node = match node.as_bytes().first()? {
                b'p' if node.len() == 1 => Node::Fifo,
                b's' if node.len() == 1 => Node::Socket,
                b'c' => Node::Char(dev()?),
                b'b' => Node::Block(dev()?),
                _ => return None,
            };
            let mode = parse_mode(f.next()?)?;
            let mtime = parse_time(f.next()?)?;
            let meta = meta(mode, mtime);
            (parse_path(f.next()?)?, Item::Special { node, meta })
        }
        _ => return None,
    };
    let item = match f.next() {
        None => item,
        Some(extra) => {
            let (uid, gid, xattrs) = parse_extra(extra)?;
            let meta = Meta {
                uid,
                gid,
                xattrs,
                ..*item.meta()
            };
            item.with_meta(meta)
        }
    };
    f.next().is_none().then_some((rel, item))
}

/// Percent-encodes every byte that is not printable ASCII, plus `%` and space.
fn escape(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len());
    escape_into(&mut out, bytes);
    out
}

fn escape_into(out: &mut String, bytes: &[u8]) {
    for &b in bytes {
        if b.is_ascii_graphic() && b != b'%' {
            out.push(b as char);
        } else {
            let _ = write!(out, "%{b:02X}");
        }
    }
}

fn unescape(s: &str) -> Option<Vec<u8>> {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        match bytes[i] {
            b'%' => {
                let (&hi, &lo) = (bytes.get(i + 1)?, bytes.get(i + 2)?);
                out.push(hex_byte(hi, lo)?);
                i += 3;
            }
            b if b.is_ascii_graphic() => {
                out.push(b);
                i += 1;
            }
            _ => return None,
        }
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::Items;

    #[test]
    fn items_round_trip_odd_names() {
        let t = Timestamp { secs: -5, nanos: 7 };
        // Every byte different, most with two different nibbles: the hex is pinned below.
        let digest: Digest = std::array::from_fn(|i| (i as u8) * 7 + 0x0d);
        let mut items = Items::new();
        items.insert(
            "d".into(),
            Item::Dir {
                meta: Meta::plain(0o755, t),
            },
        );
        items.insert(
            PathBuf::from(OsString::from_vec(b"d/caf\xe9 %\n.txt".to_vec())),
            Item::File {
                digest,
                size: 12,
                meta: Meta::plain(0o640, t),
            },
        );
        items.insert(
            "l".into(),
            Item::Symlink {
                target: "../a b".into(),
                meta: Meta::plain(0o777, t),
            },
        );
        let mut text = String::new();
        for (rel, item) in &items {
            encode_item(&mut text, rel, item);
        }
        let back: Items = text.lines().map(|l| decode_item(l).unwrap()).collect();
        assert_eq!(back, items);
        // The format itself, as earlier versions wrote it: their archives must still read.
        assert_eq!(
            text.lines().collect::<Vec<_>>(),
            [
                "D 755 -5.000000007 d".to_string(),
                format!(
                    "F {} 12 640 -5.000000007 d/caf%E9%20%25%0A.txt",
                    hex::encode(digest)
                ),
                "L -5.000000007 l ../a%20b".to_string(),
            ]
        );
        assert_eq!(
            text.lines().count(),
            3,
            "one line per entry, whatever the names hold"
        );
    }

    #[test]
    fn the_root_is_written_as_a_dot_and_read_only_as_the_root() {
        let meta = Meta {
            uid: 65534,
            gid: 7,
            xattrs: 0xab,
            ..Meta::plain(0o750, Timestamp { secs: 3, nanos: 4 })
        };
        let root = Item::Dir { meta };
        let mut line = String::new();
        encode_item(&mut line, Path::new(""), &root);
        assert_eq!(line, "D 750 3.000000004 . +65534:7:ab\n");
        assert_eq!(decode_root(line.trim_end()), Some(root));
        // A manifest never names its root, nor anything `.`.
        assert_eq!(decode_item(line.trim_end()), None);
        assert_eq!(decode_root("D 750 3.000000004 a"), None);
        assert_eq!(decode_root("F 00 1 644 3.000000004 ."), None);
    }

    #[test]
    fn digests_parse_in_either_case_and_nothing_else_does() {
        let digest: Digest = std::array::from_fn(|i| (i * 37) as u8);
        let lower = hex::encode(digest);
        assert_eq!(parse_digest(&lower), Some(digest));
        assert_eq!(parse_digest(&lower.to_uppercase()), Some(digest));
        assert_eq!(parse_digest(&lower[..62]), None);
        assert_eq!(parse_digest(&format!("{lower}0")), None);
        // A bad digit anywhere spoils the whole digest, whatever the digit next to it.
        for at in 0..64 {
            for bad in ["g", "G", " ", "+", "-", "\u{0}", "/", ":", "@", "`"] {
                let mut text = lower.clone();
                text.replace_range(at..at + 1, bad);
                assert_eq!(parse_digest(&text), None, "{text}");
            }
        }
    }

    #[test]
    fn escapes_need_two_hex_digits() {
        assert_eq!(decode_path("a%20b%2Fc%25"), Some(PathBuf::from("a b/c%")));
        for bad in ["a%2", "a%", "a%+1", "a%-1", "a%g0", "a%0g", "a b"] {
            assert_eq!(decode_path(bad), None, "{bad}");
        }
    }

    #[test]
    fn paths_leaving_the_tree_are_rejected() {
        for bad in [
            "D 755 1.000000000 ../x",
            "D 755 1.000000000 /etc",
            "D 755 1.000000000 a/../b",
        ] {
            assert!(decode_item(bad).is_none(), "{bad}");
        }
    }
}

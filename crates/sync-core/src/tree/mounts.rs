//! File systems mounted inside a local tree: where they are (from the kernel's own list,
//! `/proc/self/mountinfo`, which no user can forge), and the list of them a pass leaves for the
//! next, so that a mount point found unmounted is not taken for a directory emptied by its
//! owner (its content would be deleted from BACKUP, then rotated out of the versions).

use std::ffi::OsString;
use std::fs;
use std::io;
use std::os::unix::ffi::OsStringExt;
use std::path::{Path, PathBuf};

/// The mount points strictly inside the directory `root` (canonical), relative to it, in
/// path order.
///
/// Fails if the kernel's list cannot be read.
pub fn mounted_under(root: &Path) -> io::Result<Vec<PathBuf>> {
    let table = fs::read("/proc/self/mountinfo")?;
    let mut under: Vec<PathBuf> = table
        .split(|&b| b == b'\n')
        // Fields: id, parent id, major:minor, root, mount point, ... (proc(5)).
        .filter_map(|line| line.split(|&b| b == b' ').nth(4))
        .map(|field| PathBuf::from(OsString::from_vec(unescape(field))))
        .filter_map(|point| {
            point
                .strip_prefix(root)
                .ok()
                .filter(|rel| !rel.as_os_str().is_empty())
                .map(Path::to_path_buf)
        })
        .collect();
    under.sort_by(|a, b| crate::model::path_order(a, b));
    under.dedup();
    Ok(under)
}

/// A mount point as the kernel writes it: space, tab, newline and backslash as `\ooo`.
fn unescape(field: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(field.len());
    let mut i = 0;
    while i < field.len() {
        let octal = field
            .get(i + 1..i + 4)
            .filter(|d| d.iter().all(|c| (b'0'..=b'7').contains(c)));
        match (field[i], octal) {
            (b'\\', Some(d)) => {
                out.push(d.iter().fold(0u8, |n, c| n.wrapping_mul(8) + (c - b'0')));
                i += 4;
            }
            (b, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    out
}

/// The mount points a pass found in each root (SOURCE's, then BACKUP's), kept for the next.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Recorded {
    /// Per side, relative to its root.
    pub sides: [Vec<PathBuf>; 2],
}

impl Recorded {
    /// What the file at `path` records; nothing if there is none (or it cannot be read: the
    /// record only ever adds protection).
    pub fn load(path: &Path) -> Recorded {
        let Ok(text) = fs::read_to_string(path) else {
            return Recorded::default();
        };
        let mut recorded = Recorded::default();
        for line in text.lines() {
            let (side, rel) = match line.split_once(' ') {
                Some(("S", rel)) => (0, rel),
                Some(("B", rel)) => (1, rel),
                _ => continue,
            };
            if let Some(rel) = crate::state::text::decode_path(rel) {
                recorded.sides[side].push(rel);
            }
        }
        recorded
    }

    /// Writes the record to `path`, atomically.
    ///
    /// Fails if it cannot be written.
    pub fn save(&self, path: &Path) -> io::Result<()> {
        let mut text = String::new();
        for (tag, rels) in ["S", "B"].iter().zip(&self.sides) {
            for rel in rels {
                text.push_str(tag);
                text.push(' ');
                text.push_str(&crate::state::text::encode_path(rel));
                text.push('\n');
            }
        }
        // The cache's directory, where the record lives, may not be made yet.
        if let Some(dir) = path.parent() {
            fs::create_dir_all(dir)?;
        }
        crate::state::text::write_atomically(path, &text)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mount_points_are_read_as_the_kernel_escapes_them() {
        assert_eq!(unescape(br"/mnt/a\040b\011c\134d"), b"/mnt/a b\tc\\d");
        assert_eq!(unescape(br"/x\04"), br"/x\04");
        // The root of every tree here holds /proc at least.
        let under = mounted_under(Path::new("/")).unwrap();
        assert!(under.iter().any(|p| p == Path::new("proc")), "{under:?}");
    }

    #[test]
    fn a_record_reads_back_as_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("mounts");
        let recorded = Recorded {
            sides: [
                vec![PathBuf::from("usb"), PathBuf::from("a b/c\nd")],
                vec![PathBuf::from("x")],
            ],
        };
        recorded.save(&path).unwrap();
        assert_eq!(Recorded::load(&path), recorded);
        assert_eq!(
            Recorded::load(&dir.path().join("none")),
            Recorded::default()
        );
    }
}

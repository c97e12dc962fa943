//! Where the program keeps files of its own outside the roots: the cache directory (the hash
//! cache), the sync-state directory (two-way archives) and the lock directory (the locks of
//! [`crate::run::lock`]); and the absolute form of a directory that may no longer exist.

use std::ffi::OsString;
use std::io;
use std::path::{Path, PathBuf};

/// The user's cache directory for this program: `$XDG_CACHE_HOME/oneway`, else
/// `~/.cache/oneway`, absolute; `None` if neither variable is set. The hash cache lives there
/// (`hash::open` finds it the same way).
pub fn cache_dir() -> Option<PathBuf> {
    let base = std::env::var_os("XDG_CACHE_HOME")
        .filter(|v| !v.is_empty())
        .map(PathBuf::from)
        .or_else(|| std::env::var_os("HOME").map(|h| PathBuf::from(h).join(".cache")))?;
    std::path::absolute(base.join("oneway")).ok()
}

/// Where the program keeps state that must outlive a cache (deleting it would make a two-way
/// pass take both sides for new and merge them, bringing back what was deleted): the two-way
/// archive of each pair. `$XDG_STATE_HOME/oneway`; else `/var/lib/oneway` for root, and
/// `~/.local/state/oneway` for anyone else; absolute. `None` if there is none (a user other
/// than root with neither `XDG_STATE_HOME` nor `HOME`).
pub fn sync_state_dir() -> Option<PathBuf> {
    let base = match std::env::var_os("XDG_STATE_HOME").filter(|v| !v.is_empty()) {
        Some(base) => PathBuf::from(base),
        None if rustix::process::geteuid().is_root() && Path::new("/var/lib").is_dir() => {
            PathBuf::from("/var/lib")
        }
        None => PathBuf::from(std::env::var_os("HOME")?).join(".local/state"),
    };
    std::path::absolute(base.join("oneway")).ok()
}

/// Where the running user's lock files live: `/run/oneway` for root, `locks` in the cache
/// directory for everyone else (and for root on a system without `/run`).
///
/// Both are the same for every process of the user, whatever its environment (cron, a login,
/// a service): `$XDG_RUNTIME_DIR` is unset under cron and removed at logout, so two runs of one
/// user could pick two directories and both run. `/run` is root's own and emptied at boot, so
/// root's locks need no home directory.
///
/// `None` if there is none (a user other than root with neither `XDG_CACHE_HOME` nor `HOME`).
pub fn lock_dir() -> Option<PathBuf> {
    if rustix::process::geteuid().is_root() && Path::new("/run").is_dir() {
        return Some(PathBuf::from("/run/oneway"));
    }
    cache_dir().map(|dir| dir.join("locks"))
}

/// The absolute form of `dir`, which need not exist any more: its deepest existing ancestor
/// canonicalized, the rest appended (`..` taken away, `.` left out).
///
/// Fails only if the current directory is needed and cannot be read.
pub fn absolute_dir(dir: &Path) -> io::Result<PathBuf> {
    let abs = std::path::absolute(dir)?;
    let mut rest: Vec<OsString> = Vec::new();
    let mut cur = abs.as_path();
    loop {
        if let Ok(real) = std::fs::canonicalize(cur) {
            let mut out = real;
            for part in rest.iter().rev() {
                match part.to_str() {
                    Some("..") => {
                        out.pop();
                    }
                    Some(".") => {}
                    _ => out.push(part),
                }
            }
            return Ok(out);
        }
        match (cur.parent(), cur.file_name()) {
            (Some(parent), Some(name)) => {
                rest.push(name.to_os_string());
                cur = parent;
            }
            _ => return Ok(abs),
        }
    }
}

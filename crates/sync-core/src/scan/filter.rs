//! Which paths a pass leaves alone on both sides: the `--exclude` globs, our own log file,
//! (in two-way passes) names of our temporary form, and what is below a mount point with
//! `--one-file-system`.

use std::collections::HashSet;
use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use globset::{GlobBuilder, GlobSet, GlobSetBuilder};

use crate::error::Error;

/// Which paths a pass leaves alone on both sides.
#[derive(Debug, Default)]
pub struct Filter {
    names: GlobSet,
    paths: GlobSet,
    exact: HashSet<PathBuf>,
    temp_names: bool,
    /// Directories whose content is left alone this pass (mount points, with
    /// `--one-file-system`); set at the start of each pass, before anything is listed.
    uncrossed: std::sync::RwLock<HashSet<PathBuf>>,
    /// `uncrossed` is not empty: asked on every name listed, so the lock is taken only then.
    crossing: std::sync::atomic::AtomicBool,
}

impl Filter {
    /// Builds the filter from `--exclude` globs: a pattern without `/` matches a base name at
    /// any depth (as in rsync), one with `/` (a leading one included) matches the path
    /// relative to the root.
    ///
    /// Fails if a pattern is not a valid glob.
    pub fn new(patterns: &[String]) -> Result<Filter, Error> {
        let mut names = GlobSetBuilder::new();
        let mut paths = GlobSetBuilder::new();
        for pattern in patterns {
            let trimmed = pattern.trim_start_matches('/').trim_end_matches('/');
            // `*` stops at `/`, as in rsync and shells: `build/*` names build's children.
            let glob = GlobBuilder::new(trimmed)
                .literal_separator(true)
                .build()
                .map_err(|e| Error::BadExclude {
                    pattern: pattern.clone(),
                    message: e.kind().to_string(),
                })?;
            // A leading `/` anchors a pattern at the root, as in rsync: `/build` is only the
            // top-level build, `build` is any.
            if pattern.starts_with('/') || trimmed.contains('/') {
                paths.add(glob);
            } else {
                names.add(glob);
            }
        }
        let build = |b: GlobSetBuilder, pattern: &str| {
            b.build().map_err(|e| Error::BadExclude {
                pattern: pattern.to_string(),
                message: e.to_string(),
            })
        };
        Ok(Filter {
            names: build(names, "")?,
            paths: build(paths, "")?,
            exact: HashSet::new(),
            uncrossed: Default::default(),
            crossing: Default::default(),
            temp_names: false,
        })
    }

    /// Also leaves alone the temporary files of our own safe writes (`.oneway-tmp-XXXXXX`):
    /// a two-way pass must never carry a half-written leftover of a killed run to the other
    /// side. (A mirror needs no such rule: it removes whatever SOURCE does not hold.)
    pub fn skip_temp_files(&mut self) {
        self.temp_names = true;
    }

    /// Also leaves alone one exact relative path (our own log file, if it lies in a root).
    pub fn exclude_exact(&mut self, rel: PathBuf) {
        self.exact.insert(rel);
    }

    /// From now on, leaves alone what the directories `dirs` hold (not the directories
    /// themselves), in place of those it left alone before.
    pub fn leave_contents_of(&self, dirs: impl IntoIterator<Item = PathBuf>) {
        use std::sync::atomic::Ordering;
        let mut uncrossed = self.uncrossed.write().unwrap_or_else(|e| e.into_inner());
        uncrossed.clear();
        uncrossed.extend(dirs);
        self.crossing
            .store(!uncrossed.is_empty(), Ordering::Release);
    }

    /// True if `name`, a child of the directory `dir` (relative to the root), is left alone.
    /// Builds the child's path only when a rule needs it (patterns with `/`, exact paths).
    pub fn excludes_child(&self, dir: &Path, name: &OsStr) -> bool {
        self.excludes_name(name)
            || (!(self.paths.is_empty() && self.exact.is_empty())
                && self.excludes_path(&dir.join(name)))
            || (self.crossing.load(std::sync::atomic::Ordering::Acquire)
                && self
                    .uncrossed
                    .read()
                    .unwrap_or_else(|e| e.into_inner())
                    .contains(dir))
    }

    /// True if `rel` (whose last component is `name`) is left alone.
    pub fn excludes(&self, rel: &Path, name: &OsStr) -> bool {
        self.excludes_name(name) || self.excludes_path(rel)
    }

    fn excludes_name(&self, name: &OsStr) -> bool {
        // Asking an empty set still prepares the name for matching, for every entry scanned.
        (!self.names.is_empty() && self.names.is_match(Path::new(name)))
            || (self.temp_names && crate::tree::temp::is_temp_name(name))
    }

    fn excludes_path(&self, rel: &Path) -> bool {
        self.paths.is_match(rel)
            || self.exact.contains(rel)
            || (self.crossing.load(std::sync::atomic::Ordering::Acquire)
                && rel.parent().is_some_and(|dir| {
                    self.uncrossed
                        .read()
                        .unwrap_or_else(|e| e.into_inner())
                        .contains(dir)
                }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn exclude_patterns_match_names_anywhere_and_anchored_paths_from_the_root() {
        let f = Filter::new(&["*.log".into(), "/build".into(), "cache/tmp".into()]).unwrap();
        let ex = |rel: &str| {
            let p = Path::new(rel);
            f.excludes(p, p.file_name().unwrap())
        };
        assert!(ex("a.log") && ex("deep/down/b.log"));
        assert!(ex("build") && !ex("src/build"));
        assert!(ex("cache/tmp") && !ex("x/cache/tmp"));
        assert!(!ex("notes.txt"));
    }
}

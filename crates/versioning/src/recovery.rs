//! The recovery system's state in the directory twoway runs from (SPEC §4): `config.json`
//! (which program keeps versions, and how often) and `.info.json` (version key → the absolute
//! path of each directory twoway keeps in sync), and `__versions__/KEY`, where the versions of
//! that directory live.

use std::collections::BTreeMap;
use std::fs::File;
use std::io;
use std::path::{Path, PathBuf};

use serde_json::{Map, Value};
use sync_core::Error;
use sync_core::run::trust::untouchable;
use sync_core::state::text::write_atomically;

/// The directory, in the state directory, that holds one version directory per key.
pub const VERSIONS_DIR: &str = "__versions__";

/// The name of the file recording version key → directory.
pub const INFO_FILE: &str = ".info.json";

/// What `config.json` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The program that keeps versions (`oneway`), as written in the file.
    pub script: String,
    /// Its interval arguments, e.g. `["--interval", "60"]`.
    pub interval: Vec<String>,
    /// The program resolved to a path that exists.
    pub program: PathBuf,
}

fn damaged(path: &Path, what: impl Into<String>) -> Error {
    Error::StateDamaged {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// The `oneway` beside the running program, else `oneway` (looked up on PATH when used).
pub fn default_script() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|d| d.join("oneway")))
        .filter(|p| p.is_file())
        .and_then(|p| p.to_str().map(str::to_owned))
        .unwrap_or_else(|| "oneway".to_string())
}

impl Config {
    /// Reads `path`, writing it with the defaults first if it does not exist.
    ///
    /// Fails, naming the file, if it cannot be read or written, is not JSON, has a key of the
    /// wrong type, or names a program that cannot be found.
    pub fn load_or_create(path: &Path) -> Result<Config, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                let defaults = serde_json::json!({
                    "script": default_script(),
                    "interval": ["--interval", "60"],
                });
                let text = serde_json::to_string_pretty(&defaults).unwrap_or_default() + "\n";
                write_atomically(path, &text).map_err(|source| Error::StateUnreadable {
                    path: path.to_path_buf(),
                    source,
                })?;
                log::info!("wrote {} with the default settings", path.display());
                text
            }
            Err(source) => {
                return Err(Error::StateUnreadable {
                    path: path.to_path_buf(),
                    source,
                });
            }
        };
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| damaged(path, format!("not valid JSON ({e})")))?;
        let obj = value.as_object().ok_or_else(|| {
            damaged(
                path,
                "expected a JSON object with \"script\" and \"interval\"",
            )
        })?;
        let script = match obj.get("script") {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            Some(_) => return Err(damaged(path, "\"script\" must be a non-empty string")),
            None => return Err(damaged(path, "\"script\" is missing")),
        };
        let interval = match obj.get("interval") {
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| v.as_str().map(str::to_owned))
                .collect::<Option<Vec<_>>>()
                .ok_or_else(|| {
                    damaged(
                        path,
                        "\"interval\" must be a list of strings, like [\"--interval\", \"60\"]",
                    )
                })?,
            Some(_) => {
                return Err(damaged(
                    path,
                    "\"interval\" must be a list of strings, like [\"--interval\", \"60\"]",
                ));
            }
            None => return Err(damaged(path, "\"interval\" is missing")),
        };
        let base = path.parent().unwrap_or(Path::new("."));
        let program = resolve_program(&script, base).ok_or_else(|| {
            damaged(
                path,
                format!("\"script\" {script:?} is not an executable file (nor a program on PATH)"),
            )
        })?;
        // What this file names is run, as whoever runs twoway (root, often): it, the program,
        // and the directories above both must be beyond the reach of anyone else.
        for file in [path, program.as_path()] {
            if let Err(why) = untouchable(file) {
                return Err(damaged(
                    path,
                    format!("refusing to run what it names: {why}"),
                ));
            }
        }
        Ok(Config {
            script,
            interval,
            program,
        })
    }
}

/// A program path: relative ones are relative to the configuration's directory; a bare name
/// is looked up on PATH.
fn resolve_program(script: &str, base: &Path) -> Option<PathBuf> {
    use std::os::unix::fs::PermissionsExt;
    let executable = |p: &Path| {
        std::fs::metadata(p).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
    };
    if script.contains('/') {
        let p = base.join(script);
        return executable(&p).then(|| std::path::absolute(&p).unwrap_or(p));
    }
    std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
        .map(|dir| dir.join(script))
        .find(|p| executable(p))
}

/// `.info.json`: version key → absolute directory path.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Info {
    /// The entries.
    pub keys: BTreeMap<String, PathBuf>,
}

impl Info {
    /// Reads `.info.json` from `state_dir` (empty if missing).
    ///
    /// Fails, naming the file, if it cannot be read or is not a JSON object of strings.
    pub fn load(state_dir: &Path) -> Result<Info, Error> {
        let path = state_dir.join(INFO_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Info::default()),
            Err(source) => return Err(Error::StateUnreadable { path, source }),
        };
        let value: Value = serde_json::from_str(&text)
            .map_err(|e| damaged(&path, format!("not valid JSON ({e})")))?;
        let obj = value
            .as_object()
            .ok_or_else(|| damaged(&path, "expected a JSON object of version key -> directory"))?;
        let mut keys = BTreeMap::new();
        for (k, v) in obj {
            let dir = v.as_str().filter(|s| s.starts_with('/')).ok_or_else(|| {
                damaged(&path, format!("the entry {k:?} is not an absolute path"))
            })?;
            if k.is_empty() || k.contains('/') || k == "." || k == ".." {
                return Err(damaged(&path, format!("the key {k:?} is not a plain name")));
            }
            keys.insert(k.clone(), PathBuf::from(dir));
        }
        Ok(Info { keys })
    }

    /// The key of `dir`, if recorded.
    pub fn key_of(&self, dir: &Path) -> Option<&str> {
        self.keys
            .iter()
            .find(|(_, p)| p.as_path() == dir)
            .map(|(k, _)| k.as_str())
    }

    /// Records `dirs` (absolute, UTF-8 paths) in `state_dir/.info.json`, keeping every entry
    /// already there, and returns their keys. The read-modify-write holds a lock on the file,
    /// so two twoway processes adding pairs at once lose nothing.
    ///
    /// Fails if the file is damaged, cannot be written, or a path is not UTF-8.
    pub fn register(state_dir: &Path, dirs: &[&Path]) -> Result<Vec<String>, Error> {
        let path = state_dir.join(INFO_FILE);
        let lock_path = state_dir.join(".info.json.lock");
        let lock = File::create(&lock_path).map_err(|source| Error::StateUnreadable {
            path: lock_path.clone(),
            source,
        })?;
        lock.lock().map_err(|source| Error::StateUnreadable {
            path: lock_path.clone(),
            source,
        })?;
        let mut info = Info::load(state_dir)?;
        let mut keys = Vec::new();
        let mut changed = false;
        for dir in dirs {
            if dir.to_str().is_none() {
                return Err(Error::Versions(format!(
                    "{} is not UTF-8; the recovery system records paths in JSON (run with --no-recovery)",
                    dir.display()
                )));
            }
            if let Some(k) = info.key_of(dir) {
                keys.push(k.to_string());
                continue;
            }
            let base = dir
                .file_name()
                .map(|n| n.to_string_lossy().into_owned())
                .filter(|n| !n.is_empty())
                .unwrap_or_else(|| "root".into());
            let mut key = base.clone();
            let mut n = 2;
            while info.keys.contains_key(&key) {
                key = format!("{base}-{n}");
                n += 1;
            }
            info.keys.insert(key.clone(), dir.to_path_buf());
            keys.push(key);
            changed = true;
        }
        if changed {
            let map: Map<String, Value> = info
                .keys
                .iter()
                .map(|(k, p)| (k.clone(), Value::String(p.to_string_lossy().into_owned())))
                .collect();
            let text = serde_json::to_string_pretty(&Value::Object(map)).unwrap_or_default() + "\n";
            write_atomically(&path, &text).map_err(|source| Error::StateUnreadable {
                path: path.clone(),
                source,
            })?;
        }
        Ok(keys)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_stay_unique_and_entries_are_kept() {
        let dir = tempfile::tempdir().unwrap();
        let k1 = Info::register(dir.path(), &[Path::new("/x/docs"), Path::new("/y/docs")]).unwrap();
        assert_eq!(k1, ["docs", "docs-2"]);
        let k2 = Info::register(dir.path(), &[Path::new("/z/docs"), Path::new("/x/docs")]).unwrap();
        assert_eq!(k2, ["docs-3", "docs"]);
        let info = Info::load(dir.path()).unwrap();
        assert_eq!(info.keys.len(), 3);
        assert_eq!(info.key_of(Path::new("/y/docs")), Some("docs-2"));
    }

    #[test]
    fn damaged_info_is_an_error_naming_it() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join(INFO_FILE), "{\"a\": 3}").unwrap();
        let err = Info::load(dir.path()).unwrap_err().to_string();
        assert!(err.contains(INFO_FILE) && err.contains("damaged"), "{err}");
    }

    #[test]
    fn config_with_wrong_types_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        for (text, needle) in [
            ("{", "not valid JSON"),
            ("{\"script\": 1, \"interval\": []}", "\"script\""),
            (
                "{\"script\": \"/bin/true\", \"interval\": \"60\"}",
                "\"interval\"",
            ),
            (
                "{\"script\": \"/no/such/program\", \"interval\": []}",
                "not an executable",
            ),
        ] {
            std::fs::write(&path, text).unwrap();
            let err = Config::load_or_create(&path).unwrap_err().to_string();
            assert!(
                err.contains("config.json") && err.contains(needle),
                "{text}: {err}"
            );
        }
    }
}

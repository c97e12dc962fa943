//! The recovery system's state in the directory twoway runs from (SPEC §4): `config.json`
//! (which program keeps versions, how often, and which versions it keeps) and `.info.json`
//! (version key → the absolute path of each directory twoway keeps in sync), and
//! `__versions__/KEY`, where the versions of that directory live.

use std::collections::BTreeMap;
use std::fmt;
use std::fs::File;
use std::io;
use std::ops::RangeInclusive;
use std::path::{Path, PathBuf};

use serde::de::{self, Deserializer, IgnoredAny, MapAccess, Visitor};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use sync_core::Error;
use sync_core::run::trust::untouchable;
use sync_core::state::text::write_atomically;

use crate::retention::{KEEP_LAST, KEEP_PERIODS, Retention};

/// The directory, in the state directory, that holds one version directory per key.
pub const VERSIONS_DIR: &str = "__versions__";

/// The name of the file recording version key → directory.
pub const INFO_FILE: &str = ".info.json";

/// The keys `config.json` may hold; any other is refused, so a misspelt one is not ignored.
pub const CONFIG_KEYS: [&str; 6] = [
    "script",
    "interval",
    "keep_last",
    "keep_hourly",
    "keep_daily",
    "keep_weekly",
];

/// What `config.json` says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// The program that keeps versions (`oneway`), as written in the file.
    pub script: String,
    /// Its interval arguments, e.g. `["--interval", "60"]`.
    pub interval: Vec<String>,
    /// The program resolved to a path that exists.
    pub program: PathBuf,
    /// Which versions the program keeps: the file's `keep_*` keys, [`Retention::default`]'s
    /// values where one is absent.
    pub retention: Retention,
}

fn damaged(path: &Path, what: impl Into<String>) -> Error {
    Error::StateDamaged {
        path: path.to_path_buf(),
        what: what.into(),
    }
}

/// `path` is damaged as serde_json found it: not JSON, or a key's value that our readers
/// refused (their message names the key).
fn json_damage(path: &Path, err: &serde_json::Error) -> Error {
    if !err.is_data() {
        return damaged(path, format!("not valid JSON ({err})"));
    }
    // serde_json ends the message with where the value is; the key names it better, and the
    // one-line error stays short.
    let text = err.to_string();
    let what = match text.rsplit_once(" at line ") {
        Some((what, _)) if err.line() != 0 => what,
        _ => text.as_str(),
    };
    damaged(path, what)
}

/// A refused value as the user wrote it, for the message (cut short if long).
fn shown(value: &Value) -> String {
    let text = value.to_string();
    match text.char_indices().nth(60) {
        Some((cut, _)) => format!("{}…", &text[..cut]),
        None => text,
    }
}

/// `config.json` as written: each key's type and range checked as it is read, with a message
/// naming the key; what depends on more than one value (a program that exists) is
/// [`Config::load_or_create`]'s. Every key is optional here so that a missing one is named by
/// us, in the same words as the rest.
#[derive(Deserialize)]
#[serde(expecting = "a JSON object with \"script\" and \"interval\"")]
struct ConfigFile {
    #[serde(default, deserialize_with = "script")]
    script: Option<String>,
    #[serde(default, deserialize_with = "interval")]
    interval: Option<Vec<String>>,
    #[serde(default, deserialize_with = "keep_last")]
    keep_last: Option<u32>,
    #[serde(default, deserialize_with = "keep_hourly")]
    keep_hourly: Option<u32>,
    #[serde(default, deserialize_with = "keep_daily")]
    keep_daily: Option<u32>,
    #[serde(default, deserialize_with = "keep_weekly")]
    keep_weekly: Option<u32>,
    /// Any other key, to be refused by name (`deny_unknown_fields` would say "field" and list
    /// the keys in backquotes, unlike every other message here).
    #[serde(flatten)]
    unknown: BTreeMap<String, IgnoredAny>,
}

// The value of a key is read as it was written (a JSON value) only to quote it in the error.
fn script<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    match Value::deserialize(d)? {
        Value::String(s) if !s.is_empty() => Ok(Some(s)),
        other => Err(de::Error::custom(format!(
            "\"script\" must be a non-empty string (the program that keeps versions), got {}",
            shown(&other)
        ))),
    }
}

fn interval<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Vec<String>>, D::Error> {
    let value = Value::deserialize(d)?;
    let strings = value.as_array().and_then(|items| {
        items
            .iter()
            .map(|v| v.as_str().map(str::to_owned))
            .collect::<Option<Vec<_>>>()
    });
    strings.map(Some).ok_or_else(|| {
        de::Error::custom(format!(
            "\"interval\" must be a list of strings, like [\"--interval\", \"60\"], got {}",
            shown(&value)
        ))
    })
}

fn count<'de, D: Deserializer<'de>>(
    d: D,
    key: &str,
    range: RangeInclusive<u32>,
) -> Result<Option<u32>, D::Error> {
    let value = Value::deserialize(d)?;
    value
        .as_u64()
        .and_then(|n| u32::try_from(n).ok())
        .filter(|n| range.contains(n))
        .map(Some)
        .ok_or_else(|| {
            de::Error::custom(format!(
                "\"{key}\" must be a whole number from {} to {}, got {}",
                range.start(),
                range.end(),
                shown(&value)
            ))
        })
}

fn keep_last<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    count(d, "keep_last", KEEP_LAST)
}

fn keep_hourly<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    count(d, "keep_hourly", KEEP_PERIODS)
}

fn keep_daily<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    count(d, "keep_daily", KEEP_PERIODS)
}

fn keep_weekly<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u32>, D::Error> {
    count(d, "keep_weekly", KEEP_PERIODS)
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
    /// Fails, naming the file and the key, if it cannot be read or written, is not JSON, has
    /// a key it does not know, misses `script` or `interval`, has a value of the wrong type or
    /// out of range, or names a program that cannot be found or that others could change.
    pub fn load_or_create(path: &Path) -> Result<Config, Error> {
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => {
                // The seed's two keys only: a `keep_*` key absent means the running release's
                // defaults, so writing today's values in would pin them in every user's file,
                // and a later release's better defaults would never reach it.
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
        let file: ConfigFile = serde_json::from_str(&text).map_err(|e| json_damage(path, &e))?;
        if let Some(key) = file.unknown.keys().next() {
            return Err(damaged(
                path,
                format!(
                    "unknown key {key:?} (the keys are {})",
                    CONFIG_KEYS.join(", ")
                ),
            ));
        }
        let script = file
            .script
            .ok_or_else(|| damaged(path, "\"script\" is missing"))?;
        let interval = file
            .interval
            .ok_or_else(|| damaged(path, "\"interval\" is missing"))?;
        let default = Retention::default();
        let retention = Retention {
            last: file.keep_last.unwrap_or(default.last),
            hourly: file.keep_hourly.unwrap_or(default.hourly),
            daily: file.keep_daily.unwrap_or(default.daily),
            weekly: file.keep_weekly.unwrap_or(default.weekly),
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
            retention,
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
    /// Fails, naming the file and the key, if it cannot be read, is not a JSON object, or has
    /// a key that is not a plain name (or is there twice), or a value that is not an absolute
    /// path.
    pub fn load(state_dir: &Path) -> Result<Info, Error> {
        let path = state_dir.join(INFO_FILE);
        let text = match std::fs::read_to_string(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Info::default()),
            Err(source) => return Err(Error::StateUnreadable { path, source }),
        };
        let InfoFile(keys) = serde_json::from_str(&text).map_err(|e| json_damage(&path, &e))?;
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
            let text =
                serde_json::to_string_pretty(&InfoFile(info.keys)).unwrap_or_default() + "\n";
            write_atomically(&path, &text).map_err(|source| Error::StateUnreadable {
                path: path.clone(),
                source,
            })?;
        }
        Ok(keys)
    }
}

/// `.info.json` as written: version key → absolute path. Its keys are the user's, not a fixed
/// set, so it is read by a visitor of its own rather than derived: each refusal then names the
/// key it is about.
#[derive(Serialize)]
#[serde(transparent)]
struct InfoFile(BTreeMap<String, PathBuf>);

impl<'de> Deserialize<'de> for InfoFile {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<InfoFile, D::Error> {
        d.deserialize_map(InfoVisitor)
    }
}

struct InfoVisitor;

impl<'de> Visitor<'de> for InfoVisitor {
    type Value = InfoFile;

    fn expecting(&self, f: &mut fmt::Formatter) -> fmt::Result {
        f.write_str("a JSON object of version key -> directory")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<InfoFile, A::Error> {
        let mut keys = BTreeMap::new();
        while let Some(key) = map.next_key::<String>()? {
            // Read as written, to be quoted if refused.
            let value: Value = map.next_value()?;
            if key.is_empty() || key.contains('/') || key == "." || key == ".." {
                return Err(de::Error::custom(format!(
                    "the key {key:?} is not a plain name"
                )));
            }
            let Some(dir) = value.as_str().filter(|s| s.starts_with('/')) else {
                return Err(de::Error::custom(format!(
                    "the entry {key:?} must be an absolute path, got {}",
                    shown(&value)
                )));
            };
            // Two paths for one key: which one's versions are under it cannot be told.
            if keys.insert(key.clone(), PathBuf::from(dir)).is_some() {
                return Err(de::Error::custom(format!("the key {key:?} is there twice")));
            }
        }
        Ok(InfoFile(keys))
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

    /// Writes `text` as `config.json` in a fresh directory and reads it.
    fn load_config(text: &str) -> Result<Config, String> {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        std::fs::write(&path, text).unwrap();
        Config::load_or_create(&path).map_err(|e| sync_core::error::one_line(&e))
    }

    #[test]
    fn config_of_an_earlier_release_reads_with_the_default_retention() {
        let config =
            load_config(r#"{"script": "/bin/true", "interval": ["--interval", "60"]}"#).unwrap();
        assert_eq!(config.interval, ["--interval", "60"]);
        assert_eq!(config.retention, Retention::default());
    }

    #[test]
    fn retention_keys_are_read_and_absent_ones_are_the_defaults() {
        let config = load_config(
            r#"{"script": "/bin/true", "interval": [], "keep_last": 5, "keep_daily": 0,
                "keep_weekly": 99999}"#,
        )
        .unwrap();
        let default = Retention::default();
        assert_eq!(
            config.retention,
            Retention {
                last: 5,
                hourly: default.hourly,
                daily: 0,
                weekly: 99_999,
            }
        );
    }

    #[test]
    fn defaults_written_when_missing_hold_the_seeds_two_keys() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("config.json");
        // The program (`oneway` beside the test binary, or on PATH) may not be there: only
        // what is written matters here.
        let _ = Config::load_or_create(&path);
        let text = std::fs::read_to_string(&path).unwrap();
        let written: Value = serde_json::from_str(&text).unwrap();
        let keys: Vec<&String> = written.as_object().unwrap().keys().collect();
        assert_eq!(keys, ["interval", "script"]);
        let file: ConfigFile = serde_json::from_str(&text).unwrap();
        assert!(file.script.is_some() && file.interval.is_some() && file.keep_last.is_none());
    }

    /// Every refusal is one line naming the file and the key, and what was wrong with it.
    #[test]
    fn each_config_error_names_the_file_and_the_key() {
        let ok = r#""script": "/bin/true", "interval": []"#;
        for (text, expected) in [
            (
                format!(r#"{{{ok}, "keep_daily": "seven"}}"#),
                r#""keep_daily" must be a whole number from 0 to 99999, got "seven""#,
            ),
            (
                format!(r#"{{{ok}, "keep_hourly": -1}}"#),
                r#""keep_hourly" must be a whole number from 0 to 99999, got -1"#,
            ),
            (
                format!(r#"{{{ok}, "keep_weekly": 100000}}"#),
                r#""keep_weekly" must be a whole number from 0 to 99999, got 100000"#,
            ),
            (
                format!(r#"{{{ok}, "keep_weekly": 7.5}}"#),
                r#""keep_weekly" must be a whole number from 0 to 99999, got 7.5"#,
            ),
            (
                format!(r#"{{{ok}, "keep_last": 1}}"#),
                r#""keep_last" must be a whole number from 2 to 999, got 1"#,
            ),
            (
                format!(r#"{{{ok}, "keep_last": null}}"#),
                r#""keep_last" must be a whole number from 2 to 999, got null"#,
            ),
            (
                format!(r#"{{{ok}, "keep_dialy": 7}}"#),
                r#"unknown key "keep_dialy" (the keys are script, interval, keep_last, "#,
            ),
            (r#"{"interval": []}"#.to_string(), r#""script" is missing"#),
            (
                r#"{"script": "/bin/true"}"#.to_string(),
                r#""interval" is missing"#,
            ),
            (
                r#"{"script": "", "interval": []}"#.to_string(),
                r#""script" must be a non-empty string (the program that keeps versions), got """#,
            ),
            (
                r#"{"script": "/bin/true", "interval": ["--interval", 60]}"#.to_string(),
                r#""interval" must be a list of strings, like ["--interval", "60"], got ["--interval",60]"#,
            ),
            (
                "[1]".to_string(),
                r#"expected a JSON object with "script" and "interval""#,
            ),
        ] {
            let err = load_config(&text).unwrap_err();
            assert!(
                err.contains("config.json is damaged: ") && err.contains(expected),
                "{text}: {err}"
            );
            assert!(!err.contains('\n') && !err.contains(" at line "), "{err}");
        }
    }

    #[test]
    fn each_info_error_names_the_file_and_the_key() {
        let dir = tempfile::tempdir().unwrap();
        for (text, expected) in [
            (
                r#"{"a": 3}"#,
                r#"the entry "a" must be an absolute path, got 3"#,
            ),
            (
                r#"{"a": "rel/dir"}"#,
                r#"the entry "a" must be an absolute path, got "rel/dir""#,
            ),
            (r#"{"a/b": "/x"}"#, r#"the key "a/b" is not a plain name"#),
            (r#"{"..": "/x"}"#, r#"the key ".." is not a plain name"#),
            (r#"{"a": "/x", "a": "/y"}"#, r#"the key "a" is there twice"#),
            (
                r#"["/x"]"#,
                "expected a JSON object of version key -> directory",
            ),
        ] {
            std::fs::write(dir.path().join(INFO_FILE), text).unwrap();
            let err = sync_core::error::one_line(&Info::load(dir.path()).unwrap_err());
            assert!(
                err.contains(&format!("{INFO_FILE} is damaged: ")) && err.contains(expected),
                "{text}: {err}"
            );
        }
    }
}

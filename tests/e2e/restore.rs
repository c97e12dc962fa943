//! The recovery system: `config.json`, `.info.json`, the versioning children and
//! `twoway DIR --restore` (SPEC §4; issue 5). Every test runs the real `twoway` (which runs the
//! real `oneway` beside it) from a state directory of its own.

use std::fs;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::thread;
use std::time::{Duration, Instant};

use crate::util::*;

const TWOWAY: &str = env!("CARGO_BIN_EXE_twoway");

/// A state directory with two synced directories `A` and `B` beside it (not inside it).
pub(crate) struct Pair {
    _dir: tempfile::TempDir,
    pub(crate) state: PathBuf,
    pub(crate) a: PathBuf,
    pub(crate) b: PathBuf,
    cache: PathBuf,
}

impl Pair {
    pub(crate) fn new() -> Res<Pair> {
        let dir = tempfile::tempdir()?;
        let root = dir.path().to_path_buf();
        let pair = Pair {
            state: root.join("state"),
            a: root.join("A"),
            b: root.join("B"),
            cache: root.join("cache"),
            _dir: dir,
        };
        for d in [&pair.state, &pair.a, &pair.b, &pair.cache] {
            fs::create_dir(d)?;
        }
        Ok(pair)
    }

    pub(crate) fn command(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Command {
        let mut cmd = Command::new(TWOWAY);
        cmd.current_dir(&self.state)
            .env("XDG_CACHE_HOME", &self.cache)
            .env("XDG_STATE_HOME", &self.cache)
            .stdin(Stdio::null());
        for a in args {
            cmd.arg(a.as_ref());
        }
        cmd
    }

    pub(crate) fn run(&self, args: &[&dyn AsRef<std::ffi::OsStr>]) -> Res<Output> {
        Ok(self.command(args).output()?)
    }

    fn sync_once(&self) -> Res<Output> {
        let out = self.run(&[&self.a, &self.b, &"--once"])?;
        expect_code(&out, 0)?;
        Ok(out)
    }

    fn versions(&self, name: &str) -> PathBuf {
        self.state.join("__versions__").join(name)
    }

    pub(crate) fn log(&self) -> String {
        fs::read_to_string(self.state.join("twoway.log")).unwrap_or_default()
    }
}

pub(crate) fn expect_code(out: &Output, code: i32) -> TestResult {
    ensure!(
        out.status.code() == Some(code),
        "expected exit code {code}, got {:?}\nstderr:\n{}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    Ok(())
}

pub(crate) fn stderr(out: &Output) -> String {
    String::from_utf8_lossy(&out.stderr).into_owned()
}

fn fill(dir: &Path, tag: &str) -> TestResult {
    set_mtime(&write(dir, "notes.txt", format!("notes {tag}\n"))?, T0, 1)?;
    set_mtime(
        &write(dir, "sub/data.bin", format!("data {tag}"))?,
        T0 + 1,
        2,
    )?;
    symlink(dir, "link", "notes.txt")?;
    mkdir(dir, "empty")?;
    Ok(())
}

#[test]
fn first_once_run_writes_config_info_and_first_versions() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "a")?;
    write(&p.b, "only-in-b.txt", "b")?;

    p.sync_once()?;

    let config: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(p.state.join("config.json"))?)?;
    let beside = Path::new(TWOWAY).with_file_name("oneway");
    ensure!(
        config["script"] == beside.to_string_lossy().as_ref()
            && config["interval"] == serde_json::json!(["--interval", "60"]),
        "config.json does not hold the defaults: {config}"
    );
    let info: serde_json::Value =
        serde_json::from_str(&fs::read_to_string(p.state.join(".info.json"))?)?;
    let (a, b) = (fs::canonicalize(&p.a)?, fs::canonicalize(&p.b)?);
    ensure!(
        info["A"] == a.to_string_lossy().as_ref() && info["B"] == b.to_string_lossy().as_ref(),
        ".info.json does not map A and B to their absolute paths: {info}"
    );
    assert_trees_equal(&p.a, &p.versions("A").join("_1"))?;
    assert_trees_equal(&p.b, &p.versions("B").join("_1"))?;
    assert_trees_equal(&p.a, &p.b)
}

#[test]
fn deleted_directory_is_restored_at_latest_and_previous_version() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "first")?;
    p.sync_once()?;
    let first = snapshot(&p.a)?;
    set_mtime(
        &write(&p.a, "notes.txt", "notes second, longer\n")?,
        T0 + 50,
        3,
    )?;
    set_mtime(&write(&p.a, "new.txt", "added later")?, T0 + 51, 4)?;
    p.sync_once()?;
    let second = snapshot(&p.a)?;

    fs::remove_dir_all(&p.a)?;
    let out = p.run(&[&p.a, &"--restore"])?;
    expect_code(&out, 0)?;
    assert_same(
        "A restored at its latest version",
        &second,
        &snapshot(&p.a)?,
    )?;
    // A restore copies: nothing in A shares storage with the history.
    let version = fs::canonicalize(p.versions("A").join("_1"))?;
    for rel in ["notes.txt", "new.txt", "sub/data.bin"] {
        ensure!(
            inode(&p.a.join(rel))? != inode(&version.join(rel))?,
            "restored {rel} shares its inode with the version"
        );
    }

    let out = p.run(&[&p.a, &"--restore", &"--version", &"previous"])?;
    expect_code(&out, 0)?;
    assert_same(
        "A restored at its previous version",
        &first,
        &snapshot(&p.a)?,
    )?;
    ensure!(
        p.log().contains("restored "),
        "no restore line in the log:\n{}",
        p.log()
    );
    Ok(())
}

#[test]
fn restore_over_existing_directory_keeps_its_content_under_versions() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "synced")?;
    p.sync_once()?;
    write(&p.a, "unsynced.txt", "written after the last snapshot")?;

    let out = p.run(&[&p.a, &"--restore"])?;

    expect_code(&out, 0)?;
    ensure!(!p.a.join("unsynced.txt").exists(), "A was not restored");
    let kept: Vec<PathBuf> = snapshot(&p.state.join("__versions__"))?
        .into_iter()
        .filter(|(rel, e)| {
            rel.ends_with("unsynced.txt")
                && e.node == Node::File(Content::Bytes(b"written after the last snapshot".to_vec()))
        })
        .map(|(rel, _)| rel)
        .collect();
    ensure!(
        !kept.is_empty(),
        "A's unsynced file was not kept under __versions__"
    );
    ensure!(
        p.log().contains("held before is kept in"),
        "the log does not say where the old content went:\n{}",
        p.log()
    );
    Ok(())
}

/// A version whose file was edited in place, keeping its size and times (only its content
/// shows it), is never restored: what the version holds no longer says what was backed up.
#[test]
fn version_edited_in_place_is_refused_and_nothing_is_restored() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "synced")?;
    p.sync_once()?;
    fs::remove_dir_all(&p.a)?;
    // The file of A's latest version, found through its public name.
    let latest = fs::canonicalize(p.versions("A").join("_1"))?;
    let file = latest.join("notes.txt");
    let before = fs::symlink_metadata(&file)?;
    let mut bytes = fs::read(&file)?;
    bytes[0] ^= 1;
    fs::write(&file, &bytes)?;
    let mtime = filetime::FileTime::from_last_modification_time(&before);
    filetime::set_file_mtime(&file, mtime)?;

    let out = p.run(&[&p.a, &"--restore"])?;

    expect_code(&out, 2)?;
    ensure!(
        stderr(&out).contains("does not match its manifest")
            && stderr(&out).contains("notes.txt: differs from the manifest"),
        "the refusal does not name the edited file:\n{}",
        stderr(&out)
    );
    ensure!(
        !p.a.exists(),
        "a directory was restored from an edited version"
    );
    Ok(())
}

#[test]
fn restoring_unknown_directory_is_refused_and_creates_nothing() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "x")?;
    p.sync_once()?;
    let unknown = p.state.parent().ok_or("no parent")?.join("never-synced");

    let out = p.run(&[&unknown, &"--restore"])?;

    expect_code(&out, 2)?;
    ensure!(!unknown.exists(), "the unknown directory was created");
    ensure!(
        p.log().contains("is not known to the recovery system"),
        "no clear error in the log:\n{}",
        p.log()
    );
    Ok(())
}

#[test]
fn version_without_restore_is_refused() -> TestResult {
    let p = Pair::new()?;
    let out = p.run(&[&p.a, &p.b, &"--version", &"previous", &"--once"])?;
    expect_code(&out, 2)?;
    ensure!(stderr(&out).contains("--version"), "{}", stderr(&out));
    ensure!(!p.state.join("config.json").exists(), "state was written");
    Ok(())
}

#[test]
fn corrupt_config_is_refused_naming_it_and_nothing_is_synced() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "x")?;
    for text in [
        "{ not json",
        "{\"script\": 5, \"interval\": [\"--interval\", \"60\"]}",
        "{\"script\": \"./missing-program\", \"interval\": []}",
    ] {
        fs::write(p.state.join("config.json"), text)?;

        let out = p.run(&[&p.a, &p.b, &"--once"])?;

        expect_code(&out, 2)?;
        ensure!(
            stderr(&out).contains("config.json") && stderr(&out).contains("damaged"),
            "the error does not name config.json for {text:?}:\n{}",
            stderr(&out)
        );
        ensure!(
            fs::read_dir(&p.b)?.next().is_none(),
            "B was synced despite a bad config.json"
        );
        ensure!(
            fs::read_to_string(p.state.join("config.json"))? == text,
            "config.json was rewritten"
        );
    }
    Ok(())
}

/// config.json names a program that twoway runs (as root, often): a config.json, or a program,
/// that another user could change is refused, saying what to mend, and nothing runs or syncs.
#[test]
fn config_or_script_that_another_user_could_change_is_refused() -> TestResult {
    use std::os::unix::fs::{PermissionsExt, chown};
    let p = Pair::new()?;
    fill(&p.a, "x")?;
    let config = p.state.join("config.json");
    let script = p.state.join("versioner");
    fs::copy(env!("CARGO_BIN_EXE_oneway"), &script)?;
    let text = format!(
        "{{\"script\": {:?}, \"interval\": [\"--interval\", \"60\"]}}",
        script.display().to_string()
    );
    fs::write(&config, &text)?;
    // What is spoiled, how, how it is mended, and what the refusal must say.
    type Case<'a> = (
        &'a str,
        &'a dyn Fn() -> TestResult,
        &'a dyn Fn() -> TestResult,
        &'a str,
    );
    let cases: [Case; 2] = [
        (
            "a group-writable config.json",
            &|| {
                Ok(fs::set_permissions(
                    &config,
                    fs::Permissions::from_mode(0o664),
                )?)
            },
            &|| {
                Ok(fs::set_permissions(
                    &config,
                    fs::Permissions::from_mode(0o644),
                )?)
            },
            "is writable by others (mode 664); run chmod go-w",
        ),
        (
            "a script that another user owns",
            &|| Ok(chown(&script, Some(65534), Some(65534))?),
            &|| Ok(chown(&script, Some(0), Some(0))?),
            "belongs to user 65534",
        ),
    ];
    for (what, spoil, mend, needle) in cases {
        spoil()?;
        let out = p.run(&[&p.a, &p.b, &"--once"])?;
        expect_code(&out, 2)?;
        ensure!(
            stderr(&out).contains("config.json") && stderr(&out).contains(needle),
            "{what}: the refusal does not say what is wrong ({needle:?}):\n{}",
            stderr(&out)
        );
        ensure!(fs::read_dir(&p.b)?.next().is_none(), "{what}: B was synced");
        mend()?;
    }
    // Mended, the same configuration runs.
    p.sync_once()?;
    Ok(())
}

/// Children of `pid` (from /proc), with their command lines.
fn children_of(pid: u32) -> Res<Vec<(u32, String)>> {
    let mut out = Vec::new();
    for entry in fs::read_dir("/proc")? {
        let entry = entry?;
        let Some(child) = entry
            .file_name()
            .to_str()
            .and_then(|n| n.parse::<u32>().ok())
        else {
            continue;
        };
        let Ok(stat) = fs::read_to_string(entry.path().join("stat")) else {
            continue;
        };
        // The command name is in parentheses and may hold spaces: the fields follow the last ')'.
        let Some(rest) = stat.rsplit_once(')').map(|(_, r)| r) else {
            continue;
        };
        let fields: Vec<&str> = rest.split_whitespace().collect();
        if fields.get(1).and_then(|p| p.parse::<u32>().ok()) == Some(pid)
            && fields.first() != Some(&"Z")
        {
            let cmdline = fs::read(entry.path().join("cmdline")).unwrap_or_default();
            out.push((child, String::from_utf8_lossy(&cmdline).replace('\0', " ")));
        }
    }
    Ok(out)
}

fn alive(pid: u32) -> bool {
    fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|s| {
        !s.rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

fn wait_for_children(parent: u32, n: usize, timeout: Duration) -> Res<Vec<(u32, String)>> {
    let deadline = Instant::now() + timeout;
    loop {
        let kids: Vec<(u32, String)> = children_of(parent)?
            .into_iter()
            .filter(|(_, cmd)| cmd.contains("--versioned"))
            .collect();
        if kids.len() == n {
            return Ok(kids);
        }
        ensure!(
            Instant::now() < deadline,
            "expected {n} versioning children of {parent}, found {kids:?}"
        );
        thread::sleep(Duration::from_millis(50));
    }
}

struct Running(Child);

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

#[test]
fn periodic_run_keeps_two_children_restarts_a_killed_one_and_stops_them_on_ctrl_c() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "x")?;
    let mut cmd = p.command(&[&p.a, &p.b, &"--interval", &"3600"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut twoway = Running(cmd.spawn()?);
    let pid = twoway.0.id();

    let kids = wait_for_children(pid, 2, WAIT_TIMEOUT)?;
    for (_, cmd) in &kids {
        ensure!(
            cmd.contains("--versioned") && cmd.contains("__versions__"),
            "unexpected child {cmd}"
        );
    }

    // A restore of a directory whose pair is being synced is refused by the pair's lock.
    let out = p.run(&[&p.a, &"--restore"])?;
    expect_code(&out, 2)?;
    ensure!(
        p.log().contains("lock"),
        "the refused restore does not name the lock:\n{}",
        p.log()
    );

    let (victim, _) = kids[0].clone();
    Command::new("kill")
        .args(["-s", "KILL", &victim.to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let now = wait_for_children(pid, 2, WAIT_TIMEOUT).unwrap_or_default();
        if now.len() == 2 && now.iter().all(|(k, _)| *k != victim) {
            break;
        }
        ensure!(
            Instant::now() < deadline,
            "the killed child was not restarted within 10 s: {now:?}"
        );
        thread::sleep(Duration::from_millis(100));
    }
    ensure!(
        p.log().contains("restarting it"),
        "no restart line in the log:\n{}",
        p.log()
    );
    let kids: Vec<u32> = wait_for_children(pid, 2, WAIT_TIMEOUT)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();

    Command::new("kill")
        .args(["-s", "INT", &pid.to_string()])
        .status()?;
    let deadline = Instant::now() + Duration::from_secs(30);
    let status = loop {
        if let Some(status) = twoway.0.try_wait()? {
            break status;
        }
        ensure!(
            Instant::now() < deadline,
            "twoway did not stop within 30 s of Ctrl+C"
        );
        thread::sleep(Duration::from_millis(50));
    };
    ensure!(
        status.code() == Some(0),
        "twoway exited with {status:?} after Ctrl+C"
    );
    for k in kids {
        ensure!(!alive(k), "versioning child {k} outlived twoway");
    }
    ensure!(
        p.log().contains("Total number of operations"),
        "no operation count in the log"
    );
    Ok(())
}

#[test]
fn sigkilled_twoway_takes_its_children_with_it() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "x")?;
    let mut cmd = p.command(&[&p.a, &p.b, &"--interval", &"3600"]);
    cmd.stdout(Stdio::null()).stderr(Stdio::null());
    let mut twoway = Running(cmd.spawn()?);
    let kids: Vec<u32> = wait_for_children(twoway.0.id(), 2, WAIT_TIMEOUT)?
        .into_iter()
        .map(|(k, _)| k)
        .collect();

    twoway.0.kill()?;
    twoway.0.wait()?;

    let deadline = Instant::now() + Duration::from_secs(15);
    while kids.iter().any(|k| alive(*k)) {
        ensure!(
            Instant::now() < deadline,
            "versioning children outlived a SIGKILLed twoway"
        );
        thread::sleep(Duration::from_millis(50));
    }
    ensure!(
        p.state.join(".info.json").is_file(),
        "the recovery system never recorded the pair in .info.json"
    );
    Ok(())
}

/// `--restore --dry-run` says what a restore would create, replace and remove, and changes
/// nothing: DIR, its directory and the version store stay as they were.
#[test]
fn restore_dry_run_says_what_it_would_do_and_changes_nothing() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "synced")?;
    p.sync_once()?;
    write(&p.a, "unsynced.txt", "written after the last snapshot")?;
    fs::remove_file(p.a.join("notes.txt"))?;
    let root = p.a.parent().expect("A has a parent").to_path_buf();
    // Everything but the log, which the dry run writes to.
    let tree = || -> Res<Snapshot> {
        let mut snap = snapshot(&root)?;
        snap.retain(|rel, _| !rel.ends_with("twoway.log"));
        Ok(snap)
    };
    let before = tree()?;

    let out = p.run(&[&p.a, &"--restore", &"--dry-run"])?;

    expect_code(&out, 0)?;
    assert_same(
        "the tree holding A, the state and its versions, after a dry run",
        &before,
        &tree()?,
    )?;
    let log = p.log();
    for line in [
        "dry run: would create ",
        "dry run: would remove ",
        "nothing was changed",
    ] {
        ensure!(log.contains(line), "no `{line}` in the log:\n{log}");
    }
    ensure!(
        log.contains("notes.txt") && log.contains("unsynced.txt"),
        "the dry run does not name the files it would bring back or take away:\n{log}"
    );
    Ok(())
}

/// Options of a sync given with `--restore` are a usage error (exit 2, one line naming the
/// option), and nothing is restored.
#[test]
fn sync_options_with_restore_are_a_usage_error() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "synced")?;
    p.sync_once()?;
    write(&p.a, "unsynced.txt", "written after the last snapshot")?;
    for (args, flag) in [
        (vec!["--exclude", "x"], "--exclude"),
        (vec!["--once"], "--once"),
        (vec!["--force"], "--force"),
        (vec!["--conflict", "source"], "--conflict"),
    ] {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = vec![&p.a, &"--restore"];
        for a in &args {
            all.push(a);
        }
        let out = p.run(&all)?;
        expect_code(&out, 2)?;
        let stderr = String::from_utf8_lossy(&out.stderr);
        ensure!(
            stderr.lines().count() == 1 && stderr.contains(flag),
            "expected one line naming {flag}, got:\n{stderr}"
        );
        ensure!(
            p.a.join("unsynced.txt").exists(),
            "A was restored despite {flag}"
        );
    }
    Ok(())
}

/// A versioning child that fails on its arguments says why in twoway's own log (it has no log
/// of its own yet), and twoway does not point at a log file that does not exist.
#[test]
fn a_failing_child_says_why_in_twoways_log() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "a")?;
    let beside = Path::new(TWOWAY).with_file_name("oneway");
    let config = serde_json::json!({
        "script": beside.to_string_lossy(),
        "interval": ["--interval", "zero"],
    });
    fs::write(p.state.join("config.json"), config.to_string())?;

    let out = p.run(&[&p.a, &p.b, &"--once"])?;

    expect_code(&out, 2)?;
    let log = p.log();
    ensure!(
        log.contains("failed (exit code 2): it said \"oneway: invalid value 'zero'"),
        "the child's own message is not in twoway's log:\n{log}"
    );
    ensure!(
        !log.contains("versionlogs.log"),
        "twoway points at a child log that does not exist:\n{log}"
    );
    Ok(())
}

/// What the sync leaves alone (`--exclude`), the versions leave out too.
#[test]
fn the_syncs_exclusions_reach_the_versions() -> TestResult {
    let p = Pair::new()?;
    fill(&p.a, "a")?;
    write(&p.a, "cache/big.tmp", "not worth keeping")?;
    let out = p.run(&[&p.a, &p.b, &"--once", &"--exclude", &"cache"])?;
    expect_code(&out, 0)?;
    let latest = p.versions("A").join("_1");
    ensure!(
        latest.join("notes.txt").exists() && !latest.join("cache").exists(),
        "the latest version of A holds the excluded directory (or not A's files)"
    );
    Ok(())
}

/// The entries under `__versions__/NAME/before-restore-*` and `before-path-restore-*` (what
/// restores kept), by their path below that directory.
fn kept_by_restores(p: &Pair, name: &str) -> Res<Snapshot> {
    Ok(snapshot(&p.versions(name))?
        .into_iter()
        .filter_map(|(rel, e)| {
            let mut parts = rel.components();
            let first = parts.next()?.as_os_str().to_string_lossy().into_owned();
            (first.starts_with("before-restore-") || first.starts_with("before-path-restore-"))
                .then(|| (parts.as_path().to_path_buf(), e))
        })
        .filter(|(rel, _)| !rel.as_os_str().is_empty())
        .collect())
}

/// Names in `dir` that a restore's work left behind (`.NAME.restore-*`).
fn work_leftovers(dir: &Path) -> Res<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir)? {
        let name = entry?.file_name().to_string_lossy().into_owned();
        if name.contains(".restore-") {
            out.push(name);
        }
    }
    Ok(out)
}

/// A with its first version synced and snapshotted (`fill`'s tree), then edited after it:
/// `notes.txt` rewritten, `sub/data.bin` rewritten, `sub/extra.txt` added.
fn synced_then_edited(p: &Pair) -> Res<Snapshot> {
    fill(&p.a, "synced")?;
    p.sync_once()?;
    let synced = snapshot(&p.a)?;
    set_mtime(
        &write(&p.a, "notes.txt", "notes edited later\n")?,
        T0 + 90,
        0,
    )?;
    set_mtime(&write(&p.a, "sub/data.bin", "newer data")?, T0 + 91, 0)?;
    set_mtime(&write(&p.a, "sub/extra.txt", "added later")?, T0 + 92, 0)?;
    Ok(synced)
}

/// `--path FILE` brings back that file alone: the newer edit of the file beside it in the
/// tree stays, and what the restored file held is kept under the version store.
#[test]
fn path_restore_brings_back_one_file_and_leaves_a_newer_edit_beside_it() -> TestResult {
    let p = Pair::new()?;
    let synced = synced_then_edited(&p)?;
    let edited = snapshot(&p.a)?;

    let out = p.run(&[&p.a, &"--restore", &"--path", &"notes.txt"])?;

    expect_code(&out, 0)?;
    let mut want = edited;
    want.insert("notes.txt".into(), synced[Path::new("notes.txt")].clone());
    // Directory times move with the swap inside them.
    assert_same(
        "A after restoring notes.txt alone",
        &without_dir_mtimes(want),
        &without_dir_mtimes(snapshot(&p.a)?),
    )?;
    ensure!(
        inode(&p.a.join("notes.txt"))?
            != inode(&fs::canonicalize(p.versions("A").join("_1"))?.join("notes.txt"))?,
        "the restored file shares its inode with the version"
    );
    let kept = kept_by_restores(&p, "A")?;
    ensure!(
        kept.get(Path::new("notes.txt")).map(|e| &e.node)
            == Some(&Node::File(Content::Bytes(
                b"notes edited later\n".to_vec()
            )))
            && kept.len() == 1,
        "the replaced notes.txt (alone) is not kept under before-restore-*: {kept:?}"
    );
    ensure!(
        p.log().contains("held before is kept in") && p.log().contains("notes.txt"),
        "the log does not say where the replaced file went:\n{}",
        p.log()
    );
    ensure!(
        work_leftovers(&p.a)?.is_empty(),
        "work left in A: {:?}",
        work_leftovers(&p.a)?
    );
    Ok(())
}

/// `--path DIR` makes that directory exactly the version's subtree (an entry added since is
/// taken out and kept), leaves the rest alone, and a path whose parents are gone from DIR
/// gets them back with the version's metadata.
#[test]
fn path_restore_of_a_directory_makes_it_the_versions_subtree() -> TestResult {
    let p = Pair::new()?;
    chmod(&mkdir(&p.a, "deep/er")?, 0o750)?;
    set_mtime(&write(&p.a, "deep/er/leaf.txt", "leaf")?, T0 + 5, 0)?;
    set_mtime(&p.a.join("deep/er"), T0 + 6, 0)?;
    chmod(&p.a.join("deep"), 0o711)?;
    set_mtime(&p.a.join("deep"), T0 + 7, 0)?;
    synced_then_edited(&p)?;
    fs::remove_dir_all(p.a.join("deep"))?;
    let version = fs::canonicalize(p.versions("A").join("_1"))?;

    let out = p.run(&[
        &p.a,
        &"--restore",
        &"--path",
        &"sub",
        &"--path",
        &"deep/er/leaf.txt",
    ])?;

    expect_code(&out, 0)?;
    assert_trees_equal(&version.join("sub"), &p.a.join("sub"))?;
    let meta = |path: &Path| -> Res<(u32, i64)> {
        let m = fs::symlink_metadata(path)?;
        Ok((
            std::os::unix::fs::PermissionsExt::mode(&m.permissions()) & 0o7777,
            std::os::unix::fs::MetadataExt::mtime(&m),
        ))
    };
    let s = snapshot(&p.a)?;
    ensure!(
        s[Path::new("sub")].mtime == snapshot(&version)?[Path::new("sub")].mtime,
        "sub itself does not have the version's time"
    );
    ensure!(
        meta(&p.a.join("deep"))? == (0o711, T0 + 7)
            && meta(&p.a.join("deep/er"))? == (0o750, T0 + 6)
            && read(&p.a.join("deep/er/leaf.txt"))? == b"leaf",
        "the missing parents of deep/er/leaf.txt are not made with the version's metadata"
    );
    ensure!(
        read(&p.a.join("notes.txt"))? == b"notes edited later\n",
        "notes.txt, outside the restored paths, was changed"
    );
    let kept = kept_by_restores(&p, "A")?;
    ensure!(
        kept.get(Path::new("sub/extra.txt")).map(|e| &e.node)
            == Some(&Node::File(Content::Bytes(b"added later".to_vec()))),
        "what sub held is not kept with its layout: {kept:?}"
    );
    Ok(())
}

/// A `--path` that is absolute, climbs out with `..` or is not in the version is a usage
/// error naming it, and nothing changes.
#[test]
fn path_outside_dir_or_the_version_is_refused_and_nothing_changes() -> TestResult {
    let p = Pair::new()?;
    synced_then_edited(&p)?;
    let root = p.a.parent().ok_or("A has no parent")?.to_path_buf();
    let tree = || -> Res<Snapshot> {
        let mut snap = snapshot(&root)?;
        snap.retain(|rel, _| !rel.ends_with("twoway.log"));
        Ok(snap)
    };
    let before = tree()?;
    let absolute = p.a.join("notes.txt");
    for bad in [
        absolute.as_os_str(),
        "../B".as_ref(),
        "sub/../../B".as_ref(),
        "sub/never-there.txt".as_ref(),
    ] {
        let out = p.run(&[&p.a, &"--restore", &"--path", &bad])?;
        expect_code(&out, 2)?;
        let said = stderr(&out);
        ensure!(
            said.lines().count() == 1 && said.contains(&*bad.to_string_lossy()),
            "expected one line naming {bad:?}, got:\n{said}"
        );
        assert_same(&format!("the tree after --path {bad:?}"), &before, &tree()?)?;
    }
    Ok(())
}

/// `--target OTHER` writes the version into a new directory (its missing parents made) and
/// leaves DIR as it was, byte for byte; with `--path`, only those paths are written there.
#[test]
fn target_restore_writes_a_new_directory_and_leaves_dir_untouched() -> TestResult {
    let p = Pair::new()?;
    synced_then_edited(&p)?;
    let before = snapshot(&p.a)?;
    let version = fs::canonicalize(p.versions("A").join("_1"))?;
    let other = p.a.with_file_name("restored/here");

    let out = p.run(&[&p.a, &"--restore", &"--target", &other])?;

    expect_code(&out, 0)?;
    assert_trees_equal(&version, &other)?;
    assert_same(
        "A after a restore into another directory",
        &before,
        &snapshot(&p.a)?,
    )?;
    ensure!(
        kept_by_restores(&p, "A")?.is_empty(),
        "something was kept although nothing was replaced"
    );

    // Into an empty directory, only the paths asked for.
    let only = p.a.with_file_name("only");
    fs::create_dir(&only)?;
    let out = p.run(&[
        &p.a,
        &"--restore",
        &"--target",
        &only,
        &"--path",
        &"sub/data.bin",
    ])?;
    expect_code(&out, 0)?;
    let names: Vec<PathBuf> = snapshot(&only)?.into_keys().collect();
    ensure!(
        names == [PathBuf::from("sub"), PathBuf::from("sub/data.bin")],
        "--target with --path wrote {names:?}"
    );
    ensure!(
        files_equal(&only.join("sub/data.bin"), &version.join("sub/data.bin"))?,
        "sub/data.bin in the target is not the version's"
    );
    assert_same(
        "A after a path restored elsewhere",
        &before,
        &snapshot(&p.a)?,
    )
}

/// A target that holds anything is refused, naming it, and nothing is written.
#[test]
fn target_that_is_not_empty_is_refused() -> TestResult {
    let p = Pair::new()?;
    synced_then_edited(&p)?;
    let other = p.a.with_file_name("busy");
    write(&other, "mine.txt", "not yours")?;
    let before = snapshot(&other)?;
    let a_before = snapshot(&p.a)?;

    let out = p.run(&[&p.a, &"--restore", &"--target", &other])?;

    expect_code(&out, 2)?;
    let said = stderr(&out);
    ensure!(
        said.lines().count() == 1 && said.contains("not empty") && said.contains("busy"),
        "the refusal does not name the target:\n{said}"
    );
    assert_same("the busy target", &before, &snapshot(&other)?)?;
    assert_same("A", &a_before, &snapshot(&p.a)?)?;
    // A file is no target either.
    let file = write(&p.state, "a-file", "x")?;
    let out = p.run(&[&p.a, &"--restore", &"--target", &file])?;
    expect_code(&out, 2)?;
    ensure!(read(&file)? == b"x", "the file given as target was changed");
    Ok(())
}

/// A target in the version stores is refused, naming it, and nothing is written there: a
/// restore into a version would edit it in place (versions share inodes and are checked
/// against their manifests), and a store holds only what twoway puts in it.
#[test]
fn target_inside_the_version_stores_is_refused() -> TestResult {
    let p = Pair::new()?;
    synced_then_edited(&p)?;
    let stores = p
        .versions("A")
        .parent()
        .expect("a store has a parent")
        .to_path_buf();
    let before = snapshot(&stores)?;
    let a_before = snapshot(&p.a)?;
    for target in [
        stores.join("elsewhere"),
        p.versions("A").join("_1").join("intruder"),
    ] {
        let out = p.run(&[&p.a, &"--restore", &"--target", &target])?;
        expect_code(&out, 2)?;
        let said = stderr(&out);
        let shown = target.file_name().expect("a name").to_string_lossy();
        ensure!(
            said.lines().count() == 1 && said.contains("version stores") && said.contains(&*shown),
            "the refusal does not name the target and the stores:\n{said}"
        );
        assert_same("the version stores", &before, &snapshot(&stores)?)?;
    }
    assert_same("A", &a_before, &snapshot(&p.a)?)
}

/// DIR a mount point cannot be renamed or swapped: it is restored beneath itself, what it held
/// kept in the version store first, and no work copy is left beside it.
#[test]
fn mount_point_is_restored_beneath_itself() -> TestResult {
    let p = Pair::new()?;
    let Some(_mount) = mounted_or_skip(
        Mounted::tmpfs(&p.a, "size=8m"),
        "a tmpfs",
        "restore::mount_point_is_restored_beneath_itself",
    )?
    else {
        return Ok(());
    };
    synced_then_edited(&p)?;
    let edited = snapshot(&p.a)?;
    let version = fs::canonicalize(p.versions("A").join("_1"))?;
    let dev =
        |path: &Path| -> Res<u64> { Ok(std::os::unix::fs::MetadataExt::dev(&fs::metadata(path)?)) };
    let mounted = dev(&p.a)?;

    let out = p.run(&[&p.a, &"--restore"])?;

    expect_code(&out, 0)?;
    assert_trees_equal(&version, &p.a)?;
    ensure!(
        dev(&p.a)? == mounted,
        "A is no longer the mounted file system"
    );
    assert_same(
        "what A held, kept under before-restore-*",
        &edited,
        &kept_by_restores(&p, "A")?,
    )?;
    let beside = work_leftovers(p.a.parent().ok_or("no parent")?)?;
    ensure!(beside.is_empty(), "work copies left beside A: {beside:?}");
    ensure!(
        p.log().contains("held before is kept in"),
        "the log does not say where A's content went:\n{}",
        p.log()
    );
    Ok(())
}

/// `--dry-run` with `--path` or `--target` says what it would create, replace and remove
/// there, and changes nothing anywhere.
#[test]
fn dry_run_with_path_or_target_changes_nothing() -> TestResult {
    let p = Pair::new()?;
    synced_then_edited(&p)?;
    fs::remove_file(p.a.join("notes.txt"))?;
    let root = p.a.parent().ok_or("A has no parent")?.to_path_buf();
    let tree = || -> Res<Snapshot> {
        let mut snap = snapshot(&root)?;
        snap.retain(|rel, _| !rel.ends_with("twoway.log"));
        Ok(snap)
    };
    let before = tree()?;
    let other = root.join("elsewhere");

    let dry_lines = || -> String {
        p.log()
            .lines()
            .filter(|l| l.contains("dry run: would"))
            .collect::<Vec<_>>()
            .join("\n")
    };

    let out = p.run(&[&p.a, &"--restore", &"--dry-run", &"--path", &"sub"])?;
    expect_code(&out, 0)?;
    let log = dry_lines();
    for line in [
        "dry run: would replace ",
        "sub/data.bin",
        "dry run: would remove ",
        "sub/extra.txt",
    ] {
        ensure!(log.contains(line), "no `{line}` in the log:\n{log}");
    }
    ensure!(
        !log.contains("would create") && !log.contains("notes.txt"),
        "the dry run of --path sub speaks of paths outside it:\n{log}"
    );

    let out = p.run(&[&p.a, &"--restore", &"--dry-run", &"--target", &other])?;
    expect_code(&out, 0)?;
    let log = dry_lines();
    ensure!(
        contains_path(&log, &other.join("notes.txt")) && log.contains("would create"),
        "the dry run into another directory does not say it would create there:\n{log}"
    );
    assert_same("everything after the dry runs", &before, &tree()?)
}

#[test]
fn path_or_target_without_restore_is_refused() -> TestResult {
    let p = Pair::new()?;
    for args in [["--path", "x"], ["--target", "/tmp/x"]] {
        let out = p.run(&[&p.a, &p.b, &"--once", &args[0], &args[1]])?;
        expect_code(&out, 2)?;
        ensure!(
            stderr(&out).contains(args[0]) && stderr(&out).lines().count() == 1,
            "{}",
            stderr(&out)
        );
        ensure!(!p.state.join("config.json").exists(), "state was written");
    }
    Ok(())
}

/// A `--path` directory that is a mount point is restored beneath itself as DIR would be:
/// what it held kept at `before-restore-*/REL`, no work copy left in DIR.
#[test]
fn mount_point_inside_dir_is_restored_beneath_itself_by_path() -> TestResult {
    let p = Pair::new()?;
    let sub = mkdir(&p.a, "sub")?;
    let Some(_mount) = mounted_or_skip(
        Mounted::tmpfs(&sub, "size=8m"),
        "a tmpfs",
        "restore::mount_point_inside_dir_is_restored_beneath_itself_by_path",
    )?
    else {
        return Ok(());
    };
    synced_then_edited(&p)?;
    let version = fs::canonicalize(p.versions("A").join("_1"))?;

    let out = p.run(&[&p.a, &"--restore", &"--path", &"sub"])?;

    expect_code(&out, 0)?;
    assert_trees_equal(&version.join("sub"), &sub)?;
    ensure!(
        read(&p.a.join("notes.txt"))? == b"notes edited later\n",
        "notes.txt, outside the restored path, was changed"
    );
    let kept = kept_by_restores(&p, "A")?;
    ensure!(
        kept.get(Path::new("sub/extra.txt")).map(|e| &e.node)
            == Some(&Node::File(Content::Bytes(b"added later".to_vec()))),
        "what the mounted sub held is not kept at before-restore-*/sub: {kept:?}"
    );
    for dir in [&p.a, &sub] {
        let left = work_leftovers(dir)?;
        ensure!(left.is_empty(), "work left in {}: {left:?}", dir.display());
    }
    Ok(())
}

/// A restore beneath a mount point that fails (here the file system is too small to hold the
/// version beside what it holds) changes nothing and leaves no work copy behind, neither in
/// it nor beside it (each try used to leave a full copy beside it).
#[test]
fn failed_restore_of_a_mount_point_leaves_no_work_copy() -> TestResult {
    let p = Pair::new()?;
    let Some(_mount) = mounted_or_skip(
        Mounted::tmpfs(&p.a, "size=1m"),
        "a tmpfs",
        "restore::failed_restore_of_a_mount_point_leaves_no_work_copy",
    )?
    else {
        return Ok(());
    };
    write(&p.a, "big.bin", vec![1u8; 600 << 10])?;
    p.sync_once()?;
    write(&p.a, "big.bin", vec![2u8; 600 << 10])?;
    let before = snapshot(&p.a)?;

    let out = p.run(&[&p.a, &"--restore"])?;

    expect_code(&out, 2)?;
    assert_same("A after a failed restore", &before, &snapshot(&p.a)?)?;
    let parent = p.a.parent().ok_or("no parent")?;
    for dir in [&p.a, &parent.to_path_buf()] {
        let left = work_leftovers(dir)?;
        ensure!(left.is_empty(), "work left in {}: {left:?}", dir.display());
    }
    ensure!(
        kept_by_restores(&p, "A")?.is_empty(),
        "a copy of A was left in the version store although nothing was restored"
    );
    Ok(())
}

//! History (issue 22): retention that outlives a mistake, versions listed with their dates,
//! and `--version` by name or date. Passes are dated by the test clock `ONEWAY_TEST_NOW`
//! (test builds only), so that days of passes run in seconds through the shipped retention
//! code; every run is in UTC.

use std::path::Path;
use std::process::{Command, Output};

use crate::restore::{Pair, expect_code, stderr};
use crate::util::*;

/// 2026-12-06 12:00:00 UTC.
const DAY_0_NOON: i64 = 1_796_558_400;
/// 2026-12-07 09:00:00 UTC.
const DAY_1_NINE: i64 = 1_796_634_000;
/// 2026-11-30 00:30:00 UTC, a Monday.
const MONDAY: i64 = 1_795_998_600;
/// What the default retention keeps at most: last 2, hourly 24, daily 9, weekly 4.
const DEFAULT_MOST: usize = 2 + 24 + 9 + 4;

fn at(mut cmd: Command, now: i64) -> Command {
    cmd.env("ONEWAY_TEST_NOW", now.to_string()).env("TZ", "UTC");
    cmd
}

fn output(cmd: Command) -> Res<Output> {
    let mut cmd = cmd;
    Ok(cmd.output()?)
}

/// The version names a listing shows, newest first.
fn listed_names(listing: &str) -> Vec<String> {
    listing
        .lines()
        .skip(2)
        .filter_map(|l| l.split_whitespace().next().map(str::to_owned))
        .collect()
}

/// Passes every second with an edit before each: a directory deleted before them is still in
/// the versions after 200 of them, listed with its date, and brought back by naming a time
/// after its version was made and before the next. (Before: two versions, rotated at every
/// change, held it for two passes.)
#[test]
fn a_deleted_directory_outlives_200_passes_a_second_apart() -> TestResult {
    let p = Pair::new()?;
    for name in ["a", "b", "c", "d", "e"] {
        write(&p.a, format!("{name}.txt"), name)?;
    }
    write(&p.a, "precious/one.txt", "one")?;
    write(&p.a, "precious/two.txt", "two")?;
    let once = |now: i64| -> Res<Output> {
        let out = output(at(p.command(&[&p.a, &p.b, &"--once"]), now))?;
        expect_code(&out, 0)?;
        Ok(out)
    };
    // A pass the day before: the directory has been there since.
    once(DAY_0_NOON)?;
    std::fs::remove_dir_all(p.a.join("precious"))?;
    for i in 0..200 {
        write(&p.a, "a.txt", format!("edit {i}"))?;
        once(DAY_1_NINE + i)?;
    }
    ensure!(
        !p.b.join("precious").exists(),
        "the deletion did not reach B"
    );

    let out = output(at(p.command(&[&p.a, &"--versions"]), DAY_1_NINE + 300))?;
    expect_code(&out, 0)?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let names = listed_names(&listing);
    ensure!(
        names.first().map(String::as_str) == Some("_1")
            && names.get(1).map(String::as_str) == Some("_0")
            && names.iter().any(|n| n == "2026-12-06_12-00-00")
            && names.len() <= DEFAULT_MOST,
        "expected _1, _0 and the version of the day before by its date, at most {DEFAULT_MOST} in all:\n{listing}"
    );
    ensure!(
        listing.contains("2026-12-06 12:00:00") && listing.contains("2026-12-07 09:03:19"),
        "the listing does not show the versions' dates:\n{listing}"
    );

    // Half an hour after the version of the day before, and long before the next one.
    let out = output(at(
        p.command(&[&p.a, &"--restore", &"--version", &"2026-12-06 12:30"]),
        DAY_1_NINE + 400,
    ))?;
    expect_code(&out, 0)?;
    ensure!(
        std::fs::read_to_string(p.a.join("precious/two.txt"))? == "two"
            && std::fs::read_to_string(p.a.join("a.txt"))? == "a",
        "the version at or before 2026-12-06 12:30 was not the one restored\n{}",
        p.log()
    );
    Ok(())
}

/// `--version` with a name no version has, or a date before every version: exit 2, one line,
/// nothing changed.
#[test]
fn a_version_that_is_not_there_is_a_clear_error() -> TestResult {
    let p = Pair::new()?;
    write(&p.a, "f.txt", "f")?;
    let out = output(at(p.command(&[&p.a, &p.b, &"--once"]), DAY_0_NOON))?;
    expect_code(&out, 0)?;
    let before = snapshot(&p.a)?;
    for choice in ["_7", "2020-01-01", "tomorrow"] {
        let out = output(at(
            p.command(&[&p.a, &"--restore", &"--version", &choice]),
            DAY_0_NOON + 60,
        ))?;
        expect_code(&out, 2)?;
        let said = stderr(&out) + &p.log();
        ensure!(
            said.contains(choice),
            "the error does not name {choice:?}:\n{said}"
        );
    }
    assert_same("A after refused restores", &before, &snapshot(&p.a)?)
}

/// A version every hour for over eight days, with an edit before each: what stood at the end
/// of a day and was deleted the next morning is still in a version a week after it was
/// deleted, and the store keeps no more than the default retention says.
#[test]
fn the_default_retention_keeps_a_deletion_recoverable_for_a_week() -> TestResult {
    let env = Env::new()?;
    for name in ["a", "b", "c", "d", "e"] {
        write(&env.src, format!("{name}.txt"), name)?;
    }
    write(&env.src, "precious/one.txt", "one")?;
    // Monday 00:30 to Tuesday 09:30: hour 33 is the morning after.
    let deleted_at = 33;
    let week = 7 * 24;
    for hour in 0..=deleted_at + week {
        if hour == deleted_at {
            std::fs::remove_dir_all(env.src.join("precious"))?;
        }
        write(&env.src, "a.txt", format!("edit {hour}"))?;
        let cmd = at(
            env.command(&[&"--once", &"--versioned", &env.src, &env.dst]),
            MONDAY + hour * 3600,
        );
        env.run_command(cmd, &env.log)?.expect_code(0)?;
    }
    let mut list = env.command_without_log();
    list.arg("--versions").arg(&env.dst);
    let out = output(at(list, MONDAY))?;
    expect_code(&out, 0)?;
    let listing = String::from_utf8_lossy(&out.stdout).into_owned();
    let names = listed_names(&listing);
    ensure!(
        names.len() <= DEFAULT_MOST && names.len() > 2,
        "expected more than two versions and at most {DEFAULT_MOST}:\n{listing}"
    );
    // Monday's last version, made at 23:30 before the deletion on Tuesday morning.
    let held = names
        .iter()
        .filter(|n| env.dst.join(n).join("precious/one.txt").exists())
        .collect::<Vec<_>>();
    ensure!(
        held.iter().any(|n| n.as_str() == "2026-11-30_23-30-00"),
        "no version a week later holds the deleted directory (those that do: {held:?}):\n{listing}"
    );
    ensure!(
        versioning_verifies(&env.dst.join("2026-11-30_23-30-00"))?,
        "the dated version does not match its manifest"
    );
    Ok(())
}

/// Whether the version at `dir` (a public name) matches its manifest.
fn versioning_verifies(dir: &Path) -> Res<bool> {
    let real = std::fs::canonicalize(dir)?;
    let manifest = versioning::Manifest::read(Path::new(&format!("{}.manifest", real.display())))?;
    Ok(versioning::verify(&real, &manifest)?.is_empty())
}

/// The names of what restores kept, newest first, as `--versions` lists them.
fn kept_by_restores(p: &Pair, prefix: &str) -> Res<Vec<String>> {
    let out = output(at(p.command(&[&p.a, &"--versions"]), DAY_0_NOON + 60))?;
    expect_code(&out, 0)?;
    Ok(listed_names(&String::from_utf8_lossy(&out.stdout))
        .into_iter()
        .filter(|n| n.starts_with(prefix))
        .collect())
}

/// What a restore replaced is listed by `--versions`, and restoring it undoes the restore;
/// what a `--path` restore replaced is restored with that `--path` (alone it would leave DIR
/// holding those paths only, and is refused); the next versioning pass keeps of them what the
/// retention keeps (several restores in one hour: the last two).
#[test]
fn a_restore_is_listed_undone_and_what_it_kept_is_pruned() -> TestResult {
    let p = Pair::new()?;
    for name in ["a", "b", "c", "d", "e"] {
        write(&p.a, format!("{name}.txt"), name)?;
    }
    let out = output(at(p.command(&[&p.a, &p.b, &"--once"]), DAY_0_NOON))?;
    expect_code(&out, 0)?;
    write(&p.a, "a.txt", "newer")?;
    write(&p.a, "new.txt", "new")?;
    let restore = |extra: &[&str]| -> Res<Output> {
        let mut cmd = at(p.command(&[&p.a, &"--restore"]), DAY_0_NOON + 60);
        cmd.args(extra);
        output(cmd)
    };

    expect_code(&restore(&[])?, 0)?;
    ensure!(
        !p.a.join("new.txt").exists(),
        "the restore left new.txt\n{}",
        p.log()
    );
    let kept = kept_by_restores(&p, "before-restore-")?;
    ensure!(
        kept.len() == 1,
        "expected one restore's keeping listed: {kept:?}"
    );
    expect_code(&restore(&["--version", &kept[0]])?, 0)?;
    ensure!(
        std::fs::read_to_string(p.a.join("a.txt"))? == "newer"
            && std::fs::read_to_string(p.a.join("new.txt"))? == "new",
        "restoring {} did not undo the restore\n{}",
        kept[0],
        p.log()
    );

    expect_code(&restore(&["--path", "a.txt"])?, 0)?;
    ensure!(
        std::fs::read_to_string(p.a.join("a.txt"))? == "a",
        "--path a.txt did not bring back the version's a.txt\n{}",
        p.log()
    );
    let by_path = kept_by_restores(&p, "before-path-restore-")?;
    ensure!(
        by_path.len() == 1,
        "expected one --path restore's keeping: {by_path:?}"
    );
    let whole = restore(&["--version", &by_path[0]])?;
    expect_code(&whole, 2)?;
    ensure!(
        (stderr(&whole) + &p.log()).contains("--path"),
        "the refusal does not say to give --path:\n{}",
        stderr(&whole)
    );
    ensure!(
        p.a.join("new.txt").exists(),
        "the refused restore changed A"
    );
    expect_code(&restore(&["--version", &by_path[0], "--path", "a.txt"])?, 0)?;
    ensure!(
        std::fs::read_to_string(p.a.join("a.txt"))? == "newer" && p.a.join("new.txt").exists(),
        "the --path restore was not undone\n{}",
        p.log()
    );

    // Four restores so far, each keeping what it replaced; a versioning pass prunes them.
    let all = |p: &Pair| kept_by_restores(p, "before-");
    ensure!(
        all(&p)?.len() == 4,
        "expected four keepings: {:?}",
        all(&p)?
    );
    let out = output(at(p.command(&[&p.a, &p.b, &"--once"]), DAY_0_NOON + 120))?;
    expect_code(&out, 0)?;
    let left = all(&p)?;
    // The last two, and the newest of an earlier hour if the restores straddled one.
    ensure!(
        (2..=3).contains(&left.len()),
        "expected the retention to keep two or three of four: {left:?}"
    );
    Ok(())
}

/// `oneway --versions BACKUP` lists and does nothing else: an option of a pass given with it is
/// a usage error (exit 2, one line naming it), not silently ignored.
#[test]
fn oneway_versions_takes_no_option_of_a_pass() -> TestResult {
    let env = Env::new()?;
    write(&env.src, "a.txt", "a")?;
    env.run(&[&"--once", &"--versioned", &env.src, &env.dst])?
        .expect_code(0)?;
    let mut list = env.command_without_log();
    list.arg("--versions").arg(&env.dst);
    let out = output(list)?;
    expect_code(&out, 0)?;
    ensure!(
        listed_names(&String::from_utf8_lossy(&out.stdout)) == ["_1"],
        "expected the one version listed:\n{}",
        String::from_utf8_lossy(&out.stdout)
    );
    for flag in ["--once", "--versioned", "--force", "--dry-run"] {
        let mut cmd = env.command_without_log();
        cmd.arg("--versions").arg(&env.dst).arg(flag);
        let out = output(cmd)?;
        expect_code(&out, 2)?;
        let said = stderr(&out);
        ensure!(
            said.lines().count() == 1 && said.contains(flag),
            "expected one line naming {flag}:\n{said}"
        );
    }
    Ok(())
}

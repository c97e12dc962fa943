//! The recovery system's settings: config.json's retention keys and twoway's `--keep-*`
//! options reach both versioning children, a damaged config.json stops twoway naming the key,
//! and the options are refused where they would do nothing. The children are a small script
//! that records its arguments, so what twoway passed is read rather than guessed from the
//! versions kept.

use std::fs;
use std::os::unix::fs::PermissionsExt;
use std::path::PathBuf;

use crate::util::*;

/// A twoway fixture with the recovery system on, config.json naming a script (in a directory
/// only the test's user can change, as config.json requires) that appends its arguments, one
/// line per run, to `args.txt`.
struct Recording {
    env: Env,
    args: PathBuf,
    script: PathBuf,
}

impl Recording {
    fn new() -> Res<Recording> {
        // Not `Env::twoway()`: that one gives every run `--no-recovery`.
        let env = Env::for_program(Program::Twoway)?;
        let args = env.root.join("args.txt");
        let bin = mkdir(&env.root, "bin")?;
        chmod(&bin, 0o755)?;
        let script = write(
            &bin,
            "record-args",
            format!("#!/bin/sh\nprintf '%s\\n' \"$*\" >> '{}'\n", args.display()),
        )?;
        fs::set_permissions(&script, fs::Permissions::from_mode(0o755))?;
        write(&env.src, "notes.txt", "notes")?;
        Ok(Recording { env, args, script })
    }

    /// Writes config.json: the script, and `extra` (`"key": value, …`, or nothing).
    fn config(&self, extra: &str) -> Res<String> {
        let text = format!(
            "{{\"script\": {:?}, \"interval\": [\"--interval\", \"60\"]{extra}}}\n",
            self.script.display().to_string()
        );
        fs::write(self.env.root.join("config.json"), &text)?;
        Ok(text)
    }

    /// Each run of the script: its arguments.
    fn runs(&self) -> Res<Vec<String>> {
        Ok(fs::read_to_string(&self.args)
            .unwrap_or_default()
            .lines()
            .map(str::to_owned)
            .collect())
    }
}

/// config.json's `keep_daily` and the command line's `--keep-weekly` both reach both children,
/// beside the defaults of the keys neither gives.
#[test]
fn retention_from_config_and_command_line_reaches_both_children() -> TestResult {
    let r = Recording::new()?;
    r.config(", \"keep_daily\": 3, \"keep_weekly\": 7")?;

    let run = r.env.once(&[&"--keep-weekly", &"9"])?;

    run.expect_code(0)?;
    let runs = r.runs()?;
    ensure!(
        runs.len() == 2,
        "expected one run per side, got {runs:?}\n{run}"
    );
    for (side, args) in [&r.env.src, &r.env.dst].iter().zip(&runs) {
        let side = fs::canonicalize(side)?;
        ensure!(
            args.starts_with(&format!("{} ", side.display()))
                && args.contains(" --versioned ")
                && args.contains(" --interval 60 ")
                && args.contains(" --keep-last 2 --keep-hourly 24 --keep-daily 3 --keep-weekly 9 ")
                && args.ends_with(" --once"),
            "the child of {} did not get config.json's keep_daily, the command line's \
             --keep-weekly and the defaults: {args}",
            side.display()
        );
    }
    ensure!(
        fs::read(r.env.dst.join("notes.txt"))? == b"notes",
        "the pass did not sync"
    );
    Ok(())
}

/// A value of the wrong type, or a misspelt key, stops twoway before the sync, with one error
/// naming config.json, the key and the value; config.json is left as it is and no child runs.
#[test]
fn damaged_retention_key_is_one_line_naming_it_and_nothing_runs() -> TestResult {
    let r = Recording::new()?;
    for (extra, says) in [
        (
            ", \"keep_daily\": \"seven\"",
            "\"keep_daily\" must be a whole number from 0 to 99999, got \"seven\"",
        ),
        (", \"keep_dialy\": 7", "unknown key \"keep_dialy\""),
    ] {
        let text = r.config(extra)?;

        let run = r.env.once(&[])?;

        run.expect_code(2)?;
        // The console also has the log's "syncing …" line, from before config.json is read.
        let errors: Vec<&str> = run.stderr.lines().filter(|l| l.contains("ERROR")).collect();
        ensure!(
            errors.len() == 1
                && errors[0].contains("config.json is damaged: ")
                && errors[0].contains(says),
            "expected one error naming config.json and saying {says:?}:\n{run}"
        );
        ensure!(
            fs::read_dir(&r.env.dst)?.next().is_none(),
            "BACKUP was synced despite a damaged config.json"
        );
        ensure!(
            fs::read_to_string(r.env.root.join("config.json"))? == text,
            "config.json was rewritten"
        );
        ensure!(r.runs()?.is_empty(), "a child ran: {:?}", r.runs()?);
    }
    Ok(())
}

/// `--keep-*` where no version is kept (`--restore`, `--no-recovery`) is a usage error, one
/// line naming the option, before anything is touched.
#[test]
fn retention_options_without_versions_to_keep_are_a_usage_error() -> TestResult {
    let r = Recording::new()?;
    for (args, flag) in [
        (vec!["--restore", "--keep-daily", "3"], "--keep-daily"),
        (vec!["--restore", "--keep", "3"], "--keep-last"),
        (
            vec!["--no-recovery", "--once", "--keep-weekly", "9"],
            "--keep-weekly",
        ),
    ] {
        let mut all: Vec<&dyn AsRef<std::ffi::OsStr>> = args.iter().map(|a| a as _).collect();
        all.push(&r.env.src);
        if !args.contains(&"--restore") {
            all.push(&r.env.dst);
        }

        let run = r.env.run(&all)?;

        run.expect_code(2)?;
        ensure!(
            run.stderr.lines().count() == 1 && run.stderr.contains(flag),
            "expected one line naming {flag} for {args:?}:\n{run}"
        );
        ensure!(
            fs::read_dir(&r.env.dst)?.next().is_none(),
            "{args:?}: BACKUP was synced"
        );
        ensure!(
            !r.env.root.join("config.json").exists(),
            "{args:?}: config.json was written"
        );
    }
    Ok(())
}

//! What the console shows (issue 23): `-q` keeps warnings, errors and the summary, `-v` adds
//! why each path was decided, and the log file gets every operation line whatever the console
//! shows; a progress line only on a terminal (or with `--progress`), never an escape sequence
//! elsewhere.

use crate::util::*;

/// The log lines (of this run's program) on the run's stderr.
fn console_lines(run: &Run) -> Vec<LogLine> {
    run.stderr
        .lines()
        .filter_map(|l| parse_program_log_line(run.program, l))
        .collect()
}

/// A SOURCE with a directory and two files, the log's operation lines once copied.
fn small_tree(env: &Env) -> TestResult {
    write(&env.src, "a.txt", "a")?;
    write(&env.src, "sub/b.txt", "bb")?;
    Ok(())
}

// Cron runs `-q` to hear only of trouble: no operation line on the console, the summary still
// there, and the log file as complete as ever (SPEC §5).
#[test]
fn quiet_console_shows_the_summary_and_the_log_file_every_operation() -> TestResult {
    let env = Env::new()?;
    small_tree(&env)?;
    let run = env.once(&[&"-q"])?;
    run.expect_code(0)?;
    let console = console_lines(&run);
    let ops: Vec<&LogLine> = console
        .iter()
        .filter(|l| is_operation(&l.message))
        .collect();
    ensure!(
        ops.is_empty(),
        "-q: operation lines on the console: {ops:?}\n{run}"
    );
    ensure!(
        console
            .iter()
            .any(|l| l.message.starts_with("pass finished")),
        "-q: no summary on the console\n{run}"
    );
    ensure!(
        console
            .iter()
            .any(|l| l.message.starts_with("Total number of operations: ")),
        "-q: no operation count on the console\n{run}"
    );
    ensure!(
        console.iter().all(|l| l.level != "INFO"
            || l.message.starts_with("pass finished")
            || l.message.starts_with("Total number of operations")),
        "-q: other INFO lines on the console\n{run}"
    );
    for op in ["copied a.txt", "copied sub/b.txt", "created directory sub"] {
        run.expect("INFO", op)?;
    }
    ensure!(
        !run.log.contains("DEBUG"),
        "without -v the log file has DEBUG lines\n{run}"
    );
    expect_tree(
        "BACKUP",
        &env.dst,
        &[
            ("a.txt", Want::file("a")),
            ("sub", Want::Dir),
            ("sub/b.txt", Want::file("bb")),
        ],
    )
}

// `-v` says why: which attribute differed for a file whose metadata alone is updated, and why
// a file is copied; on the console and in the log file.
#[test]
fn verbose_mirror_says_which_attribute_differed_and_why_a_file_is_copied() -> TestResult {
    let env = Env::new()?;
    small_tree(&env)?;
    env.once(&[])?.expect_code(0)?;
    chmod(&env.src.join("a.txt"), 0o600)?;
    write(&env.src, "sub/b.txt", "bbb")?;
    let run = env.once(&[&"-v"])?;
    run.expect_code(0)?;
    let why = [
        "a.txt: same content, metadata differs (mode 644 -> 600)",
        "sub/b.txt: copied: size differs (2 -> 3 bytes)",
    ];
    for reason in why {
        run.expect("DEBUG", reason)?;
        ensure!(
            console_lines(&run)
                .iter()
                .any(|l| l.level == "DEBUG" && l.message == reason),
            "-v: `{reason}` not on the console\n{run}"
        );
    }
    run.expect("INFO", "updated metadata of a.txt")?;
    run.expect("INFO", "replaced sub/b.txt")?;
    // Without -v, no reasons anywhere.
    write(&env.src, "sub/b.txt", "bbbb")?;
    let plain = env.once(&[])?;
    plain.expect_code(0)?;
    ensure!(
        !plain.stderr.contains("DEBUG") && !plain.log.contains("DEBUG"),
        "DEBUG lines without -v\n{plain}"
    );
    Ok(())
}

// `-v` on twoway names the rule of the reconcile that decided each changed path: one side's
// change travels, and a change on both sides is a conflict won by --conflict.
#[test]
fn verbose_twoway_names_the_rule_that_decided() -> TestResult {
    let env = Env::twoway()?;
    write(&env.src, "one.txt", "1")?;
    write(&env.src, "both.txt", "base")?;
    env.once(&[])?.expect_code(0)?;
    write(&env.src, "one.txt", "11")?;
    let newer = write(&env.src, "both.txt", "source")?;
    let older = write(&env.dst, "both.txt", "backup")?;
    set_mtime(&newer, T0 + 100, 0)?;
    set_mtime(&older, T0, 0)?;
    let run = env.once(&[&"--verbose"])?;
    run.expect_code(0)?;
    run.expect(
        "DEBUG",
        "one.txt: new or changed in SOURCE only: SOURCE's version travels",
    )?;
    run.expect(
        "DEBUG",
        "both.txt: changed on both sides: conflict, SOURCE's version wins by --conflict",
    )?;
    ensure!(
        console_lines(&run)
            .iter()
            .any(|l| l.level == "DEBUG" && l.message.starts_with("both.txt: changed on both")),
        "-v: the rule is not on the console\n{run}"
    );
    Ok(())
}

// `-q` and `-v` together make no sense: a usage error, nothing done.
#[test]
fn quiet_and_verbose_together_are_a_usage_error() -> TestResult {
    let env = Env::new()?;
    small_tree(&env)?;
    let run = env.once(&[&"-q", &"-v"])?;
    run.expect_code(2)?;
    empty_dir(&env.dst)
}

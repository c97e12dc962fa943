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
    // The summary is two lines: what the pass changed, then its numbers.
    ensure!(
        console.iter().all(|l| l.level != "INFO"
            || l.message.starts_with("pass finished")
            || parse_changes_line(&l.message).is_some()
            || l.message.starts_with("Total number of operations")),
        "-q: other INFO lines on the console\n{run}"
    );
    ensure!(
        console
            .iter()
            .any(|l| parse_changes_line(&l.message).is_some()),
        "-q: no line of changes on the console\n{run}"
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

/// Each copy waits this long (the test aid `ONEWAY_TEST_COPY_DELAY_MS`), so that a pass of
/// [`SLOW_FILES`] files lasts seconds on any machine and its progress line is redrawn (every
/// 200 ms) several times while it copies.
const COPY_DELAY_MS: &str = "300";
const SLOW_FILES: usize = 8;

/// SOURCE with [`SLOW_FILES`] files of 64 KiB and a file BACKUP already holds alike, so that
/// the pass plans whole (not a first copy into an empty BACKUP, which streams and has no
/// total) and deletes nothing.
fn slow_tree(env: &Env) -> TestResult {
    for i in 0..SLOW_FILES {
        write(&env.src, format!("f{i}.bin"), noise(i as u64, 64 * 1024))?;
    }
    write(&env.src, "kept.txt", "same")?;
    let kept = write(&env.dst, "kept.txt", "same")?;
    set_mtime(&kept, T0, 0)?;
    set_mtime(&env.src.join("kept.txt"), T0, 0)?;
    Ok(())
}

/// Runs the fixture's program with `args` under a pseudo-terminal (util-linux `script`), with
/// the copy delay: what the terminal showed (stdout and stderr together) is the run's stdout.
fn on_terminal(env: &Env, args: &[&str]) -> Res<Run> {
    let quote = |s: &str| format!("'{}'", s.replace('\'', r"'\''"));
    let mut line = vec![
        quote(env.program.bin()),
        "--log".to_string(),
        quote(&env.log.to_string_lossy()),
    ];
    line.extend(args.iter().map(|a| quote(a)));
    line.push(quote(&env.src.to_string_lossy()));
    line.push(quote(&env.dst.to_string_lossy()));
    let mut cmd = std::process::Command::new("script");
    cmd.arg("-qfec")
        .arg(line.join(" "))
        .arg("/dev/null")
        .current_dir(&env.root)
        .env("XDG_CACHE_HOME", &env.cache)
        .env("XDG_STATE_HOME", &env.state_home)
        .env("TERM", "xterm")
        .env("ONEWAY_TEST_COPY_DELAY_MS", COPY_DELAY_MS)
        .env_remove("RUST_LOG")
        .stdin(std::process::Stdio::null());
    env.run_command(cmd, &env.log)
}

/// The percentages of the progress lines drawn in `screen` (what a terminal was sent), in
/// order, with the whole text of each line.
fn progress_lines(screen: &str) -> Vec<(u32, String)> {
    screen
        .split(['\r', '\n'])
        .map(|s| s.trim_start_matches("\x1b[2K").trim())
        .filter_map(|s| {
            let (percent, rest) = s.split_once('%')?;
            let percent: u32 = percent.trim().parse().ok()?;
            rest.contains(" files").then(|| (percent, s.to_string()))
        })
        .collect()
}

// On a terminal a pass shows one live line: redrawn several times during a long copy, its
// percentage never going back, with the file being copied; the log lines appear above it,
// whole, the same as in the log file, which holds no escape sequence.
#[test]
fn progress_line_moves_during_a_long_copy_on_a_terminal() -> TestResult {
    let env = Env::new()?;
    slow_tree(&env)?;
    let run = on_terminal(&env, &["--once"])?;
    run.expect_code(0)?;
    let screen = &run.stdout;
    let drawn = progress_lines(screen);
    let mut distinct: Vec<&str> = drawn.iter().map(|(_, l)| l.as_str()).collect();
    distinct.dedup();
    ensure!(
        distinct.len() >= 4,
        "expected the progress line redrawn several times, saw {distinct:#?}\n{run}"
    );
    let percents: Vec<u32> = drawn.iter().map(|(p, _)| *p).collect();
    ensure!(
        percents.windows(2).all(|w| w[0] <= w[1]),
        "the percentage went back: {percents:?}\n{run}"
    );
    ensure!(
        percents.first() < percents.last() && percents.iter().any(|&p| p > 0 && p < 100),
        "the percentage did not move through the copy: {percents:?}\n{run}"
    );
    ensure!(
        drawn
            .iter()
            .any(|(_, l)| l.contains(&format!("/{SLOW_FILES} files")) && l.contains(".bin")),
        "no line with the files' total and the file being copied: {distinct:#?}\n{run}"
    );
    // Never torn: each log line on the terminal is whole, and they are the log file's lines.
    let on_screen: Vec<LogLine> = screen
        .split('\n')
        .filter_map(|l| {
            let l = l.trim_end_matches('\r');
            let at = l.find("[ONEWAY]")?;
            // What precedes a log line on its screen line was cleared away.
            let before = l[..at].trim_matches('\r');
            let cleared = before.is_empty() || before.ends_with("\x1b[2K");
            let torn = LogLine {
                level: "TORN".into(),
                message: l.to_string(),
            };
            Some(match parse_log_line(&l[at..]) {
                Some(line) if cleared => line,
                _ => torn,
            })
        })
        .collect();
    ensure!(
        on_screen == run.lines(),
        "the terminal's log lines differ from the log file's: {on_screen:#?}\n{run}"
    );
    ensure!(
        !run.log.contains('\x1b'),
        "an escape sequence in the log file\n{run}"
    );
    ensure!(
        run.operations()
            .iter()
            .filter(|o| o.starts_with("copied "))
            .count()
            == SLOW_FILES,
        "expected {SLOW_FILES} copies\n{run}"
    );
    Ok(())
}

// Not on a terminal (cron, a pipe): no progress line and no escape sequence, on the console or
// in the log; `--progress` forces the line there, and `--no-progress` or `-q` keep it off a
// terminal.
#[test]
fn no_progress_line_or_escape_sequence_without_a_terminal_unless_forced() -> TestResult {
    let env = Env::new()?;
    slow_tree(&env)?;
    let mut cmd = env.command(&[&"--once", &env.src, &env.dst]);
    cmd.env("ONEWAY_TEST_COPY_DELAY_MS", COPY_DELAY_MS);
    let piped = env.run_command(cmd, &env.log)?;
    piped.expect_code(0)?;
    ensure!(
        !piped.stderr.contains('\x1b') && !piped.stderr.contains('\r'),
        "escape sequences on a console that is no terminal\n{piped}"
    );
    ensure!(
        !piped.log.contains('\x1b'),
        "an escape sequence in the log file\n{piped}"
    );
    piped.expect_well_formed_log()?;
    ensure!(
        piped
            .operations()
            .iter()
            .filter(|o| o.starts_with("copied "))
            .count()
            == SLOW_FILES,
        "expected {SLOW_FILES} copies\n{piped}"
    );

    write(&env.src, "f0.bin", "changed")?;
    let forced = env.once(&[&"--progress"])?;
    forced.expect_code(0)?;
    ensure!(
        forced.stderr.contains("\x1b[2K") && forced.stderr.contains(" files"),
        "--progress drew no progress line on a pipe\n{forced}"
    );
    ensure!(
        !forced.log.contains('\x1b'),
        "an escape sequence in the log file\n{forced}"
    );

    for off in [["--no-progress"], ["-q"]] {
        write(&env.src, "f0.bin", format!("changed again {off:?}"))?;
        let mut args = vec!["--once"];
        args.extend(off);
        let run = on_terminal(&env, &args)?;
        run.expect_code(0)?;
        ensure!(
            !run.stdout.contains('\x1b'),
            "{off:?}: escape sequences on the terminal\n{run}"
        );
    }
    Ok(())
}

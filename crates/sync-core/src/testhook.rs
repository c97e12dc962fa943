//! Test aids, documented as such and doing nothing else:
//! - when the environment variable `ONEWAY_TEST_HOOK_AFTER_PLAN` is set, a pass runs it as a
//!   shell command (`sh -c`) after it has scanned, hashed and decided what to do, and before it
//!   changes anything, and waits for it. Tests use it to change a tree between the scan and the
//!   apply step without sleeps or races ("a file edited after the scan is never overwritten");
//!   a restore runs it too, once the version is verified and before it copies it;
//! - `ONEWAY_TEST_NOW` (seconds since 1970) is the time a versioned pass dates its version by,
//!   so that a test can run a week of passes in seconds through the retention code users get;
//! - `ONEWAY_TEST_COPY_DELAY_MS`: each copy of a file waits this long before it starts, so
//!   that a test sees a pass's progress line move during a copy however fast the machine is.
//!
//! They exist only with this crate's `test-hook` feature, which the root package switches on
//! through a dev-dependency, so only the binaries `cargo test` builds have it: a binary a user
//! installs or builds for release runs no shell command taken from its environment.

/// The variable's name.
#[cfg(feature = "test-hook")]
pub const AFTER_PLAN: &str = "ONEWAY_TEST_HOOK_AFTER_PLAN";

/// Runs the hook, if set. Its failure is logged and otherwise ignored.
#[cfg(feature = "test-hook")]
pub fn after_plan() {
    let Some(command) = std::env::var_os(AFTER_PLAN) else {
        return;
    };
    match std::process::Command::new("sh")
        .arg("-c")
        .arg(&command)
        .status()
    {
        Ok(status) if status.success() => {}
        Ok(status) => log::warn!("test hook {AFTER_PLAN} failed: {status}"),
        Err(err) => log::warn!("cannot run test hook {AFTER_PLAN}: {err}"),
    }
}

/// Without the `test-hook` feature: nothing, whatever the environment holds.
#[cfg(not(feature = "test-hook"))]
#[inline]
pub fn after_plan() {}

/// The clock's variable.
#[cfg(feature = "test-hook")]
pub const NOW: &str = "ONEWAY_TEST_NOW";

/// The time a version is dated by: `ONEWAY_TEST_NOW` where set (to whole seconds), else now.
#[cfg(feature = "test-hook")]
pub fn now() -> jiff::Timestamp {
    std::env::var(NOW)
        .ok()
        .and_then(|s| s.parse::<i64>().ok())
        .and_then(|secs| jiff::Timestamp::from_second(secs).ok())
        .unwrap_or_else(jiff::Timestamp::now)
}

/// Without the `test-hook` feature: now, whatever the environment holds.
#[cfg(not(feature = "test-hook"))]
#[inline]
pub fn now() -> jiff::Timestamp {
    jiff::Timestamp::now()
}

/// The copy delay's variable.
#[cfg(feature = "test-hook")]
pub const COPY_DELAY: &str = "ONEWAY_TEST_COPY_DELAY_MS";

/// Waits `ONEWAY_TEST_COPY_DELAY_MS` milliseconds where it is set.
#[cfg(feature = "test-hook")]
pub fn before_copy() {
    static DELAY: std::sync::OnceLock<Option<std::time::Duration>> = std::sync::OnceLock::new();
    let delay = DELAY.get_or_init(|| {
        std::env::var(COPY_DELAY)
            .ok()
            .and_then(|s| s.parse().ok())
            .map(std::time::Duration::from_millis)
    });
    if let Some(delay) = delay {
        std::thread::sleep(*delay);
    }
}

/// Without the `test-hook` feature: nothing.
#[cfg(not(feature = "test-hook"))]
#[inline]
pub fn before_copy() {}

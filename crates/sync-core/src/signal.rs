//! Ctrl+C and SIGTERM: the handler sets a flag, which passes check between file operations,
//! and wakes a run that sleeps until its next pass.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);
/// Wakes [`sleep_unless_stopped`] when a stop is requested. The flag is set and the sleepers
/// notified under the lock, so a request between a sleeper's check and its wait is not missed.
static WAKE_LOCK: Mutex<()> = Mutex::new(());
static WAKE: Condvar = Condvar::new();

/// Installs the handler for SIGINT and SIGTERM.
///
/// Fails if a handler was installed already.
pub fn install() -> Result<(), ctrlc::Error> {
    // `ctrlc` runs this on a thread of its own, not in the signal handler: it may lock.
    ctrlc::set_handler(|| {
        let _held = WAKE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
        STOP.store(true, Ordering::SeqCst);
        WAKE.notify_all();
    })
}

/// True once Ctrl+C or SIGTERM was received.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps for `duration`, waking early when a stop is requested. Returns true if it was.
///
/// The thread sleeps until the deadline or the stop, without waking in between: a periodic
/// run waiting an hour for its next pass costs nothing meanwhile.
pub fn sleep_unless_stopped(duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    let mut held = WAKE_LOCK.lock().unwrap_or_else(|e| e.into_inner());
    loop {
        if stop_requested() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        held = WAKE
            .wait_timeout(held, deadline - now)
            .unwrap_or_else(|e| e.into_inner())
            .0;
    }
}

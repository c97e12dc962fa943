//! Ctrl+C and SIGTERM: the handler only sets a flag, which passes check between file operations.

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

static STOP: AtomicBool = AtomicBool::new(false);

/// Installs the handler for SIGINT and SIGTERM.
///
/// Fails if a handler was installed already.
pub fn install() -> Result<(), ctrlc::Error> {
    ctrlc::set_handler(|| STOP.store(true, Ordering::SeqCst))
}

/// True once Ctrl+C or SIGTERM was received.
pub fn stop_requested() -> bool {
    STOP.load(Ordering::SeqCst)
}

/// Sleeps for `duration`, waking early when a stop is requested. Returns true if it was.
pub fn sleep_unless_stopped(duration: Duration) -> bool {
    let deadline = Instant::now() + duration;
    loop {
        if stop_requested() {
            return true;
        }
        let now = Instant::now();
        if now >= deadline {
            return false;
        }
        // Short naps keep the reaction to a signal well under a second without a busy loop.
        std::thread::sleep((deadline - now).min(Duration::from_millis(50)));
    }
}

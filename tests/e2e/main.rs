//! End-to-end tests: the real binaries on real temporary directories.

mod util;

mod attacks;
mod console;
mod depth;
mod faithful;
mod faithful_twoway;
mod faithful_versions;
mod faults;
mod history;
mod limits;
mod mounts;
mod oneway;
mod recovery_config;
mod restore;
mod shared_versions;
mod sparse;
mod state_safety;
mod summary;
mod twoway;
mod versioned;

//! Running a program: the options both binaries take ([`flags`]), the checks and set-up they
//! share ([`startup`], [`roots`], [`lock`], [`logging`]), where the program keeps its own
//! files ([`places`]) and whether it may rely on them ([`trust`]), and the loop that runs a
//! pass at every interval ([`passes`]).

pub mod console;
pub mod flags;
pub mod jobs;
pub mod lock;
pub mod logging;
pub mod passes;
pub mod places;
pub mod roots;
pub mod startup;
pub mod trust;

//! One recorder at a time: KSM's knobs are global, so two runs would restore each other's
//! settings wrongly.
use std::fs::File;

use anyhow::{Result, anyhow};
use nix::fcntl::{Flock, FlockArg};

pub const LOCK_PATH: &str = "/run/lock/ksm-trace.lock";

pub struct RecorderLock(#[allow(dead_code)] Flock<File>);

pub fn acquire() -> Result<RecorderLock> {
    let file = File::create(LOCK_PATH)
        .or_else(|_| File::open(LOCK_PATH))
        .map_err(|e| anyhow!("cannot open {LOCK_PATH} ({e}): run as root"))?;
    Flock::lock(file, FlockArg::LockExclusiveNonblock)
        .map(RecorderLock)
        .map_err(|_| anyhow!("another ksm-trace is already recording (it holds {LOCK_PATH}): wait for it to finish"))
}

//! `ksm-trace recover`: undoes what a ksm-trace that was killed left behind (see
//! [`crate::run::recovery`]).
use anyhow::Result;

use super::print;
use crate::run::{lock, recovery};

/// `ksm-trace recover`: takes the recorder lock (a live run recovers by itself) and undoes what
/// dead runs left; says what it did, or that there was nothing.
pub fn run() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        anyhow::bail!(
            "ksm-trace recover must run as root (it restores KSM knobs): run it with sudo"
        );
    }
    let _lock = lock::acquire()?;
    let lines = recovery::recover_stale()?;
    let text: String = if lines.is_empty() {
        "ksm-trace: nothing to recover: no state left behind by a ksm-trace that died\n".into()
    } else {
        lines.iter().map(|l| format!("ksm-trace: {l}\n")).collect()
    };
    print(&text)
}

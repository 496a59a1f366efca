//! Ctrl-C and SIGTERM as one stop request, so every command that changes the system ends
//! through its orderly path (knobs restored, workload stopped, guests ended, temp files
//! removed) instead of dying: awaitable for the async commands, a polled flag for blocking
//! waits (the lab's, a workload's start). [`Interrupts`] sets the flag too: tokio's handler
//! (signal-hook-registry) chains to the one installed before it.
use std::sync::atomic::{AtomicI32, Ordering};

use anyhow::Result;
use nix::sys::signal::{SaFlags, SigAction, SigHandler, SigSet, Signal as Sig, sigaction};
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Interrupts {
    sigint: Signal,
    sigterm: Signal,
}

impl Interrupts {
    /// Takes over SIGINT and SIGTERM from here on: install it before changing anything.
    pub fn install() -> Result<Self> {
        // First, so that tokio's handler, registered below, calls it.
        install_stop_flag()?;
        Ok(Self {
            sigint: signal(SignalKind::interrupt())?,
            sigterm: signal(SignalKind::terminate())?,
        })
    }

    /// The next stop request: "interrupt" (Ctrl-C) or "terminate" (SIGTERM).
    pub async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.sigint.recv() => "interrupt",
            _ = self.sigterm.recv() => "terminate",
        }
    }
}

/// The signal number of the first stop request the flag saw (0: none).
static STOP_REQUESTED: AtomicI32 = AtomicI32::new(0);

extern "C" fn note_stop(signal: libc::c_int) {
    // Only an atomic store: async-signal-safe.
    let _ = STOP_REQUESTED.compare_exchange(0, signal, Ordering::SeqCst, Ordering::SeqCst);
}

/// Turns SIGINT and SIGTERM into a flag that blocking loops poll with [`stop_requested`].
/// Only the first call installs the handler: a later one would replace tokio's.
pub fn install_stop_flag() -> Result<()> {
    static INSTALLED: std::sync::Once = std::sync::Once::new();
    let mut result = Ok(());
    INSTALLED.call_once(|| result = install_flag_handler());
    result
}

fn install_flag_handler() -> Result<()> {
    let action = SigAction::new(
        SigHandler::Handler(note_stop),
        SaFlags::SA_RESTART,
        SigSet::empty(),
    );
    for signal in [Sig::SIGINT, Sig::SIGTERM] {
        // SAFETY: the handler only stores to an atomic.
        unsafe { sigaction(signal, &action) }?;
    }
    Ok(())
}

/// The stop request the flag saw, if any: "interrupt" or "terminate".
pub fn stop_requested() -> Option<&'static str> {
    match STOP_REQUESTED.load(Ordering::SeqCst) {
        0 => None,
        libc::SIGINT => Some("interrupt"),
        _ => Some("terminate"),
    }
}

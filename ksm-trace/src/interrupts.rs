//! Ctrl-C and SIGTERM as one awaitable stop request, so every command that changes the system
//! ends through its orderly path (knobs restored, workload stopped) instead of dying.
use anyhow::Result;
use tokio::signal::unix::{Signal, SignalKind, signal};

pub struct Interrupts {
    sigint: Signal,
    sigterm: Signal,
}

impl Interrupts {
    /// Takes over SIGINT and SIGTERM from here on: install it before changing anything.
    pub fn install() -> Result<Self> {
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

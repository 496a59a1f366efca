//! Child processes that never outlive ksm-trace, even when it is killed.
use std::{os::unix::process::CommandExt as _, process::Command};

use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};

/// Makes the kernel send `signal` to the child `cmd` starts when this process dies: SIGKILL
/// for workers and guests, SIGTERM for a ksm-trace child that must restore what it changed.
pub fn end_with_parent(cmd: &mut Command, signal: Signal) {
    let parent = std::process::id() as i32;
    // SAFETY: prctl and getppid are async-signal-safe.
    unsafe {
        cmd.pre_exec(move || {
            nix::sys::prctl::set_pdeathsig(signal).map_err(std::io::Error::from)?;
            // The parent may have died before the line above took effect.
            if libc::getppid() != parent {
                return Err(std::io::Error::other("ksm-trace exited"));
            }
            Ok(())
        });
    }
}

/// Sends `signal` to process `pid`; one that is already gone is not an error here.
pub fn send(pid: u32, signal: Signal) {
    let _ = kill(Pid::from_raw(pid as i32), signal);
}

//! Crash recovery. Every orderly exit puts the system back (knob guard, workload stop, drops),
//! but a SIGKILL, an OOM kill or a crash runs none of that. So before ksm-trace changes
//! anything it writes down, in a state file of its own under /run, what it is about to change:
//! each KSM knob's original value, the processes it starts, the run directories it creates and
//! what it mounts. The file is rewritten (atomically) as that changes and removed once all is
//! put back. The next ksm-trace that changes anything, or `ksm-trace recover`, finds state
//! files whose owner is dead and undoes what they list.
use std::{
    fs,
    io::Write as _,
    os::unix::fs::{DirBuilderExt as _, OpenOptionsExt as _},
    path::{Path, PathBuf},
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result};
use serde::{Deserialize, Serialize};

use crate::kernel::sysfs;

/// Where state files live: root-only, cleared at boot (a reboot undoes everything anyway).
pub const STATE_DIR: &str = "/run/ksm-trace";

/// A process this ksm-trace started, told apart from a later process that reuses its pid by
/// its start time.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Started {
    pub pid: u32,
    /// /proc/<pid>/stat field 22, clock ticks since boot.
    pub start_ticks: u64,
}

/// What one ksm-trace has changed and not yet put back.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct State {
    pub owner: Option<Started>,
    /// KSM knobs and their original values, in the order they were first changed.
    pub knobs: Vec<(String, String)>,
    /// ksmd was off and this run started it: after the workers are gone, let it finish one
    /// full scan (which drops their pages from its counters) before it is stopped again.
    pub ksmd_started: bool,
    pub processes: Vec<Started>,
    pub dirs: Vec<PathBuf>,
    pub mounts: Vec<PathBuf>,
}

impl State {
    fn is_empty(&self) -> bool {
        self.knobs.is_empty()
            && self.processes.is_empty()
            && self.dirs.is_empty()
            && self.mounts.is_empty()
    }
}

static STATE: Mutex<Option<State>> = Mutex::new(None);

fn own_path() -> PathBuf {
    Path::new(STATE_DIR).join(format!("state-{}.json", std::process::id()))
}

/// Applies `change` to this process's state and writes the file (removes it when nothing is
/// left to undo). Failing to write is reported once per call site as a warning: the run goes
/// on, it only loses crash recovery.
fn update(change: impl FnOnce(&mut State)) {
    let mut guard = STATE.lock().unwrap_or_else(|p| p.into_inner());
    let state = guard.get_or_insert_with(|| State {
        owner: started(std::process::id()),
        ..Default::default()
    });
    change(state);
    let result = if state.is_empty() {
        match fs::remove_file(own_path()) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e.into()),
            _ => Ok(()),
        }
    } else {
        write_atomically(&own_path(), state)
    };
    if let Err(e) = result {
        log::warn!(
            "crash-recovery state not saved ({e:#}): a SIGKILL now would need `ksm-trace recover` to be told by hand"
        );
    }
}

fn write_atomically(path: &Path, state: &State) -> Result<()> {
    fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(STATE_DIR)
        .with_context(|| format!("creating {STATE_DIR}"))?;
    let tmp = path.with_extension("tmp");
    let _ = fs::remove_file(&tmp);
    let mut file = fs::OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(&tmp)
        .with_context(|| format!("creating {}", tmp.display()))?;
    serde_json::to_writer(&mut file, state)?;
    file.write_all(b"\n")?;
    file.sync_all()?;
    fs::rename(&tmp, path)?;
    Ok(())
}

/// A knob is about to change from `original`.
pub fn knob_changed(name: &str, original: &str) {
    update(|s| {
        if !s.knobs.iter().any(|(n, _)| n == name) {
            s.knobs.push((name.to_owned(), original.to_owned()));
        }
    });
}

/// ksmd was started for this run (it was off).
pub fn ksmd_started() {
    update(|s| s.ksmd_started = true);
}

/// Every knob is back.
pub fn knobs_restored() {
    update(|s| {
        s.knobs.clear();
        s.ksmd_started = false;
    });
}

pub fn process_started(pid: u32) {
    if let Some(p) = started(pid) {
        update(|s| s.processes.push(p));
    }
}

pub fn process_ended(pid: u32) {
    update(|s| s.processes.retain(|p| p.pid != pid));
}

pub fn dir_created(path: &Path) {
    update(|s| s.dirs.push(path.to_owned()));
}

pub fn dir_removed(path: &Path) {
    update(|s| s.dirs.retain(|d| d != path));
}

pub fn mounted(path: &Path) {
    update(|s| s.mounts.push(path.to_owned()));
}

pub fn unmounted(path: &Path) {
    update(|s| s.mounts.retain(|m| m != path));
}

/// `pid` with its start time, if it is running. A zombie is not: it has exited, and only its
/// parent (here often a PID 1 that does not reap) can remove its entry.
fn started(pid: u32) -> Option<Started> {
    let stat = procfs::process::Process::new(pid as i32)
        .ok()?
        .stat()
        .ok()?;
    (!matches!(stat.state, 'Z' | 'X')).then_some(Started {
        pid,
        start_ticks: stat.starttime,
    })
}

fn alive(p: &Started) -> bool {
    started(p.pid).is_some_and(|now| now.start_ticks == p.start_ticks)
}

/// Undoes what every state file of a dead ksm-trace lists; returns one line per file that was
/// recovered. Call it holding the recorder lock, so no live run is changing the same knobs.
pub fn recover_stale() -> Result<Vec<String>> {
    let Ok(entries) = fs::read_dir(STATE_DIR) else {
        return Ok(Vec::new());
    };
    let mut lines = Vec::new();
    for entry in entries {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "tmp") {
            // A write interrupted before its rename: the previous file (if any) is whole.
            let _ = fs::remove_file(&path);
            continue;
        }
        if path == own_path() {
            continue;
        }
        let text =
            fs::read_to_string(&path).with_context(|| format!("reading {}", path.display()))?;
        let state: State = match serde_json::from_str(&text) {
            Ok(s) => s,
            Err(e) => {
                lines.push(format!(
                    "{} is not a ksm-trace state file ({e}): removed",
                    path.display()
                ));
                fs::remove_file(&path)?;
                continue;
            }
        };
        if state.owner.as_ref().is_some_and(alive) {
            continue;
        }
        lines.push(undo(&state));
        fs::remove_file(&path).with_context(|| format!("removing {}", path.display()))?;
    }
    Ok(lines)
}

/// Puts back what `state` lists, in the order a clean exit would: processes, then ksmd's last
/// full scan, then knobs, directories and mounts. Says what it did.
fn undo(state: &State) -> String {
    let mut done = Vec::new();
    let mut failed = Vec::new();
    let ended: Vec<&Started> = state.processes.iter().filter(|p| alive(p)).collect();
    for p in &ended {
        crate::run::child::send(p.pid, nix::sys::signal::Signal::SIGKILL);
    }
    let deadline = Instant::now() + Duration::from_secs(5);
    while ended.iter().any(|p| alive(p)) && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    if !ended.is_empty() {
        done.push(format!("ended {} process(es) it started", ended.len()));
    }
    if state.ksmd_started
        && let Err(e) = crate::kernel::let_ksmd_drop_exited()
    {
        failed.push(format!("{e:#}"));
    }
    for (name, value) in state.knobs.iter().rev() {
        if let Err(e) = sysfs::write(name, value) {
            failed.push(format!("{e:#}"));
        }
    }
    if !state.knobs.is_empty() {
        done.push(format!("restored {} KSM knob(s)", state.knobs.len()));
    }
    for d in &state.dirs {
        if d.exists() {
            match fs::remove_dir_all(d) {
                Ok(()) => done.push(format!("removed {}", d.display())),
                Err(e) => failed.push(format!("removing {}: {e}", d.display())),
            }
        }
    }
    for m in &state.mounts {
        match nix::mount::umount(m) {
            Ok(()) => done.push(format!("unmounted {}", m.display())),
            Err(nix::errno::Errno::EINVAL) => {} // not mounted any more
            Err(e) => failed.push(format!("unmounting {}: {e}", m.display())),
        }
    }
    let owner = state
        .owner
        .as_ref()
        .map_or("?".to_owned(), |o| o.pid.to_string());
    let mut line = format!(
        "recovered after a ksm-trace (pid {owner}) that did not exit cleanly: {}",
        if done.is_empty() {
            "nothing was left to undo".to_owned()
        } else {
            done.join(", ")
        }
    );
    if !failed.is_empty() {
        line.push_str(&format!("; could not: {}", failed.join("; ")));
    }
    line
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn state_is_empty_only_with_nothing_to_undo() {
        let mut s = State::default();
        assert!(s.is_empty());
        s.ksmd_started = true;
        assert!(s.is_empty(), "ksmd_started alone changes nothing by itself");
        s.dirs.push("/tmp/x".into());
        assert!(!s.is_empty());
    }

    #[test]
    fn a_process_is_alive_only_with_its_own_start_time() {
        let me = started(std::process::id()).unwrap();
        assert!(alive(&me));
        assert!(!alive(&Started {
            pid: me.pid,
            start_ticks: me.start_ticks + 1
        }));
    }
}

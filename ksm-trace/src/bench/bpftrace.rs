//! ksm-trace's measurements hand-written for bpftrace, as its users write them today — the
//! comparison `bench overhead` makes. The scripts aggregate in the kernel (counts and log2
//! histograms per process), which is bpftrace at its cheapest.
use std::{
    path::{Path, PathBuf},
    process::Stdio,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

use crate::probes::LatencyMode;
use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, BufReader},
    process::{Child, ChildStdout, Command},
    task::JoinHandle,
};

/// What ksm-trace's `--merge-latency off` set measures: full scans, merges and removals per
/// process (mm → owner → tgid), membership, ksmd's batches from sched_switch, and ksmd stacks.
const BASE: &str = r#"
BEGIN { printf("ready\n"); }
tracepoint:ksm:ksm_start_scan { @scan_start = nsecs; }
tracepoint:ksm:ksm_stop_scan /@scan_start/ { @full_scan_ns = hist(nsecs - @scan_start); }
tracepoint:ksm:ksm_merge_with_ksm_page { @merges[((struct mm_struct *)args->mm)->owner->tgid, args->err] = count(); }
tracepoint:ksm:ksm_merge_one_page { @zero_merges[((struct mm_struct *)args->mm)->owner->tgid] = count(); }
tracepoint:ksm:ksm_remove_rmap_item { @removals[((struct mm_struct *)args->mm)->owner->tgid] = count(); }
tracepoint:ksm:ksm_remove_ksm_page { @stable_nodes_removed = count(); }
tracepoint:ksm:ksm_enter, tracepoint:ksm:ksm_exit { @membership = count(); }
tracepoint:ksm:ksm_advisor { @advisor = count(); }
tracepoint:sched:sched_switch /args->next_pid == KSMD/ { @on = nsecs; }
tracepoint:sched:sched_switch /args->prev_pid == KSMD && @on/ { @batch_ns = hist(nsecs - @on); @batches = count(); }
profile:hz:PROFILE_HZ /pid == KSMD/ { @stacks[kstack] = count(); }
"#;

/// The mmap_lock bracket around each merge, as `--merge-latency always` attaches it: a release
/// closes only an acquire still open on its mm (without `@open`, a release paired with a stale
/// acquire and gave about 1 % of merges 64–128 ms), and a merge takes the interval it uses.
const BRACKET: &str = r#"
tracepoint:mmap_lock:mmap_lock_acquire_returned /pid == KSMD/ { @locked = nsecs; @locked_mm = (uint64)args->mm; @open = 1; }
tracepoint:mmap_lock:mmap_lock_released /pid == KSMD && @open && (uint64)args->mm == @locked_mm/ { @held_ns = nsecs - @locked; @held_mm = (uint64)args->mm; @open = 0; }
tracepoint:ksm:ksm_merge_with_ksm_page /args->err == 0 && (uint64)args->mm == @held_mm/ { @merge_ns = hist(@held_ns); @held_mm = 0; }
"#;

/// A bpftrace script and the ksm-trace mode measuring the same things.
pub struct Script {
    pub name: &'static str,
    /// What both measure, for the comparison line.
    pub measures: &'static str,
    pub same_as: LatencyMode,
    text: String,
}

/// The two scripts, for ksmd `ksmd`: without and with merge latency. They sample ksmd's
/// stacks at ksm-trace's default rate.
pub fn scripts(ksmd: u32) -> [Script; 2] {
    let pid = ksmd.to_string();
    let fill = |text: String| {
        text.replace("KSMD", &pid).replace(
            "PROFILE_HZ",
            &crate::probes::profile::DEFAULT_HZ.to_string(),
        )
    };
    [
        Script {
            name: "bpftrace, the same without merge latency (ksm:*, sched_switch, profile)",
            measures: "without merge latency",
            same_as: LatencyMode::Off,
            text: fill(BASE.to_owned()),
        },
        Script {
            name: "bpftrace, the same with the mmap_lock bracket",
            measures: "with merge latency (mmap_lock bracket)",
            same_as: LatencyMode::Always,
            text: fill(format!("{BASE}{BRACKET}")),
        },
    ]
}

/// `bpftrace` on PATH, if installed.
pub fn find() -> Option<PathBuf> {
    std::env::var_os("PATH")?
        .to_string_lossy()
        .split(':')
        .map(|dir| Path::new(dir).join("bpftrace"))
        .find(|p| p.is_file())
}

/// A bpftrace process with its probes attached.
pub struct Running {
    child: Child,
    stdout: BufReader<ChildStdout>,
    /// Its stderr, read as it comes: a pipe nobody reads fills up and blocks bpftrace's next
    /// write (it prints a line per stack it cannot resolve at exit).
    stderr: JoinHandle<String>,
}

/// How long bpftrace may take to compile and attach.
const ATTACH_TIMEOUT: Duration = Duration::from_secs(60);

impl Running {
    /// Starts `script` and returns once its BEGIN probe ran (every probe is attached by then).
    pub async fn start(bpftrace: &Path, script: &Script) -> Result<Self> {
        let mut cmd = Command::new(bpftrace);
        cmd.args(["-e", &script.text])
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        crate::run::child::end_with_parent(cmd.as_std_mut(), nix::sys::signal::Signal::SIGKILL);
        let mut child = cmd
            .spawn()
            .with_context(|| format!("starting {}", bpftrace.display()))?;
        if let Some(pid) = child.id() {
            crate::run::recovery::process_started(pid);
        }
        let mut stdout = BufReader::new(child.stdout.take().expect("stdout is piped"));
        let mut stderr_pipe = child.stderr.take().expect("stderr is piped");
        let stderr = tokio::spawn(async move {
            let mut text = String::new();
            let _ = stderr_pipe.read_to_string(&mut text).await;
            text
        });
        let ready = tokio::time::timeout(ATTACH_TIMEOUT, async {
            let mut line = String::new();
            loop {
                line.clear();
                if stdout.read_line(&mut line).await? == 0 {
                    return Ok::<bool, std::io::Error>(false);
                }
                if line.trim() == "ready" {
                    return Ok(true);
                }
            }
        })
        .await;
        if !matches!(ready, Ok(Ok(true))) {
            let _ = child.start_kill();
            let _ = child.wait().await;
            let stderr = stderr.await.unwrap_or_default();
            bail!(
                "bpftrace did not attach its probes: {}",
                first_error(&stderr)
            );
        }
        Ok(Self {
            child,
            stdout,
            stderr,
        })
    }

    /// Ends bpftrace as Ctrl-C would and returns how many ksmd batches it counted (its maps
    /// are printed on exit, outside the measured window).
    pub async fn stop(mut self) -> Result<u64> {
        let pid = self.child.id();
        if let Some(pid) = pid {
            crate::run::child::send(pid, nix::sys::signal::Signal::SIGINT);
        }
        let mut output = String::new();
        // bpftrace was seen missing a SIGINT now and then (still in epoll 30 s later, on a busy
        // two-core machine): ask again every few seconds, as a user would press Ctrl-C again.
        let exited = tokio::time::timeout(Duration::from_secs(30), async {
            let mut again = tokio::time::interval(Duration::from_secs(5));
            again.tick().await;
            let read = self.stdout.read_to_string(&mut output);
            tokio::pin!(read);
            loop {
                tokio::select! {
                    done = &mut read => {
                        done?;
                        break;
                    }
                    _ = again.tick() => {
                        if let Some(pid) = pid {
                            crate::run::child::send(pid, nix::sys::signal::Signal::SIGINT);
                        }
                    }
                }
            }
            self.child.wait().await
        })
        .await;
        if exited.is_err() {
            let _ = self.child.start_kill();
            let _ = self.child.wait().await;
        }
        if let Some(pid) = pid {
            crate::run::recovery::process_ended(pid);
        }
        let stderr = (&mut self.stderr).await.unwrap_or_default();
        match exited {
            Ok(status) => {
                status?;
            }
            Err(_) => bail!(
                "bpftrace did not exit within 30 s of SIGINT (killed; it said: {})",
                first_error(&stderr)
            ),
        }
        Ok(batches(&output))
    }
}

/// A bench stopped mid-window: bpftrace must be gone (its probes detached) before tracefs is
/// unmounted, so it is killed and reaped here rather than left to the runtime.
impl Drop for Running {
    fn drop(&mut self) {
        if let Some(pid) = self.child.id() {
            crate::run::child::send(pid, nix::sys::signal::Signal::SIGKILL);
            let _ = nix::sys::wait::waitpid(nix::unistd::Pid::from_raw(pid as i32), None);
            crate::run::recovery::process_ended(pid);
        }
    }
}

/// The first line of bpftrace's stderr that is not the harmless RLIMIT_MEMLOCK complaint.
fn first_error(stderr: &str) -> &str {
    stderr
        .lines()
        .find(|l| !l.contains("RLIMIT_MEMLOCK") && !l.trim().is_empty())
        .unwrap_or("no error output")
}

/// `@batches: N` from bpftrace's exit output (0 if absent).
fn batches(output: &str) -> u64 {
    output
        .lines()
        .find_map(|l| l.strip_prefix("@batches: "))
        .and_then(|n| n.trim().parse().ok())
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scripts_name_ksmd_and_only_the_second_times_merges() {
        let [base, bracket] = scripts(42);
        assert!(!base.text.contains("KSMD"));
        assert!(base.text.contains("profile:hz:99 /pid == 42/"));
        assert!(base.text.contains("args->next_pid == 42"));
        assert!(!base.text.contains("mmap_lock"));
        assert!(
            bracket
                .text
                .contains("mmap_lock_released /pid == 42 && @open")
        );
    }

    #[test]
    fn batches_come_from_the_exit_output() {
        assert_eq!(
            batches("Attaching 3 probes...\nready\n\n@batches: 957\n@x: 1\n"),
            957
        );
        assert_eq!(batches("ready\n"), 0);
    }
}

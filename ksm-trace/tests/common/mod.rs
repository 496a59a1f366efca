//! Shared by the root integration tests: they drive the one global ksmd, so each test takes a
//! machine-wide lock, starts from known knobs, and puts the knobs back afterwards. Which tests
//! run at all is the harness's call (harness.rs): a test whose need is unmet is ignored.
#![allow(dead_code)]

pub mod harness;
pub(crate) use harness::tests;

use std::{
    fs,
    os::unix::process::CommandExt as _,
    path::{Path, PathBuf},
    process::{Child, Command, Output, Stdio},
    time::{Duration, Instant},
};

use nix::fcntl::{Flock, FlockArg};

pub const KSM: &str = "/sys/kernel/mm/ksm";
const KNOBS: [&str; 4] = ["run", "pages_to_scan", "sleep_millisecs", "use_zero_pages"];

pub fn knob(name: &str) -> String {
    fs::read_to_string(Path::new(KSM).join(name))
        .unwrap()
        .trim()
        .to_owned()
}

pub fn set_knob(name: &str, value: &str) {
    fs::write(Path::new(KSM).join(name), value)
        .unwrap_or_else(|e| panic!("writing {name}={value}: {e}"));
}

pub fn knob_u64(name: &str) -> u64 {
    knob(name).parse().unwrap()
}

/// The machine-wide lock every root test holds: ksmd is global, and guests under TCG starve
/// each other on two cores.
pub fn test_lock() -> Flock<fs::File> {
    let file = fs::File::create("/run/lock/ksm-trace-tests.lock").unwrap();
    Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, e)| e)
        .unwrap()
}

/// Holds the test lock and restores the knobs it found.
pub struct KsmSession {
    _lock: Flock<fs::File>,
    saved: Vec<(&'static str, String)>,
    /// pages_shared + pages_sharing at the start.
    ksm_pages: u64,
    pub dir: PathBuf,
}

impl KsmSession {
    /// Waits for the lock, saves the knobs, and sets ksmd off with odd values, so a test can
    /// tell whether ksm-trace restored them.
    pub fn start(name: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "integration tests run as root: cargo xtask test"
        );
        let lock = test_lock();
        let saved = KNOBS.iter().map(|k| (*k, knob(k))).collect();
        Self::reset_knobs();
        let dir =
            std::env::temp_dir().join(format!("ksm-trace-test-{name}-{}", std::process::id()));
        fs::create_dir_all(&dir).unwrap();
        Self {
            _lock: lock,
            saved,
            ksm_pages: knob_u64("pages_shared") + knob_u64("pages_sharing"),
            dir,
        }
    }

    /// ksmd off, at the session's odd, slow values: 123 pages every 45 ms.
    pub fn reset_knobs() {
        set_knob("run", "0");
        set_knob("pages_to_scan", "123");
        set_knob("sleep_millisecs", "45");
    }

    pub fn path(&self, file: &str) -> PathBuf {
        self.dir.join(file)
    }

    /// The knobs as `start` set them: what ksm-trace must leave behind.
    pub fn assert_knobs_restored(&self) {
        assert_eq!(knob("run"), "0", "run restored");
        assert_eq!(knob("pages_to_scan"), "123", "pages_to_scan restored");
        assert_eq!(knob("sleep_millisecs"), "45", "sleep_millisecs restored");
    }
}

impl KsmSession {
    /// No KSM page of an exited worker stays counted: ksm-trace let ksmd drop them before
    /// stopping it again.
    pub fn assert_worker_pages_released(&self) {
        let now = knob_u64("pages_shared") + knob_u64("pages_sharing");
        assert!(
            now <= self.ksm_pages,
            "pages_shared + pages_sharing {now} after the run, {} before: exited workers' pages still counted",
            self.ksm_pages
        );
    }
}

impl KsmSession {
    /// After a run ended early: workers gone (within 2 s), knobs back, their pages released.
    pub fn assert_left_as_found(&self) {
        assert!(
            wait_until(Duration::from_secs(2), || pids_named("ksm-procs-")
                .is_empty()),
            "workers stopped"
        );
        self.assert_knobs_restored();
        self.assert_worker_pages_released();
    }
}

impl Drop for KsmSession {
    fn drop(&mut self) {
        for (k, v) in self.saved.iter().rev() {
            let _ = fs::write(Path::new(KSM).join(k), v);
        }
        let _ = fs::remove_dir_all(&self.dir);
    }
}

pub fn bin() -> &'static str {
    env!("CARGO_BIN_EXE_ksm-trace")
}

pub fn ksm_trace(args: &[&str]) -> Output {
    Command::new(bin())
        .args(args)
        .output()
        .expect("running ksm-trace")
}

/// Asserts that `PROGRAM ARGS` succeeded; else its output is the failure's message.
pub fn assert_succeeded(program: &str, args: &[&str], out: &Output) {
    assert!(
        out.status.success(),
        "{program} {} failed ({}):\n{}\n{}",
        args.join(" "),
        out.status,
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// `ksm-trace ARGS`, which must succeed.
pub fn ksm_trace_ok(args: &[&str]) -> Output {
    let out = ksm_trace(args);
    assert_succeeded("ksm-trace", args, &out);
    out
}

/// What `ksm-trace ARGS`, which must succeed, printed.
pub fn ksm_trace_stdout(args: &[&str]) -> String {
    String::from_utf8_lossy(&ksm_trace_ok(args).stdout).into_owned()
}

/// The JSON `ksm-trace ARGS`, which must succeed, printed.
pub fn ksm_trace_json(args: &[&str]) -> serde_json::Value {
    serde_json::from_slice(&ksm_trace_ok(args).stdout).unwrap()
}

/// `ksm-trace ARGS`, which must fail with one clear line on stderr (no panic) that says
/// `needle`; returns what it did, for the caller's own checks (its exit code...).
pub fn assert_clean_error(args: &[&str], needle: &str) -> Output {
    let out = ksm_trace(args);
    assert!(!out.status.success(), "{args:?} should fail");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "one line: {stderr}");
    assert!(stderr.contains(needle), "{args:?}: {stderr}");
    assert!(!stderr.contains("panicked"), "{stderr}");
    out
}

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// `ksm-trace report FILE --json`.
pub fn report(path: &Path) -> serde_json::Value {
    ksm_trace_json(&["report", path.to_str().unwrap(), "--json"])
}

/// `ksm-trace report FILE`: the text report.
pub fn report_text(path: &Path) -> String {
    ksm_trace_stdout(&["report", path.to_str().unwrap()])
}

/// Runs `ksm-trace record ARGS -q -o <session>/rec.json`, asserts it succeeded, and returns
/// the recording and its JSON report.
pub fn record(session: &KsmSession, args: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let (_, rec, rep) = record_printing(session, &[args, &["-q"]].concat());
    (rec, rep)
}

/// [`record`] without `-q`: also what it printed.
pub fn record_printing(
    session: &KsmSession,
    args: &[&str],
) -> (String, serde_json::Value, serde_json::Value) {
    let out = session.path("rec.json");
    let stdout = ksm_trace_stdout(&record_args(args, &out));
    (stdout, json(&out), report(&out))
}

/// `record ARGS -o OUT`.
fn record_args<'a>(args: &[&'a str], out: &'a Path) -> Vec<&'a str> {
    let mut all = vec!["record"];
    all.extend_from_slice(args);
    all.extend(["-o", out.to_str().unwrap()]);
    all
}

/// Starts `ksm-trace record ARGS -q -o <session>/rec.json` in the background: the child, and
/// where its recording goes.
pub fn spawn_record(session: &KsmSession, args: &[&str]) -> (Child, PathBuf) {
    let out = session.path("rec.json");
    let child = spawn_ksm_trace(&record_args(&[args, &["-q"]].concat(), &out));
    (child, out)
}

/// Whether `n` procs workers (`ksm-procs-N`) run within `timeout`.
pub fn procs_workers_within(n: usize, timeout: Duration) -> bool {
    wait_until(timeout, || pids_named("ksm-procs-").len() == n)
}

/// Whether ksmd runs (run=1) within `timeout`: a recording's window has opened.
pub fn ksmd_runs_within(timeout: Duration) -> bool {
    wait_until(timeout, || knob("run") == "1")
}

/// `--pid PID` for each of `pids`, as arguments of record or sharing.
pub fn pid_args(pids: impl IntoIterator<Item = u32>) -> Vec<String> {
    pids.into_iter()
        .flat_map(|pid| ["--pid".to_owned(), pid.to_string()])
        .collect()
}

/// Starts `ksm-trace ARGS` in the background (stdout discarded, stderr kept for assertions).
pub fn spawn_ksm_trace(args: &[&str]) -> Child {
    Command::new(bin())
        .args(args)
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("starting ksm-trace")
}

/// A child that gets SIGTERM (and is waited for) when the test ends, even by a failed assert:
/// a workload left running would change the knobs of the tests after it when it exits.
pub struct Background(pub Child);

impl Background {
    pub fn spawn(args: &[&str]) -> Self {
        Self(spawn_ksm_trace(args))
    }

    /// SIGTERM, then its exit status.
    pub fn stop(mut self) -> std::process::ExitStatus {
        terminate(&self.0);
        self.0.wait().unwrap()
    }
}

impl Drop for Background {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            terminate(&self.0);
            let _ = self.0.wait();
        }
    }
}

/// SIGTERM to a ksm-trace child, as a service manager would stop it.
pub fn terminate(child: &Child) {
    nix::sys::signal::kill(
        nix::unistd::Pid::from_raw(child.id() as i32),
        nix::sys::signal::Signal::SIGTERM,
    )
    .unwrap();
}

/// SIGTERM to a ksm-trace child started with [`spawn_ksm_trace`], then how it ended.
pub fn terminate_and_wait(child: Child) -> Output {
    terminate(&child);
    child.wait_with_output().unwrap()
}

/// Where a file system of type `fstype` (`cgroup2`, `tracefs`...) is mounted, if it is.
pub fn mount_point(fstype: &str) -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mounts")
        .unwrap()
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some(fstype))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
}

/// Pids of live processes whose comm starts with `prefix`.
pub fn pids_named(prefix: &str) -> Vec<u32> {
    let mut pids = Vec::new();
    for entry in fs::read_dir("/proc").unwrap().flatten() {
        let Ok(pid) = entry.file_name().to_string_lossy().parse::<u32>() else {
            continue;
        };
        if let Ok(comm) = fs::read_to_string(format!("/proc/{pid}/comm")) {
            // Zombies are gone for our purposes only once reaped; count them as alive.
            if comm.trim().starts_with(prefix) {
                pids.push(pid);
            }
        }
    }
    pids
}

pub fn alive(pid: u32) -> bool {
    Path::new(&format!("/proc/{pid}")).exists()
}

/// `ksm_merging_pages` from /proc/<pid>/ksm_stat, read by the test itself.
pub fn ksm_merging_pages(pid: u32) -> u64 {
    try_ksm_merging_pages(pid)
        .unwrap_or_else(|| panic!("no ksm_merging_pages in /proc/{pid}/ksm_stat"))
}

/// [`ksm_merging_pages`] of a process that may have exited meanwhile.
pub fn try_ksm_merging_pages(pid: u32) -> Option<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/ksm_stat")).ok()?;
    text.lines()
        .find_map(|l| l.strip_prefix("ksm_merging_pages "))?
        .trim()
        .parse()
        .ok()
}

/// A counter of /proc/vmstat (`cow_ksm`...).
pub fn vmstat(name: &str) -> u64 {
    fs::read_to_string("/proc/vmstat")
        .unwrap()
        .lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .and_then(|v| v.trim().parse().ok())
        .unwrap_or_else(|| panic!("{name} missing from /proc/vmstat"))
}

/// A mergeable process the test owns (ksm-trace's own worker body, started directly).
pub struct TestProcess {
    pub child: Child,
}

impl TestProcess {
    pub fn start(index: u32, pages: u64, dup: f64, nonce: u64) -> Self {
        Self::start_for(index, pages, dup, nonce, 10.0)
    }

    /// A worker that exits `wait_s` seconds after filling its memory.
    pub fn start_for(index: u32, pages: u64, dup: f64, nonce: u64, wait_s: f64) -> Self {
        Self::start_spec(
            index,
            nonce,
            serde_json::json!({
                "count": 1, "pages": pages, "dup": dup, "zero": 0.0, "rounds": 1, "wait": wait_s,
                "write": 0.0, "mode": "madvise", "thp": null,
            }),
        )
    }

    /// A worker with this procs spec (JSON, as the workload hands it over).
    pub fn start_spec(index: u32, nonce: u64, spec: serde_json::Value) -> Self {
        // The worker's protocol: index, nonce, the procs spec as JSON.
        let mut child = Command::new(bin())
            .args([
                "__procs-worker",
                &index.to_string(),
                &nonce.to_string(),
                &spec.to_string(),
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .process_group(0)
            .spawn()
            .unwrap();
        let mut line = String::new();
        use std::io::BufRead as _;
        std::io::BufReader::new(child.stdout.take().unwrap())
            .read_line(&mut line)
            .unwrap();
        assert!(line.starts_with("ready"), "worker not ready: {line:?}");
        Self { child }
    }

    pub fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for TestProcess {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn wait_until(timeout: Duration, mut f: impl FnMut() -> bool) -> bool {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return true;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    f()
}

/// The row of process `pid` in the `processes` of a report or a recording; panics naming the
/// pid (and the pids that are there) when it is absent.
pub fn entry_for_pid(doc: &serde_json::Value, pid: impl Into<u64>) -> &serde_json::Value {
    let pid = pid.into();
    let processes = doc["processes"]
        .as_array()
        .unwrap_or_else(|| panic!("no processes array to look for pid {pid} in"));
    processes
        .iter()
        .find(|p| p["pid"].as_u64() == Some(pid))
        .unwrap_or_else(|| {
            let there: Vec<String> = processes.iter().map(|p| p["pid"].to_string()).collect();
            panic!(
                "pid {pid} is not among the processes (pids {})",
                there.join(", ")
            )
        })
}

/// The rows of a report's `processes` that are the procs workload's workers (`ksm-procs-N`).
pub fn procs_workers(rep: &serde_json::Value) -> Vec<&serde_json::Value> {
    rep["processes"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|p| p["comm"].as_str().unwrap().starts_with("ksm-procs-"))
        .collect()
}

/// `FIELD_end − FIELD_start` of a process row (`ksm_merging_pages`, `ksm_zero_pages`...).
pub fn delta(p: &serde_json::Value, field: &str) -> i64 {
    let end = p[format!("{field}_end")].as_i64();
    let start = p[format!("{field}_start")].as_i64();
    end.unwrap_or_else(|| panic!("no {field}_end: {p}"))
        - start.unwrap_or_else(|| panic!("no {field}_start: {p}"))
}

/// Whether every process in `pids` has `pages` KSM merging pages now (its ksm_stat).
pub fn all_merging(pids: &[u32], pages: u64) -> bool {
    pids.iter().all(|&pid| ksm_merging_pages(pid) == pages)
}

/// Starts ksmd at `pages_to_scan` pages every `sleep_ms` ms, waits until `done` (at most
/// `timeout`), and stops it again; whether `done` came.
pub fn run_ksmd_until(
    pages_to_scan: &str,
    sleep_ms: &str,
    timeout: Duration,
    done: impl FnMut() -> bool,
) -> bool {
    set_knob("pages_to_scan", pages_to_scan);
    set_knob("sleep_millisecs", sleep_ms);
    set_knob("run", "1");
    let came = wait_until(timeout, done);
    set_knob("run", "0");
    came
}

/// ksm-trace's guests (`ksm-vm*`) are gone within 5 s.
pub fn assert_guests_gone() {
    assert!(
        wait_until(Duration::from_secs(5), || pids_named("ksm-vm").is_empty()),
        "a guest survived: {:?}",
        pids_named("ksm-vm")
    );
}

/// Per-run directories of guest consoles, QMP sockets and overlays (/tmp/ksm-trace-vms-*).
pub fn vms_run_dirs() -> Vec<PathBuf> {
    tmp_entries("ksm-trace-vms-")
}

/// Everything in /tmp whose name starts with `prefix`.
pub fn tmp_entries(prefix: &str) -> Vec<PathBuf> {
    fs::read_dir("/tmp")
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().starts_with(prefix))
        .map(|e| e.path())
        .collect()
}

/// No guest and no guests' run directory outlives a run.
pub fn assert_no_guests_left() {
    assert_guests_gone();
    assert!(
        vms_run_dirs().is_empty(),
        "left behind: {:?}",
        vms_run_dirs()
    );
}

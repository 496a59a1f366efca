//! Shared by the root integration tests: they drive the one global ksmd, so each test takes a
//! machine-wide lock, starts from known knobs, and puts the knobs back afterwards.
#![allow(dead_code)]

use std::{
    fs,
    io::Write as _,
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

/// Whether this test may run: root tests drive the one global ksmd and load eBPF programs. As
/// another user (a contributor's `cargo test`) it says "skipped: needs root" and the test
/// returns, so unit and rendering tests still run. CI runs as root (`cargo xtask test` refuses
/// anything else), so there every test runs.
pub fn running_as_root() -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    // Written to stderr directly (libtest swallows `eprintln!` from tests that pass), in one
    // write so that it is not split by libtest's own lines.
    let thread = std::thread::current();
    let test = thread.name().unwrap_or("a root test");
    let line = format!("{test}: skipped: needs root\n");
    let _ = std::io::stderr().write_all(line.as_bytes());
    false
}

/// [`test_lock`] for a root test, or None after [`running_as_root`] said it is skipped:
/// `let Some(_lock) = root_test_lock() else { return };`.
pub fn root_test_lock() -> Option<Flock<fs::File>> {
    running_as_root().then(test_lock)
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
    /// [`KsmSession::start`] for a root test, or None after [`running_as_root`] said it is
    /// skipped: `let Some(session) = KsmSession::try_start("name") else { return };`.
    pub fn try_start(name: &str) -> Option<Self> {
        running_as_root().then(|| Self::start(name))
    }

    /// Waits for the lock, saves the knobs, and sets ksmd off with odd values, so a test can
    /// tell whether ksm-trace restored them.
    pub fn start(name: &str) -> Self {
        assert!(
            nix::unistd::geteuid().is_root(),
            "integration tests run as root: cargo xtask test"
        );
        let lock = test_lock();
        let saved = KNOBS.iter().map(|k| (*k, knob(k))).collect();
        set_knob("run", "0");
        set_knob("pages_to_scan", "123");
        set_knob("sleep_millisecs", "45");
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

pub fn json(path: &Path) -> serde_json::Value {
    serde_json::from_str(&fs::read_to_string(path).unwrap()).unwrap()
}

/// `ksm-trace report FILE --json`.
pub fn report(path: &Path) -> serde_json::Value {
    let out = ksm_trace(&["report", path.to_str().unwrap(), "--json"]);
    assert!(
        out.status.success(),
        "report failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

/// Runs `ksm-trace record ARGS -q -o <session>/rec.json`, asserts it succeeded, and returns
/// the recording and its JSON report.
pub fn record(session: &KsmSession, args: &[&str]) -> (serde_json::Value, serde_json::Value) {
    let out = session.path("rec.json");
    let mut all = vec!["record"];
    all.extend_from_slice(args);
    all.extend(["-q", "-o", out.to_str().unwrap()]);
    let result = ksm_trace(&all);
    assert!(
        result.status.success(),
        "record failed: {}",
        String::from_utf8_lossy(&result.stderr)
    );
    (json(&out), report(&out))
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
    let text = fs::read_to_string(format!("/proc/{pid}/ksm_stat")).unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix("ksm_merging_pages "))
        .unwrap()
        .trim()
        .parse()
        .unwrap()
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
        // The worker's protocol: index, nonce, the procs spec as JSON.
        let spec = serde_json::json!({
            "count": 1, "pages": pages, "dup": dup, "zero": 0.0, "rounds": 1, "wait": wait_s,
            "write": 0.0, "mode": "madvise", "thp": null,
        });
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

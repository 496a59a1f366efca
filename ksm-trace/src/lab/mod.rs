//! `ksm-trace lab`: boots another kernel (e.g. Debian's 6.12, where fentry/fexit is allowed) in
//! a QEMU (TCG) guest with this ksm-trace inside, or takes the running one (`--kernel host`),
//! runs a fixed scenario there (doctor, record, report) and prints what came back: a summary of
//! the figures, or the whole transcript as JSON. What must hold on which kernel is decided by
//! the root tests (`tests/lab.rs`), not here.
pub mod guest;
pub mod host;
pub mod image;
pub mod kernels;
pub mod scenario;
pub mod summary;

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};

use crate::run::dir::RunDir;
use guest::Outcome;
use scenario::Transcript;

/// What `ksm-trace lab` was asked for (the command line is in `cli`).
#[derive(Debug, Clone)]
pub struct LabOptions {
    /// debian-6.12, debian-6.1 (booted under QEMU), or [`HOST`].
    pub kernel: String,
    /// Re-download the kernel and rebuild the guest image.
    pub refresh: bool,
    /// Give up on the guest after this long.
    pub timeout: Duration,
    /// Also save the guest's whole console output here.
    pub console: Option<PathBuf>,
    /// Print the whole transcript as JSON instead of the summary.
    pub json: bool,
}

/// `--kernel` naming the running kernel.
pub const HOST: &str = "host";

/// Console lines shown when the guest fails.
const TAIL_LINES: usize = 40;

/// Runs the scenario on `args.kernel` and prints its summary, or with `json` its whole
/// transcript. Fails only when the scenario could not run to its end (no guest, a guest that
/// died or timed out, a stop request); what the steps did is for the reader to judge.
pub fn run(args: &LabOptions) -> Result<()> {
    // Ctrl-C/SIGTERM end the guest or the host run in order, and the run directory goes too.
    crate::run::interrupts::install_stop_flag()?;
    let started = Instant::now();
    let progress = |line: &str| {
        eprintln!(
            "ksm-trace lab: [{:>5.0} s] {line}",
            started.elapsed().as_secs_f64()
        )
    };
    let transcript = if args.kernel == HOST {
        if args.refresh || args.console.is_some() {
            bail!("--refresh and --console apply to guests only: drop them with --kernel host");
        }
        let run_dir = RunDir::create("lab")?;
        eprintln!("ksm-trace lab: running the scenario on this kernel (about 10 s)");
        host::run(run_dir.path(), progress)?
    } else {
        in_guest(&kernels::find(&args.kernel)?, args, progress)?
    };
    if !transcript.problems.is_empty() {
        eprintln!("{}", transcript.diagnostics);
    }
    if args.json {
        println!("{}", serde_json::to_string(&transcript)?);
        return Ok(());
    }
    println!(
        "ksm-trace lab: {} — kernel {}",
        transcript.kernel, transcript.release
    );
    println!(
        "  time: {}record {}, whole run {:.0} s",
        transcript
            .boot_s
            .map_or(String::new(), |s| format!("boot to /init {s:.1} s, ")),
        transcript
            .record_s
            .map_or("?".into(), |s| format!("{s:.1} s")),
        started.elapsed().as_secs_f64()
    );
    print!("{}", summary::text(&transcript));
    Ok(())
}

/// Boots `kernel` with this ksm-trace inside and returns what its scenario printed.
fn in_guest(
    kernel: &kernels::LabKernel,
    args: &LabOptions,
    progress: impl FnMut(&str),
) -> Result<Transcript> {
    crate::guest::check_prerequisites()?;
    let image = kernel.image(args.refresh)?;
    let run_dir = RunDir::create("lab")?;

    let exe = std::env::current_exe().context("finding ksm-trace's own executable")?;
    let initramfs = run_dir.join("initramfs.cpio.gz");
    image::write(&exe, &initramfs).context("building the lab guest's initramfs")?;

    eprintln!(
        "ksm-trace lab: booting {} ({}) under TCG (about 20 s here, longer on a slower host)",
        kernel.name,
        image.vmlinuz.display()
    );
    let mut guest = guest::spawn(&image.vmlinuz, &initramfs, run_dir.path())?;
    let outcome = guest::wait_done(&mut guest, args.timeout, progress);
    let console = guest.console();
    guest.stop();
    if let Some(path) = &args.console {
        fs::write(path, &console).with_context(|| format!("writing {}", path.display()))?;
    }
    let tail = format!(
        "--- guest console (last {TAIL_LINES} lines) ---\n{}\n---",
        guest.console_tail(TAIL_LINES)
    );
    match outcome {
        Outcome::Done => Ok(Transcript::from_console(kernel.name, &console, tail)),
        Outcome::Exited(status) => {
            eprintln!("{tail}");
            bail!(
                "the {} guest stopped before the scenario finished ({status})",
                kernel.name
            )
        }
        Outcome::Stopped(why) => bail!("the lab was stopped ({why}); the guest is ended"),
        Outcome::TimedOut => {
            eprintln!("{tail}");
            bail!(
                "the {} guest did not finish the scenario within {} (raise --timeout)",
                kernel.name,
                humantime::format_duration(args.timeout)
            )
        }
    }
}

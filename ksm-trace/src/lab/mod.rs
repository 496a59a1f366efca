//! `ksm-trace lab`: boots another kernel (e.g. Debian's 6.12, where fentry/fexit is allowed) in
//! a QEMU (TCG) guest with this ksm-trace inside, or takes the running one (`--kernel host`),
//! runs a fixed scenario there (doctor, record, report), and checks and summarizes what came
//! back against what that kernel should allow.
pub mod checks;
pub mod guest;
pub mod host;
pub mod image;
pub mod kernels;
pub mod scenario;

use std::{
    fs,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow, bail};

use crate::{report::model::Report, run_dir::RunDir};
use checks::Expect;
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
}

/// `--kernel` naming the running kernel.
pub const HOST: &str = "host";

/// Console lines shown when the guest fails.
const TAIL_LINES: usize = 40;

pub fn run(args: &LabOptions) -> Result<()> {
    // Ctrl-C/SIGTERM end the guest or the host run in order, and the run directory goes too.
    crate::interrupts::install_stop_flag()?;
    let started = Instant::now();
    let progress = |line: &str| {
        eprintln!(
            "ksm-trace lab: [{:>5.0} s] {line}",
            started.elapsed().as_secs_f64()
        )
    };
    let (name, expect, transcript) = if args.kernel == HOST {
        if args.refresh || args.console.is_some() {
            bail!("--refresh and --console apply to guests only: drop them with --kernel host");
        }
        let run_dir = RunDir::create("lab")?;
        eprintln!("ksm-trace lab: running the scenario on this kernel (about 10 s)");
        let transcript = host::run(run_dir.path(), progress)?;
        let expect = transcript
            .doctor
            .as_ref()
            .map(Expect::from_doctor)
            .unwrap_or(Expect::Tracepoints);
        (HOST.to_owned(), expect, transcript)
    } else {
        let kernel = kernels::find(&args.kernel)?;
        let expect = if kernel.has_ksm_tracepoints {
            Expect::Fexit
        } else {
            Expect::Refusal
        };
        (
            kernel.name.to_owned(),
            expect,
            in_guest(&kernel, args, progress)?,
        )
    };
    println!("ksm-trace lab: {name} — kernel {}", transcript.release);
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
    conclude(&name, expect, &transcript).inspect_err(|_| eprintln!("{}", transcript.diagnostics))
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
        Outcome::Done => Ok(Transcript::from_console(&console, tail)),
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

/// Checks a transcript against what `expect`s of kernel `name` and prints the results.
fn conclude(name: &str, expect: Expect, t: &Transcript) -> Result<()> {
    let doctor = match &t.doctor {
        Ok(d) if t.doctor_rc == Some(0) => d,
        Ok(_) => bail!(
            "ksm-trace doctor failed on {name} (exit {:?}): {}",
            t.doctor_rc,
            one_line(&t.doctor_stderr)
        ),
        Err(e) => bail!("{e}"),
    };
    let doctor_latency = doctor
        .pointer("/mechanisms/merge_latency")
        .and_then(|m| serde_json::from_value(m.clone()).ok())
        .map_or("not probed", crate::report::mechanisms::merge_latency);
    println!("  doctor: merge latency would come from: {doctor_latency}");

    if expect == Expect::Refusal {
        let missing = checks::missing_tracepoints(doctor);
        println!(
            "  doctor: ksm:* tracepoints missing: {}",
            if missing.is_empty() {
                "none".to_owned()
            } else {
                missing.join(", ")
            }
        );
        let line = checks::check_refusal(t.record_rc, &t.record_stderr)
            .map_err(|e| anyhow!("degradation check on {name}: {e:#}"))?;
        println!(
            "  record refused (exit {}), as it must without ksm tracepoints:\n    {line}",
            t.record_rc.unwrap_or(-1)
        );
        println!("degradation check on {name}: ok");
        return Ok(());
    }

    if t.record_rc != Some(0) {
        bail!(
            "ksm-trace record failed on {name} (exit {:?}): {}",
            t.record_rc,
            one_line(&t.record_stderr)
        );
    }
    let report = t.report.as_ref().map_err(|e| anyhow!("{e}"))?;
    let report: Report = serde_json::from_value(report.clone())
        .map_err(|e| anyhow!("the report JSON from {name} is not a ksm-trace report: {e}"))?;
    let recording = t.recording.as_ref().map_err(|e| anyhow!("{e}"))?;
    let results =
        checks::check_record(&report, recording, expect).map_err(|e| anyhow!("{name}: {e:#}"))?;

    println!(
        "  mechanisms: merge latency: {}",
        results.merge_latency_mechanism
    );
    println!(
        "              COW breaks: {}",
        crate::report::mechanisms::cow(report.mechanisms.cow)
    );
    println!(
        "              batches: {}",
        crate::report::mechanisms::batches(report.mechanisms.batches)
    );
    for f in &results.fallbacks {
        println!("  fallback: {f}");
    }
    if expect == Expect::Fexit {
        println!("merge latency, all processes, the same merges timed by both:");
    } else {
        println!("merge latency, all processes:");
    }
    print!("{}", results.latency_table());
    println!("exactness:");
    print!("{}", results.exactness_lines());
    println!("lab on {name}: ok");
    Ok(())
}

/// The first non-empty line of `text`, or a placeholder.
fn one_line(text: &str) -> String {
    text.lines()
        .map(str::trim)
        .find(|l| !l.is_empty())
        .unwrap_or("(no error output)")
        .to_owned()
}

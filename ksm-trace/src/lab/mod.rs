//! `ksm-trace lab`: boots another kernel (e.g. Debian's 6.12, where fentry/fexit is allowed) in
//! a QEMU (TCG) guest with this ksm-trace inside, runs a fixed scenario there (doctor, record,
//! report), and checks and summarizes what came back on the guest's serial console.
pub mod checks;
pub mod guest;
pub mod image;
pub mod kernels;

use std::{
    fs,
    os::unix::fs::DirBuilderExt as _,
    path::PathBuf,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, anyhow};

use crate::report::model::Report;
use guest::{LabGuest, Outcome};

#[derive(Debug, Clone, clap::Args)]
pub struct LabArgs {
    /// Kernel to boot: debian-6.12, debian-6.1.
    #[arg(long, default_value = "debian-6.12")]
    pub kernel: String,
    /// Re-download the kernel and rebuild the guest image.
    #[arg(long)]
    pub refresh: bool,
    /// Give up on the guest after this long (the scenario runs under emulation).
    #[arg(long, default_value = "10m", value_parser = humantime::parse_duration)]
    pub timeout: Duration,
    /// Also save the guest's whole console output here.
    #[arg(long)]
    pub console: Option<PathBuf>,
}

/// Console lines shown when the guest fails.
const TAIL_LINES: usize = 40;

pub fn run(args: &LabArgs) -> Result<()> {
    let kernel = kernels::find(&args.kernel)?;
    crate::workload::vms::check_prerequisites()?;
    let image = kernel.image(args.refresh)?;
    let run_dir = RunDir::create()?;

    let exe = std::env::current_exe().context("finding ksm-trace's own executable")?;
    let initramfs = run_dir.0.join("initramfs.cpio.gz");
    image::write(&exe, &initramfs).context("building the lab guest's initramfs")?;

    eprintln!(
        "ksm-trace lab: booting {} ({}) under TCG (about 20 s here, longer on a slower host)",
        kernel.name,
        image.vmlinuz.display()
    );
    let started = Instant::now();
    let mut guest = LabGuest::spawn(&image.vmlinuz, &initramfs, &run_dir.0)?;
    let outcome = guest.wait_done(args.timeout, |line| {
        eprintln!(
            "ksm-trace lab: [{:>5.0} s] {line}",
            started.elapsed().as_secs_f64()
        )
    });
    let wall = started.elapsed();
    let console = guest.console();
    guest.stop();
    if let Some(path) = &args.console {
        fs::write(path, &console).with_context(|| format!("writing {}", path.display()))?;
    }
    let fail = |what: String| -> anyhow::Error {
        eprintln!(
            "--- guest console (last {TAIL_LINES} lines) ---\n{}\n---",
            guest.console_tail(TAIL_LINES)
        );
        anyhow!("{what}")
    };
    match outcome {
        Outcome::Done => {}
        Outcome::Exited(status) => {
            return Err(fail(format!(
                "the {} guest stopped before the scenario finished ({status})",
                kernel.name
            )));
        }
        Outcome::TimedOut => {
            return Err(fail(format!(
                "the {} guest did not finish the scenario within {} (raise --timeout)",
                kernel.name,
                humantime::format_duration(args.timeout)
            )));
        }
    }

    let booted = console
        .lines()
        .find(|l| l.starts_with(image::BOOTED))
        .map(|l| l.split_whitespace().skip(1).collect::<Vec<_>>())
        .unwrap_or_default();
    let boot_s: Option<f64> = booted.first().and_then(|s| s.parse().ok());
    let release = booted.get(1).copied().unwrap_or("?").to_owned();
    let status = |key: &str| checks::field(&console, image::STATUS, key);
    let num = |key: &str| status(key).and_then(|v| v.parse::<f64>().ok());
    let record_s = num("record_end")
        .zip(num("record_start"))
        .map(|(b, a)| b - a);
    let doctor_rc = status("doctor").and_then(|v| v.parse::<i32>().ok());
    let record_rc = status("record").and_then(|v| v.parse::<i32>().ok());

    let doctor = match checks::json_block(&console, image::DOCTOR) {
        Ok(d) if doctor_rc == Some(0) => d,
        Ok(_) => {
            return Err(fail(format!(
                "ksm-trace doctor failed in the guest (exit {doctor_rc:?}): {}",
                one_line(&checks::block(&console, image::DOCTOR_STDERR).unwrap_or_default())
            )));
        }
        Err(e) => return Err(fail(format!("{e:#}"))),
    };
    let doctor_latency = doctor
        .pointer("/mechanisms/merge_latency")
        .and_then(|v| v.as_str())
        .unwrap_or("not probed")
        .to_owned();

    println!("ksm-trace lab: {} — guest kernel {release}", kernel.name);
    println!(
        "  time: boot to /init {}, record {}, whole run (boot + scenario) {:.0} s",
        boot_s.map_or("?".into(), |s| format!("{s:.1} s")),
        record_s.map_or("?".into(), |s| format!("{s:.1} s")),
        wall.as_secs_f64()
    );
    println!("  doctor: merge latency would come from: {doctor_latency}");

    let record_stderr = checks::block(&console, image::RECORD_STDERR).unwrap_or_default();
    if !kernel.has_ksm_tracepoints {
        let missing = checks::missing_tracepoints(&doctor);
        println!(
            "  doctor: ksm:* tracepoints missing: {}",
            if missing.is_empty() {
                "none".to_owned()
            } else {
                missing.join(", ")
            }
        );
        let line = checks::check_refusal(record_rc, &record_stderr)
            .map_err(|e| fail(format!("degradation check on {}: {e:#}", kernel.name)))?;
        println!(
            "  record refused (exit {}), as it must without ksm tracepoints:\n    {line}",
            record_rc.unwrap_or(-1)
        );
        println!("degradation check on {}: ok", kernel.name);
        return Ok(());
    }

    if record_rc != Some(0) {
        return Err(fail(format!(
            "ksm-trace record failed in the {} guest (exit {record_rc:?}): {}",
            kernel.name,
            one_line(&record_stderr)
        )));
    }
    let report: Report = serde_json::from_value(
        checks::json_block(&console, image::REPORT).map_err(|e| fail(format!("{e:#}")))?,
    )
    .map_err(|e| {
        fail(format!(
            "the guest's report JSON is not a ksm-trace report: {e}"
        ))
    })?;
    let recording =
        checks::json_block(&console, image::RECORDING).map_err(|e| fail(format!("{e:#}")))?;
    let results = checks::check_record(&report, &recording)
        .map_err(|e| anyhow!("{} guest: {e:#}", kernel.name))?;

    println!(
        "  mechanisms: merge latency: {}",
        results.merge_latency_mechanism
    );
    println!("              COW breaks: {}", report.mechanisms.cow);
    println!("              batches: {}", report.mechanisms.batches);
    for f in &results.fallbacks {
        println!("  fallback: {f}");
    }
    println!("merge latency, all processes, the same merges timed by both:");
    print!("{}", results.latency_table());
    println!("exactness:");
    print!("{}", results.exactness_lines());
    println!("lab on {}: ok", kernel.name);
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

/// `/tmp/ksm-trace-lab-<pid>/`, removed with everything in it when dropped.
struct RunDir(PathBuf);

impl RunDir {
    fn create() -> Result<Self> {
        let path = std::env::temp_dir().join(format!("ksm-trace-lab-{}", std::process::id()));
        if path.exists() {
            fs::remove_dir_all(&path).with_context(|| format!("removing {}", path.display()))?;
        }
        fs::DirBuilder::new()
            .mode(0o700)
            .create(&path)
            .with_context(|| format!("creating {}", path.display()))?;
        Ok(Self(path))
    }
}

impl Drop for RunDir {
    fn drop(&mut self) {
        if let Err(e) = fs::remove_dir_all(&self.0) {
            log::warn!("removing {}: {e}", self.0.display());
        }
    }
}

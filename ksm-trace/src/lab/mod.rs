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
    /// Run the scenario on these two kernels instead, alternating, `runs` times each, and
    /// print `compare`'s table of the two.
    pub compare: Option<(String, String)>,
    pub runs: u32,
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
    if let Some((a, b)) = &args.compare {
        return compare(args, a, b);
    }
    let transcript = scenario_on(&args.kernel, args, progress)?;
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
    if args.kernel != HOST {
        println!("  {TCG_NOTE}");
    }
    print!("{}", summary::text(&transcript));
    Ok(())
}

/// The scenario's transcript on `kernel`: [`HOST`], a Debian kernel by name, or a built image.
fn scenario_on(kernel: &str, args: &LabOptions, progress: impl FnMut(&str)) -> Result<Transcript> {
    if kernel == HOST {
        if args.refresh || args.console.is_some() {
            bail!("--refresh and --console apply to guests only: drop them with --kernel host");
        }
        let run_dir = RunDir::create("lab")?;
        eprintln!("ksm-trace lab: running the scenario on this kernel (about 10 s)");
        return host::run(run_dir.path(), progress);
    }
    let kernel = kernels::find(kernel)?;
    let transcript = in_guest(&kernel, args, progress)?;
    if let kernels::Kernel::Built(path) = &kernel {
        refuse_what_the_guest_lacks(path, &transcript)?;
    }
    Ok(transcript)
}

/// A built kernel without BTF or KSM boots, but ksm-trace cannot run on it: say which, in one
/// line, from what `doctor` found in the guest.
fn refuse_what_the_guest_lacks(path: &std::path::Path, t: &Transcript) -> Result<()> {
    let caps = t.doctor.json.as_ref().map(|d| &d["capabilities"]);
    let has = |what: &str| caps.is_none_or(|c| c[what].as_bool() != Some(false));
    if !has("btf") {
        bail!(
            "the kernel at {} has no BTF (/sys/kernel/btf/vmlinux is missing in the guest): build it with CONFIG_DEBUG_INFO_BTF=y",
            path.display()
        );
    }
    if !has("ksm") {
        bail!(
            "the kernel at {} has no KSM (/sys/kernel/mm/ksm is missing in the guest): build it with CONFIG_KSM=y",
            path.display()
        );
    }
    Ok(())
}

/// `lab --compare A B --runs N`: the scenario on A and B in turn, N times each, then
/// `compare`'s table of their recordings.
fn compare(args: &LabOptions, a: &str, b: &str) -> Result<()> {
    let dir = RunDir::create("lab-compare")?;
    let mut sides: [Vec<PathBuf>; 2] = Default::default();
    for run in 0..args.runs.max(1) {
        for (side, kernel) in [a, b].into_iter().enumerate() {
            eprintln!(
                "ksm-trace lab: run {} of {} on {kernel}",
                run + 1,
                args.runs.max(1)
            );
            let t = scenario_on(kernel, args, |line| eprintln!("ksm-trace lab: {line}"))?;
            let recording = t.recording.ok_or_else(|| {
                anyhow::anyhow!(
                    "{kernel}: record did not finish in the scenario ({})",
                    t.record.stderr.lines().next().unwrap_or("no output")
                )
            })?;
            let path = dir.join(&format!("{side}-{run}.json"));
            fs::write(&path, recording.to_string())?;
            sides[side].push(path);
        }
    }
    let comparison = crate::compare::compare(&sides[0], &sides[1], false)?;
    if args.json {
        println!("{}", serde_json::to_string_pretty(&comparison)?);
        return Ok(());
    }
    print!("{}", crate::compare::text::render(&comparison));
    println!("{TCG_NOTE}");
    Ok(())
}

/// Said wherever guest timings are shown.
pub const TCG_NOTE: &str = "timings in the guests are emulated (QEMU TCG: no usable KVM here): compare them between kernels booted the same way, not with the host's";

/// Boots `kernel` with this ksm-trace inside and returns what its scenario printed.
fn in_guest(
    kernel: &kernels::Kernel,
    args: &LabOptions,
    progress: impl FnMut(&str),
) -> Result<Transcript> {
    crate::guest::check_prerequisites()?;
    let image = kernel.image(args.refresh)?;
    let name = kernel.name();
    let run_dir = RunDir::create("lab")?;

    let exe = std::env::current_exe().context("finding ksm-trace's own executable")?;
    let initramfs = run_dir.join("initramfs.cpio.gz");
    image::write(&exe, &initramfs).context("building the lab guest's initramfs")?;

    // A guest whose kernel panics is booted again, once, saying so and showing the panic: under
    // multi-threaded TCG guests panicked on an int3 the kernel had just patched out (text_poke_bp)
    // — the emulation's doing, not the kernel's or ksm-trace's (see guest.rs, which now runs the
    // vCPUs on one thread). A second panic fails the run.
    let mut panics = 0;
    let mut progress = progress;
    loop {
        eprintln!(
            "ksm-trace lab: booting {name} ({}) under TCG (about 20 s here, longer on a slower host)",
            image.vmlinuz.display()
        );
        let mut guest = guest::spawn(&image.vmlinuz, &initramfs, run_dir.path())?;
        let outcome = guest::wait_done(&mut guest, args.timeout, &mut progress);
        let console = guest.console();
        guest.stop();
        if let Some(path) = &args.console {
            fs::write(path, &console).with_context(|| format!("writing {}", path.display()))?;
        }
        let tail = format!(
            "--- guest console (last {TAIL_LINES} lines) ---\n{}\n---",
            guest.console_tail(TAIL_LINES)
        );
        return match outcome {
            Outcome::Done => Ok(Transcript::from_console(&name, &console, tail)),
            Outcome::Panicked(report) if panics == 0 => {
                eprintln!("{tail}");
                eprintln!(
                    "ksm-trace lab: the {name} guest's kernel panicked under TCG ({report}); booting it again, once"
                );
                panics += 1;
                continue;
            }
            Outcome::Panicked(report) => {
                eprintln!("{tail}");
                bail!("the {name} guest's kernel panicked twice, the second time: {report}")
            }
            Outcome::Exited(status) => {
                eprintln!("{tail}");
                bail!("the {name} guest stopped before the scenario finished ({status})")
            }
            Outcome::Stopped(why) => bail!("the lab was stopped ({why}); the guest is ended"),
            Outcome::TimedOut => {
                eprintln!("{tail}");
                bail!(
                    "the {name} guest did not finish the scenario within {} (raise --timeout)",
                    humantime::format_duration(args.timeout)
                )
            }
        };
    }
}

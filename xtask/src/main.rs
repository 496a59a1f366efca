//! `cargo xtask`: everything a fresh machine needs, from toolchain set-up to tests.
//!
//! - `setup`: installs what the eBPF build needs, only what is missing;
//! - `build`, `run -- ARGS`: builds ksm-trace (eBPF included) and runs it as root;
//! - `test`: unit tests and the root integration tests against the real kernel;
//! - `bench`: what tracing costs ksmd, and the selftest's merge and unmerge times;
//! - `soak --duration 1h`: a long record over a merging workload (tests/soak.rs);
//! - `selftests`: builds the kernel's KSM selftests (tests/selftests.rs runs them under record);
//! - `scale`: 1000 small processes and about 10 M events, each attributed exactly (tests/scale.rs);
//! - `lab --kernel K`: runs ksm-trace's scenario in a QEMU guest booting kernel K (e.g.
//!   debian-6.12), or on the running kernel (`host`);
//! - `fixture`: re-records the small recording the rendering tests read, and their golden files;
//! - `pictures`: README's flame graph and chart, from a real `record --workload vms:4`;
//! - `kernel [--patch FILE]`: a kernel the lab can boot, built from Debian's source, cached;
//! - `dist`, `install [--uninstall]`: the Debian package, or the same files under /usr/local.
mod dist;
mod fixture;
mod kernel;
mod pictures;
mod selftests;
mod setup;

use std::process::Command;

use anyhow::{Context as _, Result, bail};
use clap::{Parser, Subcommand};

#[derive(Parser)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Subcommand)]
enum Cmd {
    /// Install the eBPF toolchain pieces that are missing, and what packaging needs (idempotent).
    Setup,
    /// Build ksm-trace with its eBPF programs.
    Build {
        #[arg(long)]
        release: bool,
    },
    /// Build (release) and run ksm-trace as root with ARGS.
    Run {
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
    /// Benchmarks, each printing ratios measured in one run: ksmd traced vs untraced, and the
    /// kernel selftest's merge time beside `bench merge` in its conditions.
    Bench,
    /// Boot another kernel in a QEMU (TCG) guest (or take this one: `host`), run ksm-trace's
    /// scenario there and print its figures (`ksm-trace lab`; tests/lab.rs judges them).
    Lab {
        /// debian-6.12 (fentry/fexit allowed), debian-6.1 (no ksm tracepoints), or host (the
        /// running kernel, no guest).
        #[arg(long, default_value = "debian-6.12")]
        kernel: String,
    },
    /// Regenerate the committed rendering fixture (a small real recording) and its golden outputs.
    Fixture,
    /// Build a kernel the lab can boot (`ksm-trace lab --kernel PATH`) from Debian's
    /// linux-source-6.12, with a patch applied or without; cached by the patch's hash (a cold
    /// build takes about 20 min on two cores). Prints the image's path.
    Kernel {
        /// A patch to apply first (-p1, against linux-source-6.12).
        #[arg(long)]
        patch: Option<std::path::PathBuf>,
    },
    /// Regenerate README's pictures (docs/images/): record the card's command, `record
    /// --workload vms:4`, then draw its flame graph of ksmd's cost and its memory-saved chart.
    Pictures,
    /// Build the Debian package (static binary, man pages, completions) into target/dist/.
    Dist,
    /// Install ksm-trace, its man pages and completions under /usr/local (as root; again
    /// replaces them), or remove exactly what was installed.
    Install {
        #[arg(long)]
        uninstall: bool,
    },
    /// The soak: `record` for a long time over a workload that keeps merging (tests/soak.rs,
    /// which CI runs for 20 s), printing ksm-trace's memory, the recording's size and the
    /// exactness checks.
    Soak {
        /// How long to record (e.g. 1h).
        #[arg(long, default_value = "1h")]
        duration: humantime::Duration,
    },
    /// The scale runs: 1000 small processes and about 10 M events, each attributed exactly
    /// (tests/scale.rs, which CI runs small), printing the recordings' sizes and report times.
    Scale,
    /// Build the kernel's KSM selftests (ksm_tests, ksm_functional_tests) from Debian's
    /// linux-source-6.12, cached; print where (`cargo xtask test` does this itself).
    Selftests,
    /// Run all tests: unit tests and the root integration tests on the real kernel. Builds the
    /// Debian package first, for the test that installs it (tests/package.rs).
    Test {
        /// Extra arguments for `cargo test` (e.g. a test name filter).
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

fn main() -> Result<()> {
    let cli = Cli::parse();
    match cli.command {
        Cmd::Setup => setup::run().and_then(|_| setup::packaging()),
        Cmd::Build { release } => {
            let env = setup::run()?;
            cargo(&env, &["build", "--package", "ksm-trace"], release)
        }
        Cmd::Run { args } => {
            let env = setup::run()?;
            cargo(&env, &["build", "--package", "ksm-trace"], true)?;
            let bin = setup::workspace_root()?.join("target/release/ksm-trace");
            let status = as_root(&bin.to_string_lossy(), &args)
                .status()
                .context("running ksm-trace")?;
            std::process::exit(status.code().unwrap_or(1));
        }
        Cmd::Bench => {
            if !is_root() {
                bail!(
                    "the bench drives KSM and runs the kernel's selftest, which writes KSM's knobs: run `cargo xtask bench` as root"
                );
            }
            let env = setup::run()?;
            cargo(&env, &["build", "--package", "ksm-trace"], true)?;
            let bin = setup::workspace_root()?.join("target/release/ksm-trace");
            for args in [
                &["bench", "overhead"][..],
                &[
                    "bench",
                    "merge",
                    "--size",
                    "100M",
                    "-o",
                    "/tmp/ksm-trace-bench.json",
                ],
                &[
                    "bench",
                    "unmerge",
                    "--size",
                    "100M",
                    "-o",
                    "/tmp/ksm-trace-bench-unmerge.json",
                ],
            ] {
                let status = as_root(
                    &bin.to_string_lossy(),
                    &args.iter().map(|a| a.to_string()).collect::<Vec<_>>(),
                )
                .status()
                .context("running ksm-trace bench")?;
                if !status.success() {
                    bail!("ksm-trace {} failed", args.join(" "));
                }
            }
            selftests::compare_merge_speed(&bin, &selftests::ensure()?)
        }
        Cmd::Lab { kernel } => {
            let env = setup::run()?;
            cargo(&env, &["build", "--package", "ksm-trace"], true)?;
            let bin = setup::workspace_root()?.join("target/release/ksm-trace");
            let args = ["lab".to_owned(), "--kernel".to_owned(), kernel.clone()];
            let status = as_root(&bin.to_string_lossy(), &args)
                .status()
                .context("running ksm-trace lab")?;
            if !status.success() {
                bail!("ksm-trace lab --kernel {kernel} failed");
            }
            Ok(())
        }
        Cmd::Fixture => {
            let env = setup::run()?;
            cargo(&env, &["build", "--package", "ksm-trace"], false)?;
            fixture::regenerate(&env)
        }
        Cmd::Kernel { patch } => kernel::build(patch.as_deref()).map(drop),
        Cmd::Pictures => {
            let env = setup::run()?;
            cargo(&env, &["build", "--package", "ksm-trace"], true)?;
            pictures::regenerate(&setup::workspace_root()?.join("target/release/ksm-trace"))
        }
        Cmd::Dist => {
            let env = setup::run()?;
            setup::packaging()?;
            dist::package(&env).map(|_| ())
        }
        Cmd::Install { uninstall: true } => dist::uninstall(),
        Cmd::Install { uninstall: false } => {
            if !is_root() {
                bail!("`cargo xtask install` writes under /usr/local: run it as root");
            }
            let env = setup::run()?;
            setup::packaging()?;
            dist::install(&env)
        }
        Cmd::Soak { duration } => long_test(
            "soak",
            "KSM_TRACE_SOAK_SECS",
            &duration.as_secs().to_string(),
        ),
        Cmd::Scale => long_test("scale", "KSM_TRACE_SCALE", "full"),
        Cmd::Selftests => {
            println!("{}", selftests::ensure()?.display());
            Ok(())
        }
        Cmd::Test { args } => {
            let env = setup::run()?;
            setup::packaging()?;
            setup::test_tools()?;
            if !is_root() {
                bail!(
                    "the integration tests load eBPF programs and drive KSM: run `cargo xtask test` as root"
                );
            }
            let deb = dist::package(&env)?;
            let selftests = selftests::ensure()?;
            let mut test_args = vec!["test", "--workspace", "--exclude", "ksm-trace-ebpf"];
            test_args.extend(args.iter().map(String::as_str));
            let mut cmd = cargo_command(&env, &test_args, false)?;
            cmd.env(PACKAGE_ENV, &deb);
            cmd.env(SELFTESTS_ENV, &selftests);
            run_cargo(cmd, &test_args)
        }
    }
}

/// The Debian package `cargo xtask test` built, for tests/package.rs to install.
/// Where the kernel's KSM selftests were built, for tests/selftests.rs.
const SELFTESTS_ENV: &str = "KSM_TRACE_SELFTESTS";
const PACKAGE_ENV: &str = "KSM_TRACE_TEST_DEB";

fn cargo(env: &setup::BuildEnv, args: &[&str], release: bool) -> Result<()> {
    run_cargo(cargo_command(env, args, release)?, args)
}

fn cargo_command(env: &setup::BuildEnv, args: &[&str], release: bool) -> Result<Command> {
    let mut cmd = Command::new(std::env::var("CARGO").unwrap_or_else(|_| "cargo".into()));
    cmd.args(args).current_dir(setup::workspace_root()?);
    if release {
        cmd.arg("--release");
    }
    env.apply(&mut cmd);
    Ok(cmd)
}

fn run_cargo(mut cmd: Command, args: &[&str]) -> Result<()> {
    let status = cmd
        .status()
        .with_context(|| format!("running cargo {}", args.join(" ")))?;
    if !status.success() {
        bail!("cargo {} failed ({status})", args.join(" "));
    }
    Ok(())
}

fn is_root() -> bool {
    Command::new("id")
        .arg("-u")
        .output()
        .map(|o| o.stdout.trim_ascii() == b"0")
        .unwrap_or(false)
}

/// ksm-trace needs root; use sudo when it is there, else let ksm-trace say what is wrong.
fn as_root(bin: &str, args: &[String]) -> Command {
    if !is_root()
        && Command::new("sudo")
            .arg("-n")
            .arg("true")
            .status()
            .is_ok_and(|s| s.success())
    {
        let mut cmd = Command::new("sudo");
        cmd.arg(bin).args(args);
        cmd
    } else {
        let mut cmd = Command::new(bin);
        cmd.args(args);
        cmd
    }
}

/// Runs one integration test file in its long form (`var=value`), showing its figures.
fn long_test(test: &str, var: &str, value: &str) -> Result<()> {
    let env = setup::run()?;
    let args = [
        "test",
        "-p",
        "ksm-trace",
        "--test",
        test,
        "--",
        "--nocapture",
    ];
    let mut cmd = cargo_command(&env, &args, false)?;
    cmd.env(var, value);
    run_cargo(cmd, &args)
}

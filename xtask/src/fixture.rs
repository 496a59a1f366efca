//! The rendering tests' fixture: a small real recording made by ksm-trace itself, named for its
//! format version (`recording-vN.json`), plus the folded stacks and reports it renders to (golden
//! files).
//! Regenerate after changing the recording format (a new version: the older fixtures stay, so
//! the schema test keeps reading them) or the folding on purpose, and commit the result.
use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::setup::workspace_root;

pub const RECORD_ARGS: [&str; 9] = [
    "--workload",
    "procs:2,pages=600,dup=0.5,rounds=2,wait=2s,unmerge=0.5",
    "--pages-to-scan",
    "1000",
    "--sleep-ms",
    "10",
    "--merge-latency",
    "always",
    "-q",
];

pub fn regenerate(env: &crate::setup::BuildEnv) -> Result<()> {
    let root = workspace_root()?;
    let bin = root.join("target/debug/ksm-trace");
    let dir = root.join("ksm-trace/tests/fixtures");
    fs::create_dir_all(&dir)?;
    let recording = dir.join("recording-new.json");
    let run = |args: &[&str]| -> Result<Vec<u8>> {
        let out = Command::new(&bin)
            .args(args)
            .output()
            .with_context(|| format!("running {}", bin.display()))?;
        if !out.status.success() {
            bail!(
                "ksm-trace {} failed: {}",
                args.join(" "),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(out.stdout)
    };
    let mut args = vec!["record", "-o", recording.to_str().unwrap_or_default()];
    args.extend(RECORD_ARGS);
    run(&args)?;
    let text = fs::read_to_string(&recording)?;
    let version = serde_json::from_str::<serde_json::Value>(&text)?["version"]
        .as_u64()
        .context("the recording has no version")?;
    let name = format!("recording-v{version}");
    let kept = dir.join(format!("{name}.json"));
    fs::rename(&recording, &kept)?;
    let recording = kept;
    for (view, file) in [
        ("stack", format!("{name}.folded")),
        ("process", format!("{name}.by-process.folded")),
    ] {
        let folded = run(&[
            "flame",
            recording.to_str().unwrap_or_default(),
            "--folded",
            "--by",
            view,
        ])?;
        fs::write(dir.join(&file), folded)?;
    }
    eprintln!("xtask: fixture written to {}", dir.display());
    // The golden reports follow the new fixture (tests/rendering.rs rewrites them when blessed).
    let args = [
        "test",
        "-p",
        "ksm-trace",
        "--test",
        "rendering",
        "reports_of_the_kept_fixtures_are_the_golden_ones",
    ];
    let mut cmd = crate::cargo_command(env, &args, false)?;
    cmd.env("KSM_TRACE_BLESS", "1");
    crate::run_cargo(cmd, &args)
}

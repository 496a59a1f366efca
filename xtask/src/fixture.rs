//! The rendering tests' fixture: a small real recording made by ksm-trace itself, plus the
//! folded stacks it renders to (golden files). Regenerate after changing the recording format
//! or the folding on purpose, and commit the result.
use std::{fs, process::Command};

use anyhow::{Context as _, Result, bail};

use crate::setup::workspace_root;

pub const RECORD_ARGS: [&str; 9] = [
    "--workload",
    "procs:2,pages=600,dup=0.5,rounds=2,wait=2s",
    "--pages-to-scan",
    "1000",
    "--sleep-ms",
    "10",
    "--merge-latency",
    "always",
    "-q",
];

pub fn regenerate() -> Result<()> {
    let root = workspace_root()?;
    let bin = root.join("target/debug/ksm-trace");
    let dir = root.join("ksm-trace/tests/fixtures");
    fs::create_dir_all(&dir)?;
    let recording = dir.join("procs-small.json");
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
    for (view, file) in [
        ("stack", "procs-small.folded"),
        ("process", "procs-small.by-process.folded"),
    ] {
        let folded = run(&[
            "flame",
            recording.to_str().unwrap_or_default(),
            "--folded",
            "--by",
            view,
        ])?;
        fs::write(dir.join(file), folded)?;
    }
    eprintln!("xtask: fixture written to {}", dir.display());
    Ok(())
}

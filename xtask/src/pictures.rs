//! README's pictures, from a real run of the card's command: `ksm-trace record --workload vms:4`
//! (as root: it drives KSM and boots four guests), then the flame graph of ksmd's cost and the
//! memory-saved chart of that recording, written to docs/images/. The recording itself stays in
//! target/pictures/ (too large to commit); the figures quoted beside the pictures come from its
//! report, printed here.
use std::{fs, path::Path};

use anyhow::{Context as _, Result, bail};

use crate::{as_root, setup::workspace_root};

pub fn regenerate(bin: &Path) -> Result<()> {
    let root = workspace_root()?;
    let work = root.join("target/pictures");
    let images = root.join("docs/images");
    fs::create_dir_all(&work)?;
    fs::create_dir_all(&images)?;
    let recording = work.join("vms4.json");
    let path = |p: &Path| p.to_string_lossy().into_owned();
    run(
        bin,
        &["record", "--workload", "vms:4", "-o", &path(&recording)],
    )?;
    let svg = images.join("merge-cost.svg");
    run(bin, &["flame", &path(&recording), "-o", &path(&svg)])?;
    let charts = work.join("charts");
    run(bin, &["plot", &path(&recording), "-o", &path(&charts)])?;
    fs::copy(charts.join("memory.svg"), images.join("memory-saved.svg"))
        .context("copying the memory-saved chart")?;
    eprintln!(
        "xtask: pictures written to {} (the recording: {})",
        images.display(),
        recording.display()
    );
    Ok(())
}

fn run(bin: &Path, args: &[&str]) -> Result<()> {
    let args: Vec<String> = args.iter().map(|a| a.to_string()).collect();
    let status = as_root(&bin.to_string_lossy(), &args)
        .status()
        .with_context(|| format!("running ksm-trace {}", args.join(" ")))?;
    if !status.success() {
        bail!("ksm-trace {} failed ({status})", args.join(" "));
    }
    Ok(())
}

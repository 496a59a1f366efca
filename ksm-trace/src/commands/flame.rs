//! `ksm-trace flame`: a flame graph (SVG) or folded stacks of one recording's ksmd cost, or a
//! differential graph of two.
use anyhow::{Result, anyhow, bail};

use super::print;
use crate::{cli::FlameArgs, flame, recording::Recording};

pub fn run(args: &FlameArgs) -> Result<()> {
    let folded: Vec<flame::Folded> = args
        .files
        .iter()
        .map(|f| {
            flame::folded(&Recording::read(f)?, args.by)
                .map_err(|e| anyhow!("{}: {e}", f.display()))
        })
        .collect::<Result<_>>()?;
    if args.folded {
        if folded.len() > 1 {
            bail!("--folded takes one recording: drop the second file");
        }
        let text = folded[0].lines.join("\n") + "\n";
        return match &args.output {
            Some(path) => Ok(std::fs::write(path, text)?),
            None => print(&text),
        };
    }
    let path = args
        .output
        .clone()
        .ok_or_else(|| anyhow!("give the SVG's path with -o (e.g. -o merge-cost.svg)"))?;
    let mut svg = Vec::new();
    match folded.as_slice() {
        [one] => flame::svg(one, &mut svg)?,
        [before, after] => flame::diff_svg(before, after, &mut svg)?,
        _ => unreachable!("clap allows one or two files"),
    }
    std::fs::write(&path, svg).map_err(|e| {
        anyhow!(
            "cannot write {} ({e}): choose a writable path with -o",
            path.display()
        )
    })?;
    eprintln!("ksm-trace: flame graph written to {}", path.display());
    Ok(())
}

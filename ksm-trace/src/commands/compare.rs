//! `ksm-trace compare`: two runs, or two sets of repeated runs, side by side; with `--flame`,
//! the differential flame graph of the first run of each side beside it.
use anyhow::{Result, anyhow, bail};

use super::print;
use crate::{
    cli::CompareArgs,
    compare,
    flame::{self, View},
    recording::Recording,
};

pub fn run(args: &CompareArgs) -> Result<()> {
    let (a, b) = match (args.a.as_slice(), args.b.as_slice()) {
        ([a, b], []) => (vec![a.clone()], vec![b.clone()]),
        (_, []) => bail!(
            "compare takes two recordings, or A's then `--` then B's (e.g. compare a1.json a2.json -- b1.json b2.json)"
        ),
        (a, b) => (a.to_vec(), b.to_vec()),
    };
    let comparison = compare::compare(&a, &b, args.force)?;
    if let Some(path) = &args.flame {
        let folded = |p: &std::path::Path| {
            flame::folded(&Recording::read(p)?, View::Stack)
                .map_err(|e| anyhow!("{}: {e}", p.display()))
        };
        let mut svg = Vec::new();
        flame::diff_svg(&folded(&a[0])?, &folded(&b[0])?, &mut svg)?;
        std::fs::write(path, svg).map_err(|e| {
            anyhow!(
                "cannot write {} ({e}): choose a writable path with --flame",
                path.display()
            )
        })?;
        eprintln!(
            "ksm-trace: differential flame graph written to {}",
            path.display()
        );
    }
    if args.json {
        print(&(serde_json::to_string_pretty(&comparison)? + "\n"))
    } else {
        print(&compare::text::render(&comparison))
    }
}

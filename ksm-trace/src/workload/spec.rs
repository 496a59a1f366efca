//! Workload specs: `KIND:COUNT[,key=value...]`, e.g. `procs:4,pages=25600,dup=0.5`.
use std::collections::BTreeMap;

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

/// Processes with mergeable anonymous memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcsSpec {
    pub count: u32,
    /// Pages per process.
    pub pages: u64,
    /// Fraction of each process's pages that is identical across processes.
    pub dup: f64,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WorkloadSpec {
    Procs(ProcsSpec),
}

const PROCS_HELP: &str = "procs:N[,pages=P][,dup=F] (e.g. procs:4,pages=25600,dup=0.5)";

impl WorkloadSpec {
    pub fn parse(text: &str) -> Result<Self> {
        let (kind, rest) = text
            .split_once(':')
            .ok_or_else(|| anyhow!("workload spec {text:?} has no count: use {PROCS_HELP}"))?;
        let mut parts = rest.split(',');
        let count_text = parts.next().unwrap_or_default();
        let options = parse_options(parts)?;
        match kind {
            "procs" => {
                let count = parse_count(count_text, 1, 256, "procs")?;
                let mut spec = ProcsSpec {
                    count,
                    pages: 25_600,
                    dup: 0.5,
                };
                for (key, value) in options {
                    match key.as_str() {
                        "pages" => spec.pages = parse_count(&value, 1, 64 << 20, "pages")? as u64,
                        "dup" => spec.dup = parse_fraction(&value, "dup")?,
                        _ => bail!("unknown procs option {key:?}: use {PROCS_HELP}"),
                    }
                }
                Ok(Self::Procs(spec))
            }
            "vms" => bail!("the vms workload is not available in this build yet: use {PROCS_HELP}"),
            _ => bail!("unknown workload kind {kind:?}: use {PROCS_HELP}"),
        }
    }

    /// Anonymous memory the workload will fill, in bytes.
    pub fn memory_bytes(&self, page_size: u64) -> u64 {
        match self {
            Self::Procs(p) => p.count as u64 * p.pages * page_size,
        }
    }
}

fn parse_options<'a>(parts: impl Iterator<Item = &'a str>) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for part in parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("workload option {part:?} is not key=value"))?;
        if options.insert(k.to_owned(), v.to_owned()).is_some() {
            bail!("workload option {k:?} is given twice");
        }
    }
    Ok(options)
}

fn parse_count(text: &str, min: u64, max: u64, what: &str) -> Result<u32> {
    let n: u64 = text
        .parse()
        .with_context(|| format!("{what} must be a whole number, not {text:?}"))?;
    if !(min..=max).contains(&n) {
        bail!("{what}={n} is out of range: use {min} to {max}");
    }
    Ok(n as u32)
}

fn parse_fraction(text: &str, what: &str) -> Result<f64> {
    let f: f64 = text
        .parse()
        .with_context(|| format!("{what} must be a fraction between 0 and 1, not {text:?}"))?;
    if !(0.0..=1.0).contains(&f) {
        bail!("{what}={f} is out of range: use a fraction between 0 and 1");
    }
    Ok(f)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procs_with_defaults_and_options() {
        assert_eq!(
            WorkloadSpec::parse("procs:4").unwrap(),
            WorkloadSpec::Procs(ProcsSpec {
                count: 4,
                pages: 25_600,
                dup: 0.5
            })
        );
        assert_eq!(
            WorkloadSpec::parse("procs:2,pages=100,dup=1").unwrap(),
            WorkloadSpec::Procs(ProcsSpec {
                count: 2,
                pages: 100,
                dup: 1.0
            })
        );
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (spec, needle) in [
            ("procs", "no count"),
            ("procs:0", "out of range"),
            ("procs:-1", "whole number"),
            ("procs:2,pages=0", "out of range"),
            ("procs:2,dup=1.5", "out of range"),
            ("procs:2,dup=x", "fraction"),
            ("procs:2,color=red", "unknown procs option"),
            ("procs:2,pages", "key=value"),
            ("procs:2,pages=1,pages=2", "twice"),
            ("disks:2", "unknown workload kind"),
        ] {
            let err = WorkloadSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn memory_size() {
        let spec = WorkloadSpec::parse("procs:3,pages=10").unwrap();
        assert_eq!(spec.memory_bytes(4096), 3 * 10 * 4096);
    }
}

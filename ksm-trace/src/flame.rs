//! Flame graphs of what ksmd costs, from a recording only: ksmd's sampled kernel stacks
//! (`--by stack`), or a semantic view `ksmd;<comm>[pid];<outcome>` weighted by measured merge
//! time (`--by process`). Folded stacks (`a;b;c N`) are what flamegraph.pl, inferno and
//! speedscope read; SVGs are drawn by inferno, and two recordings give a differential graph.
use std::{collections::BTreeMap, io::Write};

use anyhow::{Result, bail};
use inferno::{differential, flamegraph};

use crate::recording::Recording;

/// What a flame graph's frames are (see [`View::ALL`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum View {
    Stack,
    Process,
}

impl View {
    /// Every view: its name (as `--by` takes it) and what it shows.
    pub const ALL: [(View, &'static str, &'static str); 2] = [
        (
            View::Stack,
            "stack",
            "ksmd's kernel stacks, from cpu-clock samples",
        ),
        (
            View::Process,
            "process",
            "merge time per process and outcome",
        ),
    ];
}

/// One frame as the folded format can carry it: kallsyms' module suffix (`name\t[bpf]`) becomes
/// `name_[bpf]` (as stackcollapse-perf marks kernel frames `_[k]`), and `;` (the frame
/// separator) and whitespace (the count separator) become `_`.
pub fn frame(raw: &str) -> String {
    let name = match raw.split_once('\t') {
        Some((name, module)) => format!("{}_{}", name.trim_end(), module.trim()),
        None => raw.trim().to_owned(),
    };
    name.replace(|c: char| c == ';' || c.is_whitespace(), "_")
}

/// Folded stacks and the unit their counts are in.
pub struct Folded {
    pub lines: Vec<String>,
    pub unit: &'static str,
    pub title: &'static str,
}

pub fn folded(rec: &Recording, view: View) -> Result<Folded> {
    match view {
        View::Stack => {
            if rec.profile.stacks.is_empty() {
                bail!(
                    "the recording has no ksmd samples (ksmd did not run, it was recorded with --profile-hz 0, or the profiler was unavailable: see the report's mechanisms)"
                );
            }
            // Recordings made before frames were cleaned at record time still hold raw
            // kallsyms names; two raw stacks may clean to one, so counts are summed.
            let mut stacks = BTreeMap::<String, u64>::new();
            for (stack, n) in &rec.profile.stacks {
                let frames: Vec<String> = stack.split(';').map(frame).collect();
                *stacks.entry(frames.join(";")).or_default() += n;
            }
            Ok(Folded {
                lines: stacks
                    .into_iter()
                    .map(|(stack, n)| format!("{stack} {n}"))
                    .collect(),
                unit: "samples",
                title: "ksmd on-CPU kernel stacks",
            })
        }
        View::Process => by_process(rec),
    }
}

/// `ksmd;<comm>[pid];<outcome> weight`: merge time where it was measured, pages otherwise.
fn by_process(rec: &Recording) -> Result<Folded> {
    let timed = rec.processes.iter().any(|p| {
        let t = &p.stats.time_ns;
        t.new_page + t.join + t.zero_page + t.failed > 0
    });
    let mut lines = Vec::new();
    for p in &rec.processes {
        let s = &p.stats;
        let outcomes = if timed {
            [
                ("new_ksm_page", s.time_ns.new_page),
                ("join_ksm_page", s.time_ns.join),
                ("zero_page", s.time_ns.zero_page),
                ("failed", s.time_ns.failed),
            ]
        } else {
            [
                ("new_ksm_page", s.counts.new_pages),
                ("join_ksm_page", s.counts.joins),
                ("zero_page", s.counts.zero_page_merges),
                ("failed", s.counts.failed),
            ]
        };
        let comm = if s.comm.is_empty() {
            "?".to_owned()
        } else {
            frame(&s.comm)
        };
        for (outcome, weight) in outcomes.into_iter().filter(|(_, w)| *w > 0) {
            lines.push(format!("ksmd;{comm}[{}];{outcome} {weight}", p.pid));
        }
    }
    if lines.is_empty() {
        bail!("the recording has no merges to attribute: record a workload that KSM merges");
    }
    lines.sort();
    Ok(Folded {
        lines,
        unit: if timed { "ns" } else { "pages" },
        title: if timed {
            "KSM merge time by process and outcome"
        } else {
            "KSM merges by process and outcome (pages; no latency measured)"
        },
    })
}

fn options<'a>(title: String, unit: &str) -> flamegraph::Options<'a> {
    let mut opts = flamegraph::Options::default();
    opts.title = title;
    opts.count_name = unit.to_owned();
    opts
}

pub fn svg(folded: &Folded, out: impl Write) -> Result<()> {
    let mut opts = options(folded.title.to_owned(), folded.unit);
    flamegraph::from_lines(&mut opts, folded.lines.iter().map(String::as_str), out)?;
    Ok(())
}

/// Differential flame graph: frames coloured by how `after` differs from `before`.
pub fn diff_svg(before: &Folded, after: &Folded, out: impl Write) -> Result<()> {
    let mut diff = Vec::new();
    differential::from_readers(
        differential::Options::default(),
        before.lines.join("\n").as_bytes(),
        after.lines.join("\n").as_bytes(),
        &mut diff,
    )?;
    let mut opts = options(
        format!("{} (differential: red grew, blue shrank)", after.title),
        after.unit,
    );
    flamegraph::from_reader(&mut opts, diff.as_slice(), out)?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kallsyms_module_suffix_is_kept_without_the_tab() {
        assert_eq!(
            frame("bpf_prog_559b43dfd6c3cdc9_ksmd_mmap_lock_released\t[bpf]"),
            "bpf_prog_559b43dfd6c3cdc9_ksmd_mmap_lock_released_[bpf]"
        );
        assert_eq!(
            frame("kvm_mmu_page_fault\t[kvm]"),
            "kvm_mmu_page_fault_[kvm]"
        );
        assert_eq!(frame("ksm_scan_thread"), "ksm_scan_thread");
    }

    #[test]
    fn separators_in_comms_and_frames_become_underscores() {
        // A comm may hold anything but NUL: ';' would split the frame, a space the count.
        assert_eq!(frame("my app;v2"), "my_app_v2");
        assert_eq!(frame("tab\there"), "tab_here");
        assert_eq!(frame("a\nb c;;d"), "a_b_c__d");
        assert_eq!(frame("kworker/0:1"), "kworker/0:1");
        for raw in ["x; y\t[m;o d]", " lead", "a\u{a0}b"] {
            let f = frame(raw);
            assert!(
                !f.contains(|c: char| c == ';' || c.is_whitespace()),
                "{raw:?} -> {f:?}"
            );
        }
    }
}

//! The recording's version rule, held against the kept fixtures (`tests/fixtures/recording-vN.json`,
//! one real recording per format version): every version reads, the current one survives a
//! round trip unchanged, and bad files are refused in one line. No root and no kernel needed.
use std::path::PathBuf;

use ksm_trace::{
    flame::{self, View},
    recording::{
        Recording, VERSION, WorkloadKind,
        schema::{
            AttributionMechanism, BatchMechanism, BracketAttach, CowMechanism, Fallback,
            MergeLatencyMechanism, Reason,
        },
    },
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn version_fixture(v: u32) -> PathBuf {
    fixture(&format!("recording-v{v}.json"))
}

#[test]
fn every_version_has_a_kept_fixture_that_reads() {
    for v in 1..=VERSION {
        let path = version_fixture(v);
        assert!(
            path.exists(),
            "{} missing: keep one recording per format version (cargo xtask fixture writes the current one)",
            path.display()
        );
        let rec = Recording::read(&path).unwrap_or_else(|e| panic!("version {v}: {e:#}"));
        assert_eq!(rec.version, VERSION, "read as the current shape");
        assert!(!rec.processes.is_empty(), "version {v} has processes");
    }
}

#[test]
fn current_version_round_trips_unchanged() {
    // A field added, removed or renamed without a version bump changes what is written back.
    let text = std::fs::read_to_string(version_fixture(VERSION)).unwrap();
    let original: serde_json::Value = serde_json::from_str(&text).unwrap();
    let rec = Recording::from_json(&text).unwrap();
    let written = serde_json::to_value(&rec).unwrap();
    assert!(
        written == original,
        "the schema changed without a version bump: bump VERSION in recording/schema.rs, add a step to recording/migrate.rs and run `cargo xtask fixture`"
    );
}

/// Figures read off `recording-v1.json` by hand (with a JSON viewer, not with ksm-trace).
#[test]
fn version_1_upgrades_to_the_figures_it_holds() {
    let rec = Recording::read(&version_fixture(1)).unwrap();
    assert_eq!(
        rec.mechanisms.merge_latency,
        MergeLatencyMechanism::Bracket {
            attached: BracketAttach::Always
        }
    );
    assert_eq!(rec.mechanisms.batches, BatchMechanism::SchedSwitch);
    assert_eq!(
        rec.mechanisms.attribution,
        AttributionMechanism::MmOwner {
            mm_owner: 1296,
            task_tgid: 1268,
            task_comm: 1752
        }
    );
    // Version 1 files written before the COW probe existed: not traced, never "0 breaks".
    assert_eq!(rec.mechanisms.cow, CowMechanism::Unavailable);
    assert!(!rec.mechanisms.cow_traced());
    // Fallbacks from before version 9 keep their words, as such.
    assert!(matches!(
        rec.mechanisms.fallbacks.as_slice(),
        [Fallback::Recorded { text }] if text.starts_with("fentry/fexit on try_to_merge_one_page unavailable")
    ));
    let workload = rec.meta.workload.as_ref().unwrap();
    assert_eq!(workload.kind, WorkloadKind::Procs);
    assert_eq!(
        workload.spec_text,
        "procs:2,pages=600,dup=0.5,rounds=2,wait=2s"
    );
    let workers: Vec<(u32, &str, u64)> = workload
        .workers
        .iter()
        .map(|w| (w.pid, w.comm.as_str(), w.bytes))
        .collect();
    assert_eq!(
        workers,
        [
            (27515, "ksm-procs-0", 2457600),
            (27516, "ksm-procs-1", 2457600)
        ]
    );
    let p0 = rec.processes.iter().find(|p| p.pid == 27515).unwrap();
    assert_eq!(
        (
            p0.stats.counts.merges,
            p0.stats.counts.new_pages,
            p0.stats.counts.joins
        ),
        (600, 600, 0)
    );
    assert_eq!(p0.ksm_stat_end.unwrap().ksm_merging_pages, 300);
    assert_eq!(p0.stats.time_ns.new_page, 493421);
    assert_eq!(rec.scans.full_scans.len(), 214);
    assert_eq!(
        rec.counters_end.ksm["full_scans"] - rec.counters_start.ksm["full_scans"],
        214
    );
    assert_eq!(rec.profile.samples(), 156);
    assert_eq!(rec.profile.stacks.len(), 34);
}

/// The by-process flame view of version 1, written by hand from its `time_ns` fields.
#[test]
fn version_1_by_process_folded_is_what_its_merge_times_say() {
    let rec = Recording::read(&version_fixture(1)).unwrap();
    let folded = flame::folded(&rec, View::Process).unwrap();
    assert_eq!(
        folded.lines,
        [
            "ksmd;ksm-procs-0[27515];new_ksm_page 493421",
            "ksmd;ksm-procs-1[27516];new_ksm_page 196096",
        ]
    );
    assert_eq!(folded.unit, "ns");
    let stacks = flame::folded(&rec, View::Stack).unwrap();
    assert!(stacks.lines.contains(
        &"ksmd;ret_from_fork_asm;ret_from_fork;kthread;ksm_scan_thread;walk_page_range_vma;__walk_page_range;walk_pgd_range;ksm_next_page_pmd_entry 24".to_owned()
    ));
}

fn refusal(text: &str) -> String {
    let e = Recording::from_json(text).expect_err("must be refused");
    let line = format!("{e:#}");
    assert!(!line.contains('\n'), "one line: {line}");
    line
}

#[test]
fn bad_files_are_refused_in_one_line() {
    let current = std::fs::read_to_string(version_fixture(VERSION)).unwrap();
    assert!(refusal(&current[..current.len() / 2]).contains("not JSON"));
    assert!(refusal("\u{1}\u{2}garbage").contains("not JSON"));
    assert!(
        refusal(r#"{"format": "something-else", "version": 1}"#)
            .contains("not a ksm-trace recording")
    );
    let newer = current.replacen(
        &format!("\"version\":{VERSION}"),
        &format!("\"version\":{}", VERSION + 1),
        1,
    );
    assert_ne!(newer, current, "the fixture stores its version compactly");
    assert!(refusal(&newer).contains("at least as new"));
    let damaged = current.replacen("\"processes\":[", "\"processes\":[7,", 1);
    assert!(refusal(&damaged).contains("damaged"));
}

/// Version 9's fallbacks are data: the fixture's kernel (this project's, which refuses tracing
/// programs) says why fexit was not used, with the errno and what was checked.
#[test]
fn version_9_fallbacks_carry_their_reason_as_data() {
    let rec = Recording::read(&version_fixture(9)).unwrap();
    let refusal = rec
        .mechanisms
        .fallbacks
        .iter()
        .find_map(|f| match f {
            Fallback::MergeLatencyFromBracket {
                reason: Reason::Refused(r),
            } => Some(r),
            _ => None,
        })
        .expect("the fixture's kernel refused fexit");
    assert_eq!(refusal.function, "try_to_merge_one_page");
    assert_eq!(refusal.errno, Some(1), "EPERM");
    assert_eq!(refusal.lockdown.as_deref(), Some("integrity"));
    assert!(refusal.lsms.as_deref().unwrap().contains("bpf"));
    assert_eq!(rec.meta.capabilities.lsms, refusal.lsms);
}

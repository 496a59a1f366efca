//! The KSM advisor (advisor_mode=scan-time, Linux 6.8) under `record --advisor scan-time
//! --advisor-target 3s`: every full scan has its row in the scorecard, the pages_to_scan each
//! reports is the one sysfs shows until the next, and all five advisor knobs (and pages_to_scan,
//! which switching the mode resets) are put back.
mod common;

use common::*;

tests! {
    advisor_scorecard_has_a_row_per_full_scan_and_knobs_come_back: Root,
}

const ADVISOR_KNOBS: [&str; 6] = [
    "advisor_mode",
    "advisor_target_scan_time",
    "advisor_max_cpu",
    "advisor_min_pages_to_scan",
    "advisor_max_pages_to_scan",
    "pages_to_scan",
];

fn advisor_scorecard_has_a_row_per_full_scan_and_knobs_come_back() {
    if !std::path::Path::new("/sys/kernel/mm/ksm/advisor_mode").exists() {
        panic!("this kernel has no KSM advisor (Linux 6.8+), which the test needs");
    }
    let session = KsmSession::start("advisor");
    let before = ADVISOR_KNOBS.map(knob);
    // Bounds without the advisor, or out of range: one line each, nothing changed.
    for (args, needle) in [
        (&["--advisor-target", "3s"][..], "add --advisor scan-time"),
        (
            &["--advisor", "scan-time", "--advisor-max-cpu", "150"][..],
            "1 to 100",
        ),
        (
            &[
                "--advisor",
                "scan-time",
                "--advisor-min-pages",
                "900",
                "--advisor-max-pages",
                "100",
            ][..],
            "swap them",
        ),
    ] {
        let mut all = vec![
            "record",
            "--workload",
            "procs:1,pages=100",
            "--duration",
            "2s",
        ];
        all.extend_from_slice(args);
        assert_clean_error(&all, needle);
        assert_eq!(ADVISOR_KNOBS.map(knob), before, "{args:?} changed a knob");
    }
    let rec_path = session.path("advisor.json");
    let _ = ksm_trace_stdout(&[
        "record",
        "--workload",
        "procs:2,pages=4000,dup=0.5,wait=30s",
        "--advisor",
        "scan-time",
        "--advisor-target",
        "3s",
        "--advisor-min-pages",
        "200",
        "--advisor-max-cpu",
        "60",
        "--sleep-ms",
        "20",
        "--duration",
        "12s",
        "-q",
        "-o",
        rec_path.to_str().unwrap(),
    ]);
    assert_eq!(ADVISOR_KNOBS.map(knob), before, "advisor knobs restored");
    session.assert_knobs_restored();

    let rec = ksm_trace_json(&["report", rec_path.to_str().unwrap(), "--json"]);
    let raw: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&rec_path).unwrap()).unwrap();
    assert_eq!(raw["meta"]["knobs"]["advisor_mode"], "scan-time");
    assert_eq!(raw["meta"]["knobs"]["advisor_target_scan_time"], "3");
    assert_eq!(raw["meta"]["knobs"]["advisor_max_cpu"], "60");
    let a = &rec["advisor"];
    let scans = a["scans"]
        .as_array()
        .unwrap_or_else(|| panic!("no scorecard: {a}"));
    let full_scans = raw["scans"]["full_scans"].as_array().unwrap();
    assert!(scans.len() >= 2, "{a}");
    // A row per full scan the window saw, each matched to its traced scan.
    assert_eq!(scans.len(), full_scans.len(), "{a}");
    assert_eq!(a["target_s"], 3);
    // The first choice starts from advisor_min_pages_to_scan, where the mode switch put it.
    assert_eq!(scans[0]["pages_before"], 200, "{a}");
    // What each row chose is what sysfs showed from then until the next row.
    let samples = raw["timeseries"].as_array().unwrap();
    let mut checked = 0;
    for (i, s) in scans.iter().enumerate() {
        let at = s["t_s"].as_f64().unwrap();
        let next = scans
            .get(i + 1)
            .map_or(f64::MAX, |n| n["t_s"].as_f64().unwrap());
        if let Some(sample) = samples.iter().find(|x| {
            let t = x["t_ns"].as_f64().unwrap() / 1e9;
            t > at && t < next
        }) {
            assert_eq!(
                sample["counters"]["ksm"]["pages_to_scan"], s["pages_to_scan"],
                "row {i}: {s}"
            );
            checked += 1;
        }
    }
    assert!(
        checked >= 2,
        "only {checked} rows had a sample before the next: {a}"
    );
    let text = ksm_trace_stdout(&["report", rec_path.to_str().unwrap()]);
    assert!(
        text.contains("KSM advisor (scan-time): target 3 s"),
        "{text}"
    );
    // Its charts: target vs achieved scan time, and the pages_to_scan it chose.
    let charts = session.path("charts");
    ksm_trace_stdout(&[
        "plot",
        rec_path.to_str().unwrap(),
        "-o",
        charts.to_str().unwrap(),
    ]);
    for chart in ["advisor-scan-time.svg", "advisor-pages-to-scan.svg"] {
        let svg = std::fs::read_to_string(charts.join(chart)).unwrap();
        assert!(svg.contains("KSM advisor"), "{chart}");
    }
    drop(session);
}

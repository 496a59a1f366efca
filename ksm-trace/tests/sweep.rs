//! `ksm-trace sweep` on the real kernel: every configuration is recorded and kept, and the
//! summary's figures are exactly those recomputed from the kept recordings.
mod common;

use common::*;

#[test]
fn two_configuration_sweep_summarizes_its_recordings() {
    let session = KsmSession::start("sweep");
    let dir = session.path("sweep");
    let out = ksm_trace(&[
        "sweep",
        "--workload",
        "procs:2,pages=1500,dup=0.5",
        "--pages-to-scan",
        "500,3000",
        "--sleep-ms",
        "10",
        "--until-settled",
        "--timeout",
        "20s",
        "--interval",
        "500ms",
        "-o",
        dir.to_str().unwrap(),
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let table = String::from_utf8(out.stdout).unwrap();
    assert!(table.contains("Cheapest configuration"), "{table}");
    let stored: Vec<serde_json::Value> =
        serde_json::from_str(&std::fs::read_to_string(dir.join("summary.json")).unwrap()).unwrap();
    assert_eq!(stored.len(), 2);
    let recomputed = ksm_trace::sweep::summaries_from_dir(&dir).unwrap();
    assert_eq!(
        serde_json::to_value(&recomputed).unwrap(),
        serde_json::Value::Array(stored.clone())
    );
    for (s, pages) in stored.iter().zip([500, 3000]) {
        assert_eq!(s["knobs"]["pages_to_scan"], pages);
        assert!(dir.join(s["recording"].as_str().unwrap()).exists());
        // Both settle with the same saving: 750 identical pages, one copy kept.
        let saved = s["saved_mib_end"].as_f64().unwrap();
        assert!((saved - 750.0 * 4096.0 / 1048576.0).abs() < 0.01, "{s}");
        assert_eq!(s["ended_by"], "settled", "{s}");
        // The kept recording agrees with the kernel on what it saw.
        let rec = json(&dir.join(s["recording"].as_str().unwrap()));
        assert_eq!(rec["meta"]["knobs"]["pages_to_scan"], pages.to_string());
    }
    assert_eq!(
        std::fs::read_to_string(dir.join("summary.csv"))
            .unwrap()
            .lines()
            .count(),
        3
    );
    assert!(dir.join("saved-vs-cpu.svg").exists());
    assert!(dir.join("settle-vs-pages-to-scan.svg").exists());
    assert!(pids_named("ksm-procs-").is_empty());
    session.assert_knobs_restored();
}

//! `ksm-trace compare` on real recordings: two runs of one configuration tell nothing apart
//! (no false verdicts), pages_to_scan 1000 against 4000 makes full scans about 4× shorter with
//! the verdict "better", and different workloads are refused in one line.
mod common;

use common::*;

tests! {
    compare_tells_what_changed_and_nothing_else: Root,
}

const WORKLOAD: &str = "procs:2,pages=6000,dup=0.5";

fn record_with(session: &KsmSession, name: &str, pages_to_scan: &str) -> std::path::PathBuf {
    let out = session.path(name);
    let out_text = out.to_str().unwrap();
    ksm_trace_ok(&[
        "record",
        "--workload",
        WORKLOAD,
        "--pages-to-scan",
        pages_to_scan,
        "--sleep-ms",
        "20",
        "--duration",
        "10s",
        "-q",
        "-o",
        out_text,
    ]);
    out
}

fn compare_json(args: &[&std::path::Path]) -> serde_json::Value {
    let mut all: Vec<&str> = vec!["compare", "--json"];
    all.extend(args.iter().map(|p| p.to_str().unwrap()));
    ksm_trace_json(&all)
}

fn verdicts(c: &serde_json::Value) -> Vec<(String, String)> {
    c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .map(|r| {
            (
                r["name"].as_str().unwrap().to_owned(),
                r["verdict"].as_str().unwrap().to_owned(),
            )
        })
        .collect()
}

fn compare_tells_what_changed_and_nothing_else() {
    let session = KsmSession::start("compare");
    let a1 = record_with(&session, "a1.json", "1000");
    let a2 = record_with(&session, "a2.json", "1000");
    let b = record_with(&session, "b.json", "4000");

    // The same configuration twice, each way round: nothing told apart.
    for (x, y) in [(&a1, &a2), (&a2, &a1)] {
        let c = compare_json(&[x, y]);
        assert!(
            c["differs"].as_object().unwrap().is_empty(),
            "{}",
            c["differs"]
        );
        for (name, verdict) in verdicts(&c) {
            assert_eq!(verdict, "cannot-tell", "{name}: {c}");
        }
    }

    // pages_to_scan 4000 against 1000: the knob is named, full scans take about a quarter.
    let c = compare_json(&[&a1, &b]);
    assert_eq!(
        c["differs"]["knob pages_to_scan"],
        serde_json::json!(["1000", "4000"])
    );
    let row = c["rows"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["name"] == "full-scan time")
        .unwrap();
    let (ta, tb) = (row["a"].as_f64().unwrap(), row["b"].as_f64().unwrap());
    assert!(
        (2.5..=6.0).contains(&(ta / tb)),
        "{ta} ms vs {tb} ms: {row}"
    );
    assert_eq!(row["verdict"], "better", "{row}");
    let text = ksm_trace_stdout(&["compare", a1.to_str().unwrap(), b.to_str().unwrap()]);
    assert!(text.contains("knob pages_to_scan: 1000 → 4000"), "{text}");

    // Different workloads: refused in one line, unless --force.
    let other = session.path("other.json");
    ksm_trace_ok(&[
        "record",
        "--workload",
        "procs:1,pages=2000",
        "--duration",
        "3s",
        "-q",
        "-o",
        other.to_str().unwrap(),
    ]);
    assert_clean_error(
        &["compare", a1.to_str().unwrap(), other.to_str().unwrap()],
        "different workloads",
    );
    ksm_trace_ok(&[
        "compare",
        "--force",
        a1.to_str().unwrap(),
        other.to_str().unwrap(),
    ]);
    // Repeated runs per side: judged by the runs.
    let c = ksm_trace_json(&[
        "compare",
        "--json",
        a1.to_str().unwrap(),
        a2.to_str().unwrap(),
        "--",
        b.to_str().unwrap(),
        b.to_str().unwrap(),
    ]);
    assert!(
        c["unit"]
            .as_str()
            .unwrap()
            .starts_with("runs (2 against 2)"),
        "{c}"
    );
    session.assert_knobs_restored();
}

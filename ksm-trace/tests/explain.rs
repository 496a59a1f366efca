//! `ksm-trace explain` against processes the test builds, each holding memory that is not
//! merged for one known reason — not opted in, a shared mapping (MADV_MERGEABLE succeeds, KSM
//! never merges it), unique content, content identical to another process's while ksmd is
//! stopped, zero-filled pages with use_zero_pages off — counted exactly; then ksmd merges what
//! it can and the same pages move to "merged". Then a host "too large to read whole": a random
//! sample whose 95 % intervals must hold what the test built, and `--full` that counts it exactly.
mod common;

use std::{os::unix::process::CommandExt as _, process::Command, time::Duration};

use common::*;
use serde_json::{Value, json};

tests! {
    explain_counts_each_constructed_reason_exactly: Root,
    explain_samples_with_intervals_that_hold_what_was_built: Root,
    explain_refuses_without_root: Root,
}

fn spec(pages: u64, dup: f64, zero: f64, mode: &str, shared: bool) -> Value {
    json!({
        "count": 1, "pages": pages, "dup": dup, "zero": zero, "rounds": 1, "wait": 600.0,
        "write": 0.0, "mode": mode, "thp": false, "shared": shared,
    })
}

fn funnel(e: &Value, pid: u32) -> Value {
    e["groups"]
        .as_array()
        .unwrap()
        .iter()
        .find(|g| g["pids"].as_array().unwrap().contains(&json!(pid)))
        .unwrap_or_else(|| panic!("no funnel for {pid}: {e}"))
        .clone()
}

/// Every opted-in page is merged or under one reason (estimated ones too: they are scaled to add
/// up).
fn assert_adds_up(f: &Value) {
    let under: u64 = f["not_merged"]
        .as_object()
        .unwrap()
        .values()
        .map(|v| v.as_u64().unwrap())
        .sum();
    assert_eq!(
        f["merged"].as_u64().unwrap() + under,
        f["opted_in"].as_u64().unwrap(),
        "the funnel adds up: {f}"
    );
}

/// The same explain, as text.
fn as_text(json_args: &[&str]) -> String {
    let args: Vec<&str> = json_args
        .iter()
        .filter(|a| **a != "--json")
        .copied()
        .collect();
    ksm_trace_stdout(&args)
}

fn reason(f: &Value, key: &str) -> u64 {
    f["not_merged"][key].as_u64().unwrap_or(0)
}

fn explain_counts_each_constructed_reason_exactly() {
    let session = KsmSession::start("explain");
    set_knob("use_zero_pages", "0");
    let nonce = std::process::id() as u64 * 2_750_159;
    let off = TestProcess::start_spec(0, nonce + 1, spec(400, 0.0, 0.0, "off", false));
    let shared = TestProcess::start_spec(1, nonce + 2, spec(300, 0.0, 0.0, "madvise", true));
    let unique = TestProcess::start_spec(2, nonce + 3, spec(500, 0.0, 0.0, "madvise", false));
    let pair =
        [3, 4].map(|i| TestProcess::start_spec(i, nonce, spec(300, 1.0, 0.0, "madvise", false)));
    let zero = TestProcess::start_spec(5, nonce + 5, spec(200, 0.0, 1.0, "madvise", false));
    let all = [&off, &shared, &unique, &pair[0], &pair[1], &zero];
    let pids: Vec<String> = all.iter().map(|p| p.pid().to_string()).collect();
    let mut args = vec!["explain", "--json"];
    for pid in &pids {
        args.extend(["--pid", pid.as_str()]);
    }
    let knobs_before = ["run", "pages_to_scan", "sleep_millisecs", "use_zero_pages"].map(knob);

    // ksmd stopped: nothing merges, each reason holds its pages.
    let e = ksm_trace_json(&args);
    assert_eq!(e["run"], 0, "{e}");
    let f = funnel(&e, off.pid());
    assert_eq!(f["opted_in"], 0, "{f}");
    assert!(f["not_opted_in"].as_u64().unwrap() >= 400, "{f}");
    let f = funnel(&e, shared.pid());
    assert_eq!(
        f["opted_in"], 0,
        "MADV_MERGEABLE on a shared mapping sets nothing: {f}"
    );
    assert!(f["shared_mapping"].as_u64().unwrap() >= 300, "{f}");
    assert!(
        f["never_merged_vmas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v[1] == 300),
        "the 300-page shared mapping is named: {f}"
    );
    let f = funnel(&e, unique.pid());
    assert_eq!(
        (f["opted_in"].as_u64(), reason(&f, "unique")),
        (Some(500), 500),
        "{f}"
    );
    // Its program's text is page cache of a mapped file: named, never merged.
    assert!(f["file_backed"].as_u64().unwrap() > 0, "{f}");
    let binary = std::fs::canonicalize(bin()).unwrap();
    assert!(
        f["never_merged_vmas"]
            .as_array()
            .unwrap()
            .iter()
            .any(|v| v[0].as_str().unwrap().contains(binary.to_str().unwrap())),
        "the worker's binary is named: {f}"
    );
    for p in &pair {
        let f = funnel(&e, p.pid());
        assert_eq!(f["opted_in"], 300, "{f}");
        assert_eq!(reason(&f, "identical_not_merged"), 300, "{f}");
    }
    let f = funnel(&e, zero.pid());
    assert_eq!(
        (f["opted_in"].as_u64(), reason(&f, "zero_filled")),
        (Some(200), 200),
        "{f}"
    );
    // The funnel adds up: every opted-in page is merged or under one reason.
    for p in [&unique, &pair[0], &pair[1], &zero] {
        assert_adds_up(&funnel(&e, p.pid()));
    }
    // Merging all that: the pair's 300 pages once each, the 200 zero-filled pages into one.
    assert_eq!(e["would_save_pages"], 300 + 199, "{e}");
    assert!(e["reading"]["pages_read"].as_u64().unwrap() >= 1300, "{e}");
    let text = as_text(&args);
    assert!(text.contains("KSM is OFF (run=0)"), "{text}");
    assert!(text.contains("KSM never merges them"), "{text}");

    // ksmd merges what it can: the same pages are now merged, the unique ones stay unique.
    let merged = [pair[0].pid(), pair[1].pid()];
    assert!(
        run_ksmd_until("2000", "10", Duration::from_secs(30), || {
            all_merging(&merged, 300) && ksm_merging_pages(zero.pid()) == 200
        }),
        "ksmd merged the pair and the zero-filled pages"
    );
    let e = ksm_trace_json(&args);
    for p in &pair {
        let f = funnel(&e, p.pid());
        assert_eq!(
            (f["merged"].as_u64(), reason(&f, "identical_not_merged")),
            (Some(300), 0),
            "{f}"
        );
    }
    assert_eq!(funnel(&e, zero.pid())["merged"], 200);
    assert_eq!(reason(&funnel(&e, unique.pid()), "unique"), 500);
    assert_eq!(e["would_save_pages"], 0, "{e}");
    // Reading changed nothing but what the test itself did (ksmd was run by the test).
    KsmSession::reset_knobs();
    assert_eq!(
        knobs_before,
        ["run", "pages_to_scan", "sleep_millisecs", "use_zero_pages"].map(knob)
    );
    drop(pair);
    drop((off, shared, unique, zero));
    drop(session);
}

fn explain_samples_with_intervals_that_hold_what_was_built() {
    let session = KsmSession::start("explain-sample");
    set_knob("use_zero_pages", "0");
    let nonce = std::process::id() as u64 * 3_141_593;
    // Two processes ksmd merges: their 600 contents become KSM pages. And 600 zero-filled
    // pages of a third: one content mapped more than max_page_sharing (256) times takes
    // 600 / 256 → 3 KSM pages, 2 more than it has contents.
    let merged =
        [0, 1].map(|i| TestProcess::start_spec(i, nonce, spec(600, 1.0, 0.0, "madvise", false)));
    let merged_pids = merged.each_ref().map(TestProcess::pid);
    let crowd = TestProcess::start_spec(7, nonce + 4, spec(600, 0.0, 1.0, "madvise", false));
    assert_eq!(knob("max_page_sharing"), "256");
    assert!(
        run_ksmd_until("2000", "10", Duration::from_secs(30), || all_merging(
            &merged_pids,
            600
        ) && ksm_merging_pages(crowd.pid())
            == 600),
        "ksmd merged the pair and the zero-filled pages"
    );
    // Then, with ksmd stopped: 600 pages identical to those KSM pages (and 900 unique), 3000
    // unique pages, 1000 zero-filled, and two processes whose 1000 pages are each other's.
    let late = TestProcess::start_spec(2, nonce, spec(1500, 1.0, 0.0, "madvise", false));
    let unique = TestProcess::start_spec(3, nonce + 1, spec(3000, 0.0, 0.0, "madvise", false));
    let zero = TestProcess::start_spec(4, nonce + 2, spec(1000, 0.0, 1.0, "madvise", false));
    let twins = [5, 6]
        .map(|i| TestProcess::start_spec(i, nonce + 3, spec(1000, 1.0, 0.0, "madvise", false)));
    let truth: Vec<(u32, Vec<(&str, u64)>)> = vec![
        (
            late.pid(),
            vec![("identical_to_merged", 600), ("unique", 900)],
        ),
        (unique.pid(), vec![("unique", 3000)]),
        (zero.pid(), vec![("zero_filled", 1000)]),
        (twins[0].pid(), vec![("identical_not_merged", 1000)]),
        (twins[1].pid(), vec![("identical_not_merged", 1000)]),
    ];
    let pids: Vec<String> = merged_pids
        .iter()
        .chain([crowd.pid()].iter())
        .chain(truth.iter().map(|(p, _)| p))
        .map(u32::to_string)
        .collect();
    let mut args = vec!["explain", "--json"];
    for pid in &pids {
        args.extend(["--pid", pid.as_str()]);
    }
    // A budget of every KSM page and 30 % of the 7500 unmerged ones.
    let ksm_pages = knob_u64("pages_shared");
    assert!(
        ksm_pages <= 2250,
        "{ksm_pages} KSM pages on the machine: too many for this test's budget"
    );
    let budget = (ksm_pages + 2250).to_string();
    let mut sampled = args.clone();
    sampled.extend(["--max-pages", budget.as_str(), "--seed", "7"]);

    let e = ksm_trace_json(&sampled);
    let plan = &e["reading"]["plan"];
    assert_eq!(plan["ksm_rate"], 1.0, "{e}");
    let rate = plan["rate"].as_f64().unwrap();
    assert!(rate > 0.2 && rate < 0.4, "{e}");
    assert_eq!(e["reading"]["pages_eligible"], 7500, "{e}");
    for pid in merged_pids {
        assert_eq!(funnel(&e, pid)["merged"], 600, "{e}");
    }
    for (pid, built) in &truth {
        let f = funnel(&e, *pid);
        assert_adds_up(&f);
        // Every interval holds what was built (0 where nothing of that kind was built).
        let intervals = f["not_merged_95"].as_object().unwrap();
        assert!(!intervals.is_empty(), "{f}");
        for (key, interval) in intervals {
            let want = built.iter().find(|(k, _)| k == key).map_or(0, |(_, n)| *n);
            let (lo, hi) = (interval[0].as_u64().unwrap(), interval[1].as_u64().unwrap());
            assert!(
                lo <= want && want <= hi,
                "{key}: {want} not in {lo}..{hi}: {f}"
            );
        }
        for (key, n) in built {
            assert!(
                intervals.contains_key(*key),
                "{key} ({n}) is estimated: {f}"
            );
        }
    }
    let text = as_text(&sampled);
    assert!(
        text.contains("uniform random sample") && text.contains("seed 7"),
        "{text}"
    );
    assert!(text.contains("[95 %: "), "{text}");

    // --full: every page read, each reason counted exactly.
    let mut full = args.clone();
    full.push("--full");
    let e = ksm_trace_json(&full);
    assert_eq!(e["reading"]["plan"]["rate"], 1.0, "{e}");
    assert_eq!(e["reading"]["pages_read"], 7500, "{e}");
    for (pid, built) in &truth {
        let f = funnel(&e, *pid);
        assert!(f.get("not_merged_95").is_none(), "{f}");
        for (key, n) in built {
            assert_eq!(reason(&f, key), *n, "{key}: {f}");
        }
    }
    // The zero-filled pages have a KSM page of their content already: each would save one.
    assert_eq!(e["would_save_pages"], 600 + 1000 + 1000, "{e}");
    // max_page_sharing: the crowd's content is on 3 KSM pages, 2 beyond the first, and the
    // kernel's own count of such pages (machine-wide) holds them.
    assert_eq!(e["reading"]["ksm_pages_duplicated"], 2, "{e}");
    assert!(
        e["ksm_pages_over_max_sharing"].as_u64().unwrap() >= 2,
        "{e}"
    );
    let text = ksm_trace_stdout(&["explain", "--full", "--pid", &crowd.pid().to_string()]);
    assert!(
        text.contains("max_page_sharing=256 times takes another KSM page"),
        "{text}"
    );
    drop((merged, crowd, late, unique, zero, twins));
    drop(session);
}

fn explain_refuses_without_root() {
    use std::os::unix::fs::PermissionsExt as _;
    // A copy nobody may run (the build tree may sit where nobody can reach it).
    let dir = std::env::temp_dir().join(format!("ksm-trace-test-nonroot-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o755)).unwrap();
    let exe = dir.join("ksm-trace");
    std::fs::copy(bin(), &exe).unwrap();
    std::fs::set_permissions(&exe, std::fs::Permissions::from_mode(0o755)).unwrap();
    let out = Command::new(&exe)
        .args(["explain"])
        .uid(65534)
        .gid(65534)
        .output();
    std::fs::remove_dir_all(&dir).unwrap();
    let out = out.unwrap();
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    assert!(stderr.contains("run it as root"), "{stderr}");
}

//! `ksm-trace sharing --now` against a construction the test builds itself: three cgroups
//! with chosen overlaps (A∩B share one set of identical pages, B∩C another, C also holds a
//! process with nothing to share), merged by the real ksmd; the matrix must equal the
//! construction exactly, by process and by cgroup, and across trust domains.
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;

/// The cgroup v2 hierarchy's mount point.
fn cgroup2_root() -> Option<PathBuf> {
    fs::read_to_string("/proc/self/mounts")
        .ok()?
        .lines()
        .find(|l| l.split_whitespace().nth(2) == Some("cgroup2"))
        .and_then(|l| l.split_whitespace().nth(1))
        .map(PathBuf::from)
}

/// A cgroup made for the test, removed (once empty) on drop.
struct Cgroup {
    dir: PathBuf,
    /// Its path as /proc/<pid>/cgroup shows it.
    path: String,
}

impl Cgroup {
    fn new(root: &std::path::Path, name: &str) -> Self {
        let dir = root.join(name);
        fs::create_dir_all(&dir).unwrap();
        Self {
            dir,
            path: format!("/{name}"),
        }
    }

    fn add(&self, pid: u32) {
        fs::write(self.dir.join("cgroup.procs"), pid.to_string()).unwrap();
    }
}

impl Drop for Cgroup {
    fn drop(&mut self) {
        let _ = wait_until(Duration::from_secs(5), || fs::remove_dir(&self.dir).is_ok());
    }
}

fn sharing(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sharing", "--now", "--json"];
    all.extend_from_slice(args);
    let out = ksm_trace(&all);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()["matrix"].clone()
}

/// The test session and the cgroup2 mount, or None when the test is skipped (not root, or no
/// cgroup2 mount: said on stderr).
fn session_with_cgroups(name: &str) -> Option<(KsmSession, PathBuf)> {
    let session = KsmSession::try_start(name)?;
    match cgroup2_root() {
        Some(root) => Some((session, root)),
        None => {
            eprintln!("{name}: skipped: no cgroup2 mount");
            None
        }
    }
}

/// Three cgroups: A holds a1; B holds b1 and b2; C holds c1 and c2. 1000 pages each, half
/// identical across a pair: a1 with b1, b2 with c1; c2 shares with no one.
struct Construction {
    cgroups: [Cgroup; 3],
    processes: [TestProcess; 5],
}

impl Construction {
    fn build(root: &Path) -> Self {
        let tag = std::process::id();
        let cgroups =
            ["a", "b", "c"].map(|n| Cgroup::new(root, &format!("ksm-trace-test-{n}-{tag}")));
        let (n1, n2, n3) = (
            tag as u64 * 7_919,
            tag as u64 * 104_729,
            tag as u64 * 1_299_709,
        );
        let processes = [(0, n1), (1, n1), (2, n2), (3, n2), (4, n3)]
            .map(|(i, nonce)| TestProcess::start_for(i, 1000, 0.5, nonce, 600.0));
        for (process, cgroup) in processes.iter().zip([0, 1, 1, 2, 2]) {
            cgroups[cgroup].add(process.pid());
        }
        Self { cgroups, processes }
    }
}

#[test]
fn record_by_cgroup_sums_the_construction_exactly() {
    let Some((session, root)) = session_with_cgroups("record-by-cgroup") else {
        return;
    };
    let built = Construction::build(&root);
    let pids: Vec<String> = built
        .processes
        .iter()
        .map(|p| p.pid().to_string())
        .collect();
    let mut args = vec![
        "--pages-to-scan",
        "2000",
        "--sleep-ms",
        "10",
        "--duration",
        "12s",
    ];
    for p in &pids {
        args.extend(["--pid", p.as_str()]);
    }
    let (_, rep) = record(&session, &args);
    let by_cgroup = rep["by_cgroup"].as_array().unwrap();
    let group = |cgroup: &Cgroup| {
        by_cgroup
            .iter()
            .find(|g| g["name"] == cgroup.path.as_str())
            .unwrap_or_else(|| panic!("{} not in {by_cgroup:?}", cgroup.path))
    };
    // (processes, merges, ksm_merging_pages at the end) of each cgroup, as constructed.
    for (cgroup, want) in built
        .cgroups
        .iter()
        .zip([(1, 500, 500), (2, 1000, 1000), (2, 500, 500)])
    {
        let g = group(cgroup);
        let got = (
            g["processes"].as_u64().unwrap(),
            g["merges"].as_u64().unwrap(),
            g["merging_pages_end"].as_u64().unwrap(),
        );
        assert_eq!(got, want, "{}", cgroup.path);
    }
    assert_eq!(by_cgroup.len(), 3, "{by_cgroup:?}");
    // The text table is the same sums.
    let text = ksm_trace(&[
        "report",
        session.path("rec.json").to_str().unwrap(),
        "--by",
        "cgroup",
    ]);
    let text = String::from_utf8_lossy(&text.stdout);
    let row = |cgroup: &Cgroup| {
        text.lines()
            .find(|l| l.trim_start().starts_with(cgroup.path.as_str()))
            .unwrap_or_else(|| panic!("no row for {} in\n{text}", cgroup.path))
            .split_whitespace()
            .skip(1)
            .take(2)
            .collect::<Vec<_>>()
            .join(" ")
    };
    assert_eq!(row(&built.cgroups[1]), "2 1000", "{text}");

    // The recording's sharing matrix: traced from the merge events, reconciled with the
    // snapshot taken at the window's end — and the snapshot itself — equal the construction.
    let rec = session.path("rec.json");
    let from_file = |extra: &[&str]| {
        let mut args = vec!["sharing", rec.to_str().unwrap(), "--by", "cgroup", "--json"];
        args.extend_from_slice(extra);
        let out = ksm_trace(&args);
        assert!(
            out.status.success(),
            "{}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice::<serde_json::Value>(&out.stdout).unwrap()
    };
    let traced = from_file(&[]);
    assert_eq!(traced["left_silently"], 0, "{traced}");
    assert_eq!(traced["merged_before"], 0, "{traced}");
    assert_eq!(traced["traced_pages"], 1000, "{traced}");
    let snapshot = from_file(&["--snapshot"]);
    for m in [&traced["matrix"], &snapshot["matrix"]] {
        assert_constructed(m, &built);
    }
    session.assert_knobs_restored();
}

/// The matrix by cgroup of the construction: 1000 KSM pages, each mapped by two processes;
/// A∩B 500 pages, B∩C 500, nothing else.
fn assert_constructed(by_cgroup: &serde_json::Value, built: &Construction) {
    let [a, b, c] = &built.cgroups;
    assert_eq!(by_cgroup["ksm_pages"], 1000, "{by_cgroup}");
    assert_eq!(
        by_cgroup["pages_by_sharers"],
        serde_json::json!({"2": 1000})
    );
    assert_eq!(pair(by_cgroup, &a.path, &b.path), 500, "{by_cgroup}");
    assert_eq!(pair(by_cgroup, &b.path, &c.path), 500);
    assert_eq!(pair(by_cgroup, &a.path, &c.path), 0);
    assert_eq!(by_cgroup["pairs"].as_array().unwrap().len(), 2);
}

/// Pages both `x` and `y` map, from a matrix's pairs.
fn pair(m: &serde_json::Value, x: &str, y: &str) -> u64 {
    m["pairs"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p[0] == x && p[1] == y)
        .map_or(0, |p| p[2].as_u64().unwrap())
}

#[test]
fn snapshot_matrix_equals_the_construction() {
    let Some((session, root)) = session_with_cgroups("sharing") else {
        return;
    };
    let built = Construction::build(&root);
    let [a1, b1, b2, c1, c2] = &built.processes;
    let [a, b, c] = &built.cgroups;
    set_knob("pages_to_scan", "2000");
    set_knob("sleep_millisecs", "10");
    set_knob("run", "1");
    let merged = [a1, b1, b2, c1];
    assert!(
        wait_until(Duration::from_secs(30), || merged
            .iter()
            .all(|p| ksm_merging_pages(p.pid()) == 500)),
        "the constructed pairs merged"
    );
    set_knob("run", "0");
    assert_eq!(ksm_merging_pages(c2.pid()), 0);
    let knobs_before: Vec<String> = ["run", "pages_to_scan", "sleep_millisecs"]
        .iter()
        .map(|k| knob(k))
        .collect();

    let pids: Vec<String> = [a1, b1, b2, c1, c2]
        .iter()
        .map(|p| p.pid().to_string())
        .collect();
    let mut pid_args = Vec::new();
    for p in &pids {
        pid_args.extend(["--pid", p.as_str()]);
    }
    let svg = session.path("sharing.svg");
    let by_cgroup = sharing(
        &[
            &["--by", "cgroup", "--svg", svg.to_str().unwrap()][..],
            &pid_args,
        ]
        .concat(),
    );
    let picture = fs::read_to_string(&svg).unwrap();
    assert!(
        picture.contains(&a.path) && picture.contains(&c.path),
        "heatmap labels"
    );
    assert_constructed(&by_cgroup, &built);

    let by_process = sharing(&pid_args);
    let name = |p: &TestProcess, i: u32| format!("ksm-procs-{i}[{}]", p.pid());
    assert_eq!(
        pair(&by_process, &name(a1, 0), &name(b1, 1)),
        500,
        "{by_process}"
    );
    assert_eq!(pair(&by_process, &name(b2, 2), &name(c1, 3)), 500);
    assert_eq!(by_process["pairs"].as_array().unwrap().len(), 2);
    // c2 maps no KSM page: it is in no group at all.
    assert!(
        !by_process["groups"]
            .to_string()
            .contains(&c2.pid().to_string())
    );

    // Trust domains A and B: only the A∩B pages cross a boundary (C is in neither).
    let domains = format!("{},{}", a.path, b.path);
    let exposed = sharing(&[&["--by", "cgroup", "--domains", &domains][..], &pid_args].concat());
    assert_eq!(exposed["cross_domain_pages"], 500, "{exposed}");

    // A snapshot reads; it changes no knob and no page.
    let knobs_after: Vec<String> = ["run", "pages_to_scan", "sleep_millisecs"]
        .iter()
        .map(|k| knob(k))
        .collect();
    assert_eq!(knobs_before, knobs_after);
    assert!(merged.iter().all(|p| ksm_merging_pages(p.pid()) == 500));
    drop(built);
    drop(session);
}

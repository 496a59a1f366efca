//! `ksm-trace sharing --now` against a construction the test builds itself: three cgroups
//! with chosen overlaps (A∩B share one set of identical pages, B∩C another, C also holds a
//! process with nothing to share), merged by the real ksmd; the matrix must equal the
//! construction exactly, by process and by cgroup, and across trust domains.
mod common;

use std::{fs, path::PathBuf, time::Duration};

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

#[test]
fn snapshot_matrix_equals_the_construction() {
    let Some(session) = KsmSession::try_start("sharing") else {
        return;
    };
    let Some(root) = cgroup2_root() else {
        eprintln!("snapshot_matrix_equals_the_construction: skipped: no cgroup2 mount");
        return;
    };
    let tag = std::process::id();
    let (a, b, c) = (
        Cgroup::new(&root, &format!("ksm-trace-test-a-{tag}")),
        Cgroup::new(&root, &format!("ksm-trace-test-b-{tag}")),
        Cgroup::new(&root, &format!("ksm-trace-test-c-{tag}")),
    );
    let (n1, n2, n3) = (
        tag as u64 * 7_919,
        tag as u64 * 104_729,
        tag as u64 * 1_299_709,
    );
    // 1000 pages each, half identical to the worker with the same nonce.
    let a1 = TestProcess::start_for(0, 1000, 0.5, n1, 600.0);
    let b1 = TestProcess::start_for(1, 1000, 0.5, n1, 600.0);
    let b2 = TestProcess::start_for(2, 1000, 0.5, n2, 600.0);
    let c1 = TestProcess::start_for(3, 1000, 0.5, n2, 600.0);
    let c2 = TestProcess::start_for(4, 1000, 0.5, n3, 600.0); // shares with no one
    a.add(a1.pid());
    b.add(b1.pid());
    b.add(b2.pid());
    c.add(c1.pid());
    c.add(c2.pid());
    set_knob("pages_to_scan", "2000");
    set_knob("sleep_millisecs", "10");
    set_knob("run", "1");
    let merged = [&a1, &b1, &b2, &c1];
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

    let pids: Vec<String> = [&a1, &b1, &b2, &c1, &c2]
        .iter()
        .map(|p| p.pid().to_string())
        .collect();
    let mut pid_args = Vec::new();
    for p in &pids {
        pid_args.extend(["--pid", p.as_str()]);
    }
    let pair = |m: &serde_json::Value, x: &str, y: &str| {
        m["pairs"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p[0] == x && p[1] == y)
            .map_or(0, |p| p[2].as_u64().unwrap())
    };

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
    assert_eq!(by_cgroup["ksm_pages"], 1000, "{by_cgroup}");
    assert_eq!(
        by_cgroup["pages_by_sharers"],
        serde_json::json!({"2": 1000})
    );
    assert_eq!(pair(&by_cgroup, &a.path, &b.path), 500, "{by_cgroup}");
    assert_eq!(pair(&by_cgroup, &b.path, &c.path), 500);
    assert_eq!(pair(&by_cgroup, &a.path, &c.path), 0);
    assert_eq!(by_cgroup["pairs"].as_array().unwrap().len(), 2);

    let by_process = sharing(&pid_args);
    let name = |p: &TestProcess, i: u32| format!("ksm-procs-{i}[{}]", p.pid());
    assert_eq!(
        pair(&by_process, &name(&a1, 0), &name(&b1, 1)),
        500,
        "{by_process}"
    );
    assert_eq!(pair(&by_process, &name(&b2, 2), &name(&c1, 3)), 500);
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
    drop((a1, b1, b2, c1, c2));
    drop((a, b, c));
    drop(session);
}

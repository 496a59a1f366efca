//! `ksm-trace sharing --now` against a construction the test builds itself: three cgroups
//! with chosen overlaps (A∩B share one set of identical pages, B∩C another, C also holds a
//! process with nothing to share), merged by the real ksmd; the matrix must equal the
//! construction exactly, by process and by cgroup, and across trust domains. And what each
//! process saves and owes: pages with 2, 3 and 4 sharers, split so the savings sum to
//! pages_sharing exactly, and a process that writes its merged pages allocating what it owed.
mod common;

use std::{
    fs,
    path::{Path, PathBuf},
    time::Duration,
};

use common::*;

tests! {
    record_by_cgroup_sums_the_construction_exactly: RootAnd(cgroup2_mounted),
    snapshot_matrix_equals_the_construction: RootAnd(cgroup2_mounted),
    savings_sum_to_pages_sharing_and_a_writer_allocates_what_it_owes: Root,
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

/// The matrix of `ksm-trace sharing --now --json ARGS`.
fn sharing(args: &[&str]) -> serde_json::Value {
    let mut all = vec!["sharing", "--now", "--json"];
    all.extend_from_slice(args);
    ksm_trace_json(&all)["matrix"].take()
}

/// The need of the tests besides root: a cgroup2 mount.
fn cgroup2_mounted() -> Result<(), String> {
    mount_point("cgroup2")
        .map(drop)
        .ok_or_else(|| "needs a cgroup2 mount".to_owned())
}

/// The test session and the cgroup2 mount.
fn session_with_cgroups(name: &str) -> (KsmSession, PathBuf) {
    let session = KsmSession::start(name);
    let root = mount_point("cgroup2").expect("a cgroup2 mount");
    (session, root)
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

    /// `--pid PID` for each of its processes.
    fn pid_args(&self) -> Vec<String> {
        pid_args(self.processes.iter().map(TestProcess::pid))
    }
}

fn record_by_cgroup_sums_the_construction_exactly() {
    let (session, root) = session_with_cgroups("record-by-cgroup");
    let built = Construction::build(&root);
    let pids = built.pid_args();
    let mut args = vec![
        "--pages-to-scan",
        "2000",
        "--sleep-ms",
        "10",
        "--duration",
        "12s",
    ];
    args.extend(pids.iter().map(String::as_str));
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
    let rec = session.path("rec.json");
    let text = ksm_trace_stdout(&["report", rec.to_str().unwrap(), "--by", "cgroup"]);
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
    let from_file = |extra: &[&str]| {
        let mut args = vec!["sharing", rec.to_str().unwrap(), "--by", "cgroup", "--json"];
        args.extend_from_slice(extra);
        ksm_trace_json(&args)
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

fn snapshot_matrix_equals_the_construction() {
    let (session, root) = session_with_cgroups("sharing");
    let built = Construction::build(&root);
    let [a1, b1, b2, c1, c2] = &built.processes;
    let [a, b, c] = &built.cgroups;
    let merged = [a1, b1, b2, c1].map(TestProcess::pid);
    assert!(
        run_ksmd_until("2000", "10", Duration::from_secs(30), || {
            all_merging(&merged, 500)
        }),
        "the constructed pairs merged"
    );
    assert_eq!(ksm_merging_pages(c2.pid()), 0);
    let knobs = || ["run", "pages_to_scan", "sleep_millisecs"].map(knob);
    let knobs_before = knobs();

    let pids = built.pid_args();
    let pid_args: Vec<&str> = pids.iter().map(String::as_str).collect();
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
    assert_eq!(knobs_before, knobs());
    assert!(all_merging(&merged, 500));
    drop(built);
    drop(session);
}

fn savings_sum_to_pages_sharing_and_a_writer_allocates_what_it_owes() {
    let session = KsmSession::start("savings");
    // Three groups of 2, 3 and 4 processes; 4000 pages each, the 2000 identical ones shared
    // within the group only: KSM pages with 2, 3 and 4 sharers.
    let tag = std::process::id() as u64;
    let mut processes = Vec::new();
    let mut index = 0;
    for (sharers, nonce) in [(2, tag * 7_919), (3, tag * 104_729), (4, tag * 1_299_709)] {
        for _ in 0..sharers {
            processes.push((
                sharers,
                TestProcess::start_for(index, 4000, 0.5, nonce, 600.0),
            ));
            index += 1;
        }
    }
    let pids: Vec<u32> = processes.iter().map(|(_, p)| p.pid()).collect();
    assert!(
        run_ksmd_until("4000", "10", Duration::from_secs(60), || all_merging(
            &pids, 2000
        )),
        "the groups merged"
    );
    let knobs = || ["run", "pages_to_scan", "sleep_millisecs"].map(knob);
    let knobs_before = knobs();
    // The split (every process KSM tracks, so the totals are the machine's).
    let out = ksm_trace_json(&["sharing", "--now", "--json"]);
    let s = &out["savings"];
    let f = |v: &serde_json::Value| v.as_f64().unwrap_or_else(|| panic!("not a number: {v}"));
    let pages_sharing = f(&s["pages_sharing"]);
    assert!(f(&s["stale_pages"]).abs() < 1e-6, "{s}");
    assert!((f(&s["saved_pages"]) - pages_sharing).abs() < 1e-6, "{s}");
    let row = |pid: u32| {
        s["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("no savings row for {pid}: {s}"))
            .clone()
    };
    let mut ours = 0.0;
    for (sharers, p) in &processes {
        let r = row(p.pid());
        let want = 2000.0 * (*sharers as f64 - 1.0) / *sharers as f64;
        assert!(
            (f(&r["saved_pages"]) - want).abs() < 1e-6,
            "{sharers} sharers: {r}"
        );
        assert_eq!(r["ksm_mappings"], 2000, "{r}");
        assert_eq!(r["owes_pages"], 2000, "{r}");
        ours += f(&r["saved_pages"]);
    }
    assert!((ours - 2000.0 * (1.0 + 2.0 + 3.0)).abs() < 1e-6);
    // With zero pages and rmap items, general_profit (each process's bytes are rounded once).
    let processes_n = s["processes"].as_array().unwrap().len() as f64;
    assert!(
        (f(&s["saved_bytes"]) - f(&s["general_profit"])).abs() <= processes_n,
        "{s}"
    );
    // The kernel's per-process profits credit each merged mapping a whole page: over ours by
    // 9 × 2000 mappings − 12000 pages saved.
    let kernel_over: f64 = processes
        .iter()
        .map(|(_, p)| f(&row(p.pid())["kernel_profit_bytes"]) - f(&row(p.pid())["saved_bytes"]))
        .sum();
    assert!(
        (kernel_over - 6000.0 * 4096.0).abs() <= 9.0,
        "{kernel_over}"
    );
    assert_eq!(f(&s["storm_pages"]), pages_sharing + zero_pages_of(s));

    // One of the four-sharer processes writes every merged page: the kernel copies what it owed.
    let (_, writer) = processes.last().unwrap();
    let owed = row(writer.pid())["owes_pages"].as_u64().unwrap();
    let (cow_before, free_before) = (vmstat("cow_ksm"), free_pages());
    let written = write_every_ksm_page(writer.pid());
    let (cow_after, free_after) = (vmstat("cow_ksm"), free_pages());
    assert_eq!(written.len() as u64, owed, "KSM pages found in the writer");
    assert_eq!(cow_after - cow_before, owed, "copies made (cow_ksm)");
    // Each written address now maps a page of its own, new: exactly what it owed.
    let map = ksm_trace::kernel::pagemap::Pagemap::open(Some(writer.pid())).unwrap();
    let kpagecount = fs::File::open("/proc/kpagecount").unwrap();
    let mut own = std::collections::BTreeSet::new();
    for &addr in &written {
        let pfn = map.pfn(addr).expect("a written page is present");
        let mut count = [0u8; 8];
        std::os::unix::fs::FileExt::read_exact_at(&kpagecount, &mut count, pfn * 8).unwrap();
        assert_eq!(
            u64::from_ne_bytes(count),
            1,
            "{addr:#x} maps a page of its own"
        );
        own.insert(pfn);
    }
    assert_eq!(own.len() as u64, owed, "distinct new pages");
    // The machine's free pages fell by at least that much (other activity only adds to it).
    let taken = free_before as f64 - free_after as f64;
    assert!(
        taken >= owed as f64 * 0.9,
        "free pages fell by {taken}, owed {owed}"
    );
    let text = ksm_trace_stdout(&["sharing", "--now"]);
    assert!(text.contains("COW storm"), "{text}");
    assert!(text.contains("What each saves and owes"), "{text}");
    // Reading changed no knob.
    assert_eq!(knobs_before, knobs());
    drop(processes);
    drop(session);
}

fn zero_pages_of(s: &serde_json::Value) -> f64 {
    s["processes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| p["zero_pages"].as_f64().unwrap())
        .sum()
}

/// Free pages on the machine: the zones' free lists and the per-CPU lists they hand pages out
/// from (which MemAvailable leaves out: a few thousand pages come and go there unseen).
fn free_pages() -> u64 {
    fs::read_to_string("/proc/zoneinfo")
        .unwrap()
        .lines()
        .filter_map(|l| {
            let l = l.trim();
            l.strip_prefix("pages free")
                .or_else(|| l.strip_prefix("count:"))
                .and_then(|v| v.trim().parse::<u64>().ok())
        })
        .sum()
}

/// Writes one byte into each KSM page `pid` maps (through /proc/PID/mem, as a debugger would),
/// so the kernel must copy each; the addresses it wrote.
fn write_every_ksm_page(pid: u32) -> Vec<u64> {
    use std::os::unix::fs::FileExt as _;
    let pages = ksm_trace::kernel::pagemap::KsmPages::open(Some(pid)).unwrap();
    let mem = fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(format!("/proc/{pid}/mem"))
        .unwrap();
    let mut written = Vec::new();
    for (start, end) in ksm_trace::kernel::pagemap::private_ranges(pid) {
        for addr in (start..end).step_by(4096) {
            if pages.ksm_pfn(addr).is_some() {
                let mut byte = [0u8];
                mem.read_exact_at(&mut byte, addr).unwrap();
                mem.write_all_at(&[byte[0] ^ 0xff], addr).unwrap();
                written.push(addr);
            }
        }
    }
    written
}

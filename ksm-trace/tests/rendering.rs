//! Rendering from a committed recording (made by ksm-trace itself; `cargo xtask fixture`
//! regenerates it and the golden folded files). No root and no kernel needed.
use std::path::PathBuf;

use ksm_trace::{
    flame::{self, View},
    kernel::process::By,
    plot,
    recording::Recording,
    report::{self, Format},
    timeseries,
};

fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

fn recording() -> Recording {
    Recording::read(&fixture("recording-v6.json")).expect("fixture reads")
}

fn golden(name: &str) -> String {
    std::fs::read_to_string(fixture(name)).unwrap()
}

#[test]
fn folded_stacks_are_exactly_the_golden_ones() {
    let rec = recording();
    let stacks = flame::folded(&rec, View::Stack).unwrap();
    assert_eq!(
        stacks.lines.join("\n") + "\n",
        golden("recording-v6.folded")
    );
    let by_process = flame::folded(&rec, View::Process).unwrap();
    assert_eq!(
        by_process.lines.join("\n") + "\n",
        golden("recording-v6.by-process.folded")
    );
    assert_eq!(by_process.unit, "ns");
    // Counts add up to what the recording holds.
    let total: u64 = stacks
        .lines
        .iter()
        .map(|l| l.rsplit(' ').next().unwrap().parse::<u64>().unwrap())
        .sum();
    assert_eq!(total, rec.profile.samples());
}

fn assert_well_formed_svg(svg: &str) {
    assert!(svg.starts_with("<?xml"), "{}", &svg[..80.min(svg.len())]);
    assert!(svg.trim_end().ends_with("</svg>"));
    assert_eq!(svg.matches("<svg").count(), svg.matches("</svg>").count());
    assert_eq!(
        svg.matches("<g").count(),
        svg.matches("</g>").count(),
        "balanced groups"
    );
}

#[test]
fn flame_svg_has_ksmd_frames() {
    let rec = recording();
    let mut svg = Vec::new();
    flame::svg(&flame::folded(&rec, View::Stack).unwrap(), &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert_well_formed_svg(&svg);
    for frame in ["ksmd", "ksm_scan_thread"] {
        assert!(svg.contains(frame), "frame {frame} missing");
    }
    let mut by_process = Vec::new();
    flame::svg(
        &flame::folded(&rec, View::Process).unwrap(),
        &mut by_process,
    )
    .unwrap();
    let by_process = String::from_utf8(by_process).unwrap();
    assert_well_formed_svg(&by_process);
    for p in &rec.processes {
        if p.stats.counts.merges > 0 {
            assert!(by_process.contains(&format!("{}[{}]", p.stats.comm, p.pid)));
        }
    }
}

#[test]
fn differential_flame_of_a_recording_with_itself_renders() {
    let rec = recording();
    let folded = flame::folded(&rec, View::Stack).unwrap();
    let mut svg = Vec::new();
    flame::diff_svg(&folded, &folded, &mut svg).unwrap();
    let svg = String::from_utf8(svg).unwrap();
    assert_well_formed_svg(&svg);
    assert!(svg.contains("differential"));
}

#[test]
fn charts_are_written() {
    let rec = recording();
    let dir = std::env::temp_dir().join(format!("ksm-trace-plot-test-{}", std::process::id()));
    let files = plot::plot(&rec, &dir).unwrap();
    let names: Vec<String> = files
        .iter()
        .map(|f| f.file_name().unwrap().to_string_lossy().into_owned())
        .collect();
    assert_eq!(
        names,
        [
            "memory.svg",
            "ksmd-cpu.svg",
            "rates.svg",
            "full-scans.svg",
            "processes.svg",
            "sharing.svg"
        ]
    );
    for f in &files {
        let svg = std::fs::read_to_string(f).unwrap();
        assert!(
            svg.contains("<svg") && svg.trim_end().ends_with("</svg>"),
            "{}",
            f.display()
        );
    }
    assert!(
        std::fs::read_to_string(dir.join("memory.svg"))
            .unwrap()
            .contains("pages_sharing")
    );
    std::fs::remove_dir_all(dir).unwrap();
}

#[test]
fn csv_has_a_row_per_sample_with_monotonic_time() {
    let rec = recording();
    let csv = timeseries::csv(&rec);
    let lines: Vec<&str> = csv.lines().collect();
    assert_eq!(lines.len(), rec.timeseries.len() + 1);
    let header: Vec<&str> = lines[0].split(',').collect();
    assert_eq!(header[0], "t_s");
    let times: Vec<f64> = lines[1..]
        .iter()
        .map(|l| l.split(',').next().unwrap().parse().unwrap())
        .collect();
    assert!(times.windows(2).all(|w| w[0] < w[1]), "{times:?}");
    for l in &lines[1..] {
        assert_eq!(l.split(',').count(), header.len(), "{l}");
    }
}

/// The report's figures against values read off `recording-v1.json` by hand (a JSON viewer,
/// not ksm-trace), and percentiles against the raw full-scan list computed here.
#[test]
fn report_figures_are_the_recordings() {
    let rec = Recording::read(&fixture("recording-v1.json")).unwrap();
    let json: serde_json::Value =
        serde_json::from_str(&report::render(&rec, Format::Json).unwrap()).unwrap();
    let process = |pid: u64| {
        json["processes"]
            .as_array()
            .unwrap()
            .iter()
            .find(|p| p["pid"] == pid)
            .unwrap_or_else(|| panic!("pid {pid} in the report"))
            .clone()
    };
    for pid in [27515, 27516] {
        let p = process(pid);
        assert_eq!(p["merges"], 600, "{p}");
        assert_eq!(p["new_pages"], 600);
        assert_eq!(p["joins"], 0);
        assert_eq!(p["unmerges"], 300);
        assert_eq!(p["ksm_merging_pages_start"], 0);
        assert_eq!(p["ksm_merging_pages_end"], 300);
        assert_eq!(p["merge_latency_ns"]["count"], 600);
        assert_eq!(p["untimed_merges"], 0);
    }
    assert_eq!(process(27515)["comm"], "ksm-procs-0");
    assert_eq!(json["scans"]["full_scans"], 214);
    assert_eq!(json["kernel_deltas"]["full_scans"], 214);
    assert_eq!(json["kernel_deltas"]["cow_ksm"], 24684 - 24084);
    assert_eq!(json["kernel_deltas"]["pages_sharing"], -3156);
    assert_eq!(json["lost_events"], 0);
    assert_eq!(json["ended_by"], "workload-finished");
    assert_eq!(json["merge_latency"]["timed"], 1200);
    assert_eq!(json["mechanisms"]["merge_latency"]["kind"], "bracket");
    assert!(
        json["mechanism_descriptions"]["merge_latency"]
            .as_str()
            .unwrap()
            .ends_with("attached for the whole run")
    );
    let duration_s = json["duration_s"].as_f64().unwrap();
    assert!((duration_s - 4.014854796).abs() < 1e-9, "{duration_s}");

    // Percentiles: within the histogram's 3 significant digits of the exact order statistic.
    let mut durations: Vec<u64> = rec
        .scans
        .full_scans
        .iter()
        .filter_map(|s| s.start_ns.map(|start| s.stop_ns - start))
        .collect();
    durations.sort_unstable();
    let exact_max = *durations.last().unwrap();
    let exact_p50 = durations[durations.len().div_ceil(2) - 1];
    let p50 = json["scans"]["full_scan_ns"]["p50"].as_u64().unwrap();
    let max = json["scans"]["full_scan_ns"]["max"].as_u64().unwrap();
    assert!(
        p50.abs_diff(exact_p50) <= exact_p50 / 1000 + 1,
        "{p50} vs {exact_p50}"
    );
    assert!(
        max.abs_diff(exact_max) <= exact_max / 1000 + 1,
        "{max} vs {exact_max}"
    );
    assert_eq!(json["scans"]["full_scan_ns"]["count"], 214);

    let text = report::render(&rec, Format::Text).unwrap();
    let row = text
        .lines()
        .skip_while(|l| !l.starts_with("Per process"))
        .find(|l| l.contains("ksm-procs-0"))
        .expect("a row for ksm-procs-0 in the per-process table");
    let cells: Vec<&str> = row.split_whitespace().collect();
    assert_eq!(&cells[..3], ["27515", "ksm-procs-0", "600"], "{row}");
    assert!(row.contains("0→300"), "{row}");
    assert!(
        text.contains("Full scans: 214 (kernel full_scans +214)"),
        "{text}"
    );
    // Each worker timed 300 writes to KSM pages: 600, as the kernel's cow_ksm counted.
    assert!(
        text.contains("COW breaks seen by the workload: 600; kernel cow_ksm +600"),
        "{text}"
    );
    assert!(text.contains("|@"), "histogram bars");
}

/// Every kept fixture's text report, and the current version's report by guest, by cgroup and
/// as JSON, exactly as blessed: any change to what a report says shows up here and is called
/// out when it is made on purpose (`KSM_TRACE_BLESS=1 cargo test --test rendering` rewrites
/// them; `cargo xtask fixture` does too).
#[test]
fn reports_of_the_kept_fixtures_are_the_golden_ones() {
    let bless = std::env::var_os("KSM_TRACE_BLESS").is_some();
    let mut views = Vec::new();
    for v in 1..=ksm_trace::recording::VERSION {
        views.push((v, "process", Format::Text));
    }
    let current = ksm_trace::recording::VERSION;
    views.push((current, "guest", Format::TextBy(By::Guest)));
    views.push((current, "cgroup", Format::TextBy(By::Cgroup)));
    views.push((current, "json", Format::Json));
    let mut differ = Vec::new();
    for (v, view, format) in views {
        let rec = Recording::read(&fixture(&format!("recording-v{v}.json"))).unwrap();
        let text = report::render(&rec, format).unwrap();
        let path = fixture(&format!("reports/recording-v{v}.{view}.txt"));
        if bless {
            std::fs::create_dir_all(path.parent().unwrap()).unwrap();
            std::fs::write(&path, &text).unwrap();
        } else if std::fs::read_to_string(&path).ok().as_deref() != Some(text.as_str()) {
            differ.push(path.display().to_string());
        }
    }
    assert!(
        differ.is_empty(),
        "reports differ from the golden ones (diff them with `ksm-trace report FIXTURE`; if the change is meant, KSM_TRACE_BLESS=1 rewrites them): {differ:?}"
    );
}

#[test]
fn recording_round_trips() {
    let rec = recording();
    let path =
        std::env::temp_dir().join(format!("ksm-trace-roundtrip-{}.json", std::process::id()));
    rec.write(&path).unwrap();
    assert_eq!(Recording::read(&path).unwrap(), rec);
    std::fs::remove_file(path).unwrap();
}

#[test]
fn cow_breaks_are_numbers_only_where_they_were_traced() {
    // The fixture comes from a kernel that refused fentry on do_wp_page: no per-process count.
    let mut rec = recording();
    assert!(!rec.mechanisms.cow_traced());
    let json: serde_json::Value =
        serde_json::from_str(&report::render(&rec, Format::Json).unwrap()).unwrap();
    let processes = json["processes"].as_array().unwrap();
    assert!(processes.iter().all(|p| p["cow_breaks"].is_null()));

    rec.mechanisms.cow = ksm_trace::recording::schema::CowMechanism::DoWpPage {
        vmemmap_from_merges: false,
    };
    rec.processes[0].stats.cow_breaks = 7;
    let pid = rec.processes[0].pid;
    let json: serde_json::Value =
        serde_json::from_str(&report::render(&rec, Format::Json).unwrap()).unwrap();
    for p in json["processes"].as_array().unwrap() {
        let expected = if p["pid"] == pid { 7 } else { 0 };
        assert_eq!(p["cow_breaks"], expected, "{p}");
    }
    let text = report::render(&rec, Format::Text).unwrap();
    assert!(text.contains("COW breaks of KSM pages traced: 7"), "{text}");
}

#[test]
fn counters_an_older_kernel_lacks_are_not_available_rather_than_zero() {
    // Debian 12's 6.1 has none of general_profit, pages_scanned and ksm_zero_pages in
    // /sys/kernel/mm/ksm (nor their per-process lines in ksm_stat, which then read 0).
    let mut rec = recording();
    let missing = ["general_profit", "pages_scanned", "ksm_zero_pages"];
    for counters in [&mut rec.counters_start, &mut rec.counters_end]
        .into_iter()
        .chain(rec.timeseries.iter_mut().map(|s| &mut s.counters))
    {
        for name in missing {
            counters.ksm.remove(name);
        }
    }
    let json: serde_json::Value =
        serde_json::from_str(&report::render(&rec, Format::Json).unwrap()).unwrap();
    assert!(json["general_profit_mib_end"].is_null());
    assert!(json["scans"]["pages_scanned"].is_null());
    assert!(json["scans"]["pages_scanned_per_sec"].is_null());
    for p in json["processes"].as_array().unwrap() {
        assert!(p["ksm_zero_pages_end"].is_null(), "{p}");
        assert!(p["profit_mib_end"].is_null(), "{p}");
    }
    let text = report::render(&rec, Format::Text).unwrap();
    assert!(
        text.contains("general_profit not available on this kernel"),
        "{text}"
    );
    assert!(
        text.contains("pages scanned: not counted by this kernel"),
        "{text}"
    );
    // The time series: empty CSV cells, and no chart line.
    let csv = timeseries::csv(&rec);
    let mut lines = csv.lines();
    let header: Vec<&str> = lines.next().unwrap().split(',').collect();
    let columns: Vec<usize> = ["general_profit", "ksm_zero_pages"]
        .iter()
        .map(|name| header.iter().position(|h| h == name).unwrap())
        .collect();
    for l in lines {
        let cells: Vec<&str> = l.split(',').collect();
        for &c in &columns {
            assert_eq!(cells[c], "", "{} in {l}", header[c]);
        }
    }
    let dir = std::env::temp_dir().join(format!("ksm-trace-plot-6.1-{}", std::process::id()));
    plot::plot(&rec, &dir).unwrap();
    let memory = std::fs::read_to_string(dir.join("memory.svg")).unwrap();
    std::fs::remove_dir_all(&dir).unwrap();
    assert!(memory.contains("pages_sharing"));
    assert!(
        !memory.contains("general_profit"),
        "a line for a missing counter"
    );
    // The fixture itself has them all.
    let full: serde_json::Value =
        serde_json::from_str(&report::render(&recording(), Format::Json).unwrap()).unwrap();
    assert!(full["general_profit_mib_end"].is_number());
    assert!(full["scans"]["pages_scanned"].is_number());
    assert!(full["processes"][0]["ksm_zero_pages_end"].is_number());
    assert!(
        timeseries::csv(&recording())
            .lines()
            .nth(1)
            .unwrap()
            .split(',')
            .all(|c| !c.is_empty())
    );
}

#[test]
fn tables_by_guest_and_cgroup_sum_the_processes() {
    let rec = recording();
    let json: serde_json::Value =
        serde_json::from_str(&report::render(&rec, Format::Json).unwrap()).unwrap();
    let processes = json["processes"].as_array().unwrap();
    let total = |v: &[serde_json::Value], field: &str| -> u64 {
        v.iter().map(|x| x[field].as_u64().unwrap()).sum()
    };
    for by in ["by_guest", "by_cgroup"] {
        let groups = json[by].as_array().unwrap();
        assert!(!groups.is_empty(), "{by}");
        assert_eq!(total(groups, "processes"), processes.len() as u64, "{by}");
        assert_eq!(total(groups, "merges"), total(processes, "merges"), "{by}");
        assert_eq!(
            total(groups, "unmerges"),
            total(processes, "unmerges"),
            "{by}"
        );
    }
    let text =
        report::render(&rec, Format::TextBy(ksm_trace::kernel::process::By::Cgroup)).unwrap();
    assert!(text.contains("By cgroup:"), "{text}");
    for g in json["by_cgroup"].as_array().unwrap() {
        let name = g["name"].as_str().unwrap();
        let row = text
            .lines()
            .find(|l| l.trim_start().starts_with(name) && !l.contains("ksm-procs"))
            .unwrap_or_else(|| panic!("no row for {name}:\n{text}"));
        let cells: Vec<&str> = row.split_whitespace().collect();
        assert_eq!(cells[1], g["processes"].to_string(), "{row}");
        assert_eq!(cells[2], g["merges"].to_string(), "{row}");
    }
    assert!(
        !text.contains("Workload (started by ksm-trace)"),
        "per-process tables replaced by the sums"
    );
}

#[test]
fn the_recorded_sharing_matrix_renders_from_the_file() {
    use ksm_trace::sharing::{By, Source, View};
    let rec = recording();
    let end = rec.sharing.as_ref().unwrap().end_snapshot.as_ref().unwrap();
    let shared: u64 = end.traced_still_mapped.iter().map(|s| s.pages).sum();
    assert!(shared > 0, "the fixture's workers share pages");
    let path = fixture("recording-v6.json");
    let view = |json| View {
        by: By::Process,
        domains: &[],
        json,
        svg: None,
    };
    let text = ksm_trace::sharing::run(
        Source::Recording {
            path: &path,
            snapshot: false,
        },
        &view(false),
    )
    .unwrap();
    assert!(
        text.contains(&format!("still mapped at its end: {shared} distinct")),
        "{text}"
    );
    assert!(text.contains("ksm-procs-0["), "{text}");
    let json: serde_json::Value = serde_json::from_str(
        &ksm_trace::sharing::run(
            Source::Recording {
                path: &path,
                snapshot: true,
            },
            &view(true),
        )
        .unwrap(),
    )
    .unwrap();
    assert_eq!(json["source"], "end snapshot");
    assert_eq!(
        json["matrix"]["ksm_pages"],
        end.sets.iter().map(|s| s.pages).sum::<u64>()
    );
    // A recording made before sharing was recorded says so in one line.
    let old = fixture("recording-v4.json");
    let err = ksm_trace::sharing::run(
        Source::Recording {
            path: &old,
            snapshot: false,
        },
        &view(false),
    )
    .unwrap_err()
    .to_string();
    assert!(
        err.contains("no sharing matrix") && !err.contains('\n'),
        "{err}"
    );
}

#[test]
fn workers_unmerge_calls_render_with_the_kernels_count() {
    let rec = recording();
    let report = report::Report::from_recording(&rec);
    // The fixture's spec: 300 identical pages per worker, half unmerged in each of 2 rounds.
    for w in &report.workers {
        let u = w
            .unmerge
            .as_ref()
            .expect("unmerge=0.5 in the fixture's spec");
        assert_eq!((u.call_ns.count, u.pages), (2, 300), "{}", w.comm);
        assert!(u.mib_per_s > 0.0);
    }
    let text = report::render(&rec, Format::Text).unwrap();
    let calls: u64 = report
        .workers
        .iter()
        .filter_map(|w| w.unmerge.as_ref()?.ksm_pages)
        .sum();
    assert!(
        text.contains(&format!("+ {calls} KSM pages its unmerge calls broke")),
        "{text}"
    );
    assert_eq!(
        text.matches("MADV_UNMERGEABLE calls at").count(),
        2,
        "{text}"
    );
}

//! The live views against the real kernel and real tools: `serve` scraped by Debian's
//! Prometheus, `top` driven in tmux — each with a procs workload, checked against the
//! workers' /proc/<pid>/ksm_stat as the test reads it. Neither view may change a knob.
mod common;

use std::{
    fs,
    net::TcpListener,
    path::Path,
    process::{Child, Command, Stdio},
    time::{Duration, Instant},
};

use common::*;

tests! {
    serve_is_scraped_by_a_real_prometheus_and_agrees_with_ksm_stat: Root,
    top_in_tmux_shows_the_workers_merging_and_gives_the_terminal_back: Root,
    top_batch_prints_refreshes_as_text_and_refuses_bad_pids: Root,
}

/// A port nothing listens on now.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

fn get(url: &str) -> Option<String> {
    ureq::get(url).call().ok()?.body_mut().read_to_string().ok()
}

/// A Prometheus of its own: loopback, a free port, its data in the test's directory.
struct Prometheus {
    child: Child,
    url: String,
}

impl Prometheus {
    fn start(dir: &Path, target: &str) -> Self {
        assert!(
            Command::new("prometheus").arg("--version").output().is_ok(),
            "prometheus is not installed: run `cargo xtask test` (it installs Debian's prometheus)"
        );
        let config = dir.join("prometheus.yml");
        fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  scrape_timeout: 1s\nscrape_configs:\n  - job_name: ksm-trace\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("tsdb").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("starting prometheus");
        let url = format!("http://127.0.0.1:{port}");
        assert!(
            wait_until(Duration::from_secs(30), || get(&format!("{url}/-/ready"))
                .is_some()),
            "prometheus ready"
        );
        Self { child, url }
    }

    /// `(labels, value)` of every series of an instant query.
    fn query(&self, q: &str) -> Vec<(serde_json::Value, f64)> {
        let body = ureq::get(format!("{}/api/v1/query", self.url))
            .query("query", q)
            .call()
            .and_then(|mut r| r.body_mut().read_to_string())
            .unwrap_or_else(|e| panic!("querying {q}: {e}"));
        let v: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(v["status"], "success", "{body}");
        v["data"]["result"]
            .as_array()
            .unwrap()
            .iter()
            .map(|s| {
                let value = s["value"][1].as_str().unwrap().parse().unwrap();
                (s["metric"].clone(), value)
            })
            .collect()
    }

    /// The one value of a query that yields one series (None when it yields none).
    fn scalar(&self, q: &str) -> Option<f64> {
        self.query(q).first().map(|(_, v)| *v)
    }

    /// Each workload worker's value of `metric`, by pid.
    fn by_worker(&self, metric: &str) -> Vec<(u32, f64)> {
        let mut out: Vec<(u32, f64)> = self
            .query(&format!("{metric}{{comm=~\"ksm-procs-.*\"}}"))
            .into_iter()
            .map(|(labels, v)| (labels["pid"].as_str().unwrap().parse().unwrap(), v))
            .collect();
        out.sort_by_key(|(pid, _)| *pid);
        out
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Waits until every worker's value of `metric` in Prometheus equals `expected(pid)` (the
/// scrape lags the kernel by up to two seconds); returns what Prometheus last said.
fn wait_for_workers(
    prom: &Prometheus,
    metric: &str,
    workers: usize,
    expected: impl Fn(u32) -> f64,
) -> Vec<(u32, f64)> {
    let mut last = Vec::new();
    let deadline = Instant::now() + Duration::from_secs(15);
    while Instant::now() < deadline {
        last = prom.by_worker(metric);
        if last.len() == workers && last.iter().all(|&(pid, v)| v == expected(pid)) {
            return last;
        }
        std::thread::sleep(Duration::from_millis(500));
    }
    panic!(
        "{metric} in Prometheus {last:?}, the kernel says {:?}",
        last.iter()
            .map(|&(p, _)| (p, expected(p)))
            .collect::<Vec<_>>()
    );
}

fn serve_is_scraped_by_a_real_prometheus_and_agrees_with_ksm_stat() {
    let session = KsmSession::start("serve");
    let listen = format!("127.0.0.1:{}", free_port());
    // Every merge timed, so the latency histograms can be checked against the merge counts
    // (the sampled default's windows can miss a short burst by design).
    let serve = Background::spawn(&[
        "serve",
        "--listen",
        &listen,
        "--interval",
        "1s",
        "--merge-latency",
        "always",
    ]);
    assert!(
        wait_until(Duration::from_secs(20), || get(&format!(
            "http://{listen}/metrics"
        ))
        .is_some()),
        "serve answers"
    );
    // Serving changed nothing: ksmd still off, the session's knobs in place.
    session.assert_knobs_restored();
    let prom = Prometheus::start(&session.dir, &listen);

    // Round 1 merges at once; round 2 rewrites every page 24 s later (unmerges, merges again,
    // after the latency sampler's 20 s period), then the workers exit.
    let mut workload = Background::spawn(&[
        "workload",
        "procs:3,pages=2000,rounds=2,wait=24s",
        "--pages-to-scan",
        "2000",
        "--sleep-ms",
        "10",
    ]);
    assert!(
        procs_workers_within(3, Duration::from_secs(10)),
        "workers started"
    );
    let workers = pids_named("ksm-procs-");

    // Round 1 settled: the traced merges of each worker are its ksm_merging_pages, exactly.
    assert!(
        wait_until(Duration::from_secs(15), || all_merging(&workers, 1000)),
        "round 1 merged"
    );
    wait_for_workers(&prom, "ksm_process_merging_pages", 3, |p| {
        ksm_merging_pages(p) as f64
    });
    wait_for_workers(&prom, "ksm_process_merges_total", 3, |p| {
        ksm_merging_pages(p) as f64
    });
    // What each saves, from the page tables (every 10 s): its 1000 merged pages each have three
    // sharers, so it saves two thirds of a page each, less its rmap items — under the kernel's
    // ksm_process_profit, which credits each mapping a whole page.
    assert!(
        wait_until(Duration::from_secs(25), || {
            let saved = prom.by_worker("ksm_process_saved_bytes");
            let profit = prom.by_worker("ksm_process_profit_bytes");
            saved.len() == 3
                && saved.iter().all(|&(pid, v)| {
                    let kernel = profit
                        .iter()
                        .find(|&&(p, _)| p == pid)
                        .map_or(0.0, |&(_, k)| k);
                    v > 1000.0 * 4096.0 * 0.5 && v < kernel
                })
        }),
        "ksm_process_saved_bytes per worker: {:?} against ksm_process_profit_bytes {:?}",
        prom.by_worker("ksm_process_saved_bytes"),
        prom.by_worker("ksm_process_profit_bytes")
    );
    assert!(prom.scalar("ksm_cow_storm_bytes").unwrap() > 0.0);

    // Round 2 (from ~24 s): every page is rewritten, unmerged and merged again.
    assert!(
        wait_until(Duration::from_secs(60), || workers
            .iter()
            .all(|&p| { alive(p) && ksm_merging_pages(p) == 1000 })
            && prom
                .by_worker("ksm_process_merges_total")
                .iter()
                .all(|&(_, v)| v >= 2000.0)),
        "round 2 merged"
    );
    let merging = wait_for_workers(&prom, "ksm_process_merging_pages", 3, |p| {
        ksm_merging_pages(p) as f64
    });
    // Every timed merge is in exactly one process's latency histogram (as of one scrape).
    let histograms = prom
        .scalar("sum(ksm_process_merge_latency_seconds_count)")
        .unwrap();
    let timed = prom.scalar("ksm_trace_merges_timed_total").unwrap();
    assert_eq!(histograms, timed, "histogram counts = timed merges");
    assert!(timed > 0.0);
    let all = prom.scalar("ksm_trace_merges_total").unwrap();
    // A merge whose bracket closed > 50 ms before its tracepoint (ksmd preempted there) is
    // left untimed rather than given a wrong latency: allow a handful.
    assert!(
        timed <= all && timed >= all * 0.99,
        "--merge-latency always times every merge: {timed} of {all}"
    );
    let traced = prom.by_worker("ksm_process_merges_total");
    let unmerged = prom.by_worker("ksm_process_unmerges_total");
    println!("merging pages {merging:?}, merges {traced:?}, unmerges {unmerged:?}, timed {timed}");
    assert!(
        unmerged.iter().all(|&(_, v)| v > 0.0),
        "round 2's rewrite unmerged: {unmerged:?}"
    );
    // Every query of the Grafana dashboard is valid PromQL over these series, and the
    // per-process panels show the workers.
    let dashboard: serde_json::Value = serde_json::from_str(
        &fs::read_to_string(
            Path::new(env!("CARGO_MANIFEST_DIR")).join("dist/grafana-dashboard.json"),
        )
        .unwrap(),
    )
    .unwrap();
    for panel in dashboard["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"]
                .as_str()
                .unwrap()
                .replace("$__rate_interval", "10s")
                .replace("$instance", ".*");
            let series = prom.query(&expr);
            let title = panel["title"].as_str().unwrap();
            if title.ends_with("by process") && !title.contains("Unmerges") {
                assert!(
                    series.iter().any(|(l, _)| l["comm"]
                        .as_str()
                        .is_some_and(|c| c.starts_with("ksm-procs-"))),
                    "panel {title}: {expr} shows no worker: {series:?}"
                );
            }
        }
    }
    let cpu = prom.scalar("ksm_ksmd_cpu_seconds_total").unwrap();
    assert!(cpu > 0.0);
    let scans = prom.scalar("ksm_full_scan_duration_seconds_count").unwrap();
    assert!(scans > 0.0, "full scans traced");

    // The workers exit after round 2's wait: their series leave with them.
    assert!(workload.0.wait().unwrap().success());
    assert!(
        wait_until(Duration::from_secs(10), || prom
            .by_worker("ksm_process_merging_pages")
            .is_empty()),
        "exited workers' series are gone"
    );
    assert!(serve.stop().success(), "serve exits cleanly on SIGTERM");
    session.assert_knobs_restored();
}

fn tmux(args: &[&str]) -> String {
    let out = Command::new("tmux")
        .args(args)
        .output()
        .expect("tmux is not installed: run `cargo xtask test` (it installs tmux)");
    String::from_utf8_lossy(&out.stdout).into_owned()
}

/// tmux on a socket of its own, so the test never touches a user's sessions.
struct Tmux {
    socket: String,
}

impl Tmux {
    fn run(&self, args: &[&str]) -> String {
        let mut all = vec!["-L", self.socket.as_str()];
        all.extend_from_slice(args);
        tmux(&all)
    }

    fn screen(&self) -> String {
        self.run(&["capture-pane", "-p", "-t", "top"])
    }

    fn pane(&self, format: &str) -> String {
        self.run(&["display-message", "-p", "-t", "top", format])
            .trim()
            .to_owned()
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        self.run(&["kill-server"]);
    }
}

fn top_in_tmux_shows_the_workers_merging_and_gives_the_terminal_back() {
    let session = KsmSession::start("top");
    let t = Tmux {
        socket: format!("ksm-trace-test-{}", std::process::id()),
    };
    // A shell around top says how it exited, on the screen top gives back.
    let command = format!("{} top --interval 1s; echo top-exit=$?; sleep 60", bin());
    t.run(&[
        "new-session",
        "-d",
        "-s",
        "top",
        "-x",
        "160",
        "-y",
        "40",
        "sh",
        "-c",
        &command,
    ]);
    assert!(
        wait_until(Duration::from_secs(20), || t.screen().contains("ksmd CPU")),
        "top draws: {}",
        t.screen()
    );
    assert_eq!(t.pane("#{alternate_on}"), "1", "top takes the screen");
    session.assert_knobs_restored();

    let workload = Background::spawn(&[
        "workload",
        "procs:2,pages=2000",
        "--duration",
        "90s",
        "--pages-to-scan",
        "2000",
        "--sleep-ms",
        "10",
    ]);
    // A refresh that shows both workers merging (MERGES/s > 0), while the test reads their
    // ksm_stat.
    let row_merging = |screen: &str, comm: &str| {
        screen.lines().any(|l| {
            let cells: Vec<&str> = l.split_whitespace().collect();
            cells.get(1) == Some(&comm) && cells.get(3).is_some_and(|m| m != &"0")
        })
    };
    let mut seen = [false, false];
    let deadline = Instant::now() + Duration::from_secs(20);
    while Instant::now() < deadline && !seen.iter().all(|&s| s) {
        let screen = t.screen();
        for (i, s) in seen.iter_mut().enumerate() {
            *s |= row_merging(&screen, &format!("ksm-procs-{i}"));
        }
        std::thread::sleep(Duration::from_millis(200));
    }
    assert!(
        seen.iter().all(|&s| s),
        "both workers seen merging: {}",
        t.screen()
    );
    // Once settled, the MERGED column is the kernel's ksm_merging_pages (1000 pages = 3.9M).
    let workers = pids_named("ksm-procs-");
    assert!(
        wait_until(Duration::from_secs(15), || all_merging(&workers, 1000)),
        "workers merged"
    );
    assert!(
        wait_until(Duration::from_secs(5), || {
            let screen = t.screen();
            workers.iter().all(|pid| {
                screen
                    .lines()
                    .any(|l| l.trim_start().starts_with(&pid.to_string()) && l.contains("3.9M"))
            })
        }),
        "merged pages shown: {}",
        t.screen()
    );

    // Keys: s changes the sort, p pauses, q quits and gives the terminal back.
    t.run(&["send-keys", "-t", "top", "s"]);
    assert!(
        wait_until(Duration::from_secs(5), || t
            .screen()
            .contains("sort: merges/s")),
        "{}",
        t.screen()
    );
    t.run(&["send-keys", "-t", "top", "p"]);
    assert!(
        wait_until(Duration::from_secs(5), || t.screen().contains("PAUSED")),
        "{}",
        t.screen()
    );
    t.run(&["send-keys", "-t", "top", "q"]);
    assert!(
        wait_until(Duration::from_secs(5), || t.screen().contains("top-exit=0")),
        "q quits, with status 0: {}",
        t.screen()
    );
    assert_eq!(t.pane("#{alternate_on}"), "0", "the terminal is given back");
    assert_eq!(t.pane("#{cursor_flag}"), "1", "the cursor is shown again");

    assert!(workload.stop().success());
    session.assert_knobs_restored();
}

fn top_batch_prints_refreshes_as_text_and_refuses_bad_pids() {
    let session = KsmSession::start("top-batch");
    let text = ksm_trace_stdout(&["top", "--batch", "2", "--interval", "500ms"]);
    assert_eq!(text.matches("ksmd CPU").count(), 2, "{text}");
    assert!(text.contains("PID COMM"), "{text}");

    let bad = ksm_trace(&["top", "-b", "1", "-p", "999999999"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert_eq!(err.lines().count(), 1, "{err}");
    assert!(err.contains("no process with pid 999999999"), "{err}");

    let busy = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = busy.local_addr().unwrap().to_string();
    let refused = ksm_trace(&["serve", "--listen", &addr]);
    assert!(!refused.status.success());
    let err = String::from_utf8_lossy(&refused.stderr);
    assert!(
        err.contains("cannot listen on") && err.contains("--listen"),
        "{err}"
    );
    session.assert_knobs_restored();
}

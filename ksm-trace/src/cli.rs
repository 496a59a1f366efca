//! Command-line interface.
use std::{path::PathBuf, time::Duration};

use clap::{
    ArgAction, Args, Parser, Subcommand,
    builder::{PossibleValue, PossibleValuesParser, TypedValueParser},
};

use crate::{
    flame::View,
    parse,
    probes::{Backend, CowProbe, LatencyMode, ProbeOptions},
};

#[derive(Debug, Parser)]
#[command(
    name = "ksm-trace",
    version,
    about = "eBPF tracing profiler for Linux Kernel Samepage Merging (KSM)",
    after_help = "\
Examples:
  ksm-trace record --workload procs:4 --duration 30s   # trace 4 processes sharing pages, 30 s
  ksm-trace report ksm-trace.json --json               # that recording's report, as JSON
  ksm-trace doctor                                     # what this kernel lets ksm-trace measure"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
    /// More messages on stderr: -v adds progress details, -vv debugging detail.
    #[arg(short, long, action = clap::ArgAction::Count, global = true)]
    pub verbose: u8,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Trace KSM (optionally driving a workload), write a recording and print its report.
    #[command(after_help = "\
Examples:
  ksm-trace record --workload procs:4 --duration 30s   # 4 processes, half their pages identical
  ksm-trace record --workload vms:4 -o vms.json        # 4 QEMU guests, until KSM has settled
  ksm-trace record --pid 1234 --duration 1m            # a running KSM user, 1 min
  ksm-trace record --vm db1 --vm db2 --duration 2m     # two running guests (libvirt names)")]
    Record(RecordArgs),
    /// Print the report of a recording.
    #[command(after_help = "\
Examples:
  ksm-trace report                   # the report of ./ksm-trace.json
  ksm-trace report vms.json --json   # another recording's report, as JSON
  ksm-trace report vms.json --csv    # its counter time series, as CSV
  ksm-trace report --by cgroup       # merges summed per cgroup (container, pod)")]
    Report(ReportArgs),
    /// Flame graph (SVG) or folded stacks of ksmd's cost; two files give a differential graph.
    #[command(after_help = "\
Examples:
  ksm-trace flame ksm-trace.json -o merge-cost.svg           # where ksmd's CPU time goes
  ksm-trace flame ksm-trace.json --by process -o procs.svg   # measured merge time per process
  ksm-trace flame before.json after.json -o diff.svg         # differential: what changed")]
    Flame(FlameArgs),
    /// SVG charts of a recording's time series.
    #[command(after_help = "\
Examples:
  ksm-trace plot                     # charts of ./ksm-trace.json in ksm-trace-plots/
  ksm-trace plot vms.json -o plots   # charts of vms.json in plots/")]
    Plot(PlotArgs),
    /// Record a workload under every combination of KSM settings and summarize the trade-off.
    #[command(after_help = "\
Examples:
  ksm-trace sweep -w procs:4 --pages-to-scan 100,1000,5000 --sleep-ms 20,200 -d 30s -o sweep
      # 6 recordings of 30 s, then the table, summary.csv and the charts in sweep/
  ksm-trace sweep -w vms:2 --pages-to-scan 1000,5000 --until-settled --timeout 3m -o vms-sweep
      # each configuration until KSM has settled, at most 3 min")]
    Sweep(SweepArgs),
    /// Benchmarks comparable with the kernel's own.
    #[command(
        subcommand,
        after_help = "\
Examples:
  ksm-trace bench overhead                  # what tracing costs ksmd (about 5 min)
  ksm-trace bench merge --size 100M         # the kernel selftest's merge time
  ksm-trace bench merge --size 100M --thp   # the same on transparent huge pages"
    )]
    Bench(BenchCommand),
    /// Who shares KSM pages with whom, now or in a recording: by process, guest or cgroup,
    /// pages shared by k processes, and the memory shared across trust domains.
    #[command(after_help = "\
Examples:
  ksm-trace sharing --now                        # which processes share KSM pages
  ksm-trace sharing --now --by guest             # which QEMU guests share with which
  ksm-trace sharing --now --by cgroup --domains /tenant-a,/tenant-b   # across tenants
  ksm-trace sharing ksm-trace.json --by guest    # the traced matrix of a recording")]
    Sharing(SharingArgs),
    /// Why memory is not merged: per process, guest or cgroup, from anonymous memory to merged
    /// pages, every page not merged counted under its reason. Reads only (root).
    #[command(after_help = "\
Examples:
  ksm-trace explain                    # every process with memory opted in to KSM
  ksm-trace explain --vm db1 --vmas    # one guest, naming the mappings KSM cannot merge
  ksm-trace explain --by cgroup --json # per cgroup, as JSON
  ksm-trace explain --all --full       # every page read, however large the host")]
    Explain(ExplainArgs),
    /// Undo what a ksm-trace that was killed left behind: KSM knobs, processes it started, run
    /// directories, mounts. Every command that changes the system does this first by itself.
    #[command(after_help = "\
Examples:
  ksm-trace recover      # after a ksm-trace was killed with SIGKILL
  ksm-trace -v recover   # the same, saying what it looked at")]
    Recover,
    /// Show what this kernel lets ksm-trace measure, and how.
    #[command(after_help = "\
Examples:
  ksm-trace doctor          # what this kernel allows, and why not the better mechanisms
  ksm-trace doctor --json   # the same, as JSON")]
    Doctor(DoctorArgs),
    /// Run ksm-trace's scenario on another kernel in a QEMU guest, or on this one (--kernel host).
    #[command(after_help = "\
Examples:
  ksm-trace lab                       # Debian's 6.12 kernel in a QEMU guest (fexit allowed)
  ksm-trace lab --kernel debian-6.1   # no ksm tracepoints: the function backend stands in
  ksm-trace lab --kernel host         # the same scenario on the running kernel
  ksm-trace lab --kernel ~/linux/arch/x86/boot/bzImage          # a kernel you built
  ksm-trace lab --compare debian-6.1 debian-6.12 --runs 3       # two kernels, then compare")]
    Lab(LabArgs),
    /// Run a workload without tracing (for use with other tools), printing KSM's counters.
    #[command(after_help = "\
Examples:
  ksm-trace workload procs:4,dup=0.5 --duration 1m   # 4 processes for 1 min, KSM's counters
  ksm-trace workload vms:2 --pages-to-scan 2000      # 2 QEMU guests until Ctrl-C")]
    Workload(WorkloadArgs),
    /// A live view of KSM now, per process and guest: merges, unmerges, merged pages, COW
    /// breaks, merge latency; ksmd's CPU and scan rate. Changes nothing.
    #[command(after_help = "\
Examples:
  ksm-trace top                 # every process KSM merges, refreshed each second
  ksm-trace top -p 1234,5678    # only these processes
  ksm-trace top -b 5 -i 2s      # five refreshes 2 s apart, as text (no terminal needed)")]
    Top(TopArgs),
    /// Serve KSM's per-process and per-guest figures to Prometheus (OpenMetrics). Changes
    /// nothing; runs until stopped.
    #[command(after_help = "\
Examples:
  ksm-trace serve                          # http://127.0.0.1:9669/metrics
  ksm-trace serve --listen 0.0.0.0:9669    # for a Prometheus on another host
  ksm-trace serve --top 50 -i 15s          # 50 processes with series of their own")]
    Serve(ServeArgs),
    /// Compare two runs (or two sets of repeated runs): what differs, then each figure
    /// normalised to the work done, the difference with its 95 % interval and a verdict.
    #[command(after_help = "\
Examples:
  ksm-trace compare before.json after.json               # one run each
  ksm-trace compare a1.json a2.json a3.json -- b1.json b2.json b3.json   # repeated runs
  ksm-trace compare before.json after.json --flame diff.svg   # and the differential flame graph")]
    Compare(CompareArgs),
    /// Internal: one process of the procs workload.
    #[command(name = "__procs-worker", hide = true)]
    ProcsWorker { args: Vec<String> },
}

/// The probes that run for every process on the machine, which a user may turn on or off.
#[derive(Debug, Args)]
pub struct ProbeSwitches {
    /// Per-process COW breaks: fentry/fexit on do_wp_page where the kernel allows it, else x86's
    /// page fault tracepoints with a page-table walk. Either runs on every write fault of every
    /// process; off leaves only the global cow_ksm (`on` is `auto`).
    #[arg(long, default_value = "auto", value_parser = cow_probe())]
    pub cow_probe: CowProbe,
    /// ksmd's batches and CPU time from sched_switch, which runs on every context switch of
    /// every process; off leaves ksmd's CPU from /proc/<ksmd>/schedstat.
    #[arg(long, default_value = "on", value_parser = parse::on_off, action = ArgAction::Set)]
    pub batches: bool,
    /// TLB shootdowns ksmd sends per merge (tlb:tlb_flush, which runs on every TLB flush of
    /// every process, hence off unless asked for).
    #[arg(long, default_value = "off", value_parser = parse::on_off, action = ArgAction::Set)]
    pub tlb_shootdowns: bool,
    /// Where KSM's events come from: auto takes the ksm tracepoints where the kernel has them
    /// and function probes where it has not; `functions` forces the function probes (to compare
    /// the two on one kernel).
    #[arg(long, default_value = "auto", value_parser = named(&Backend::ALL))]
    pub backend: Backend,
}

impl ProbeSwitches {
    /// The probes to load, timing merges as `latency` says.
    pub fn options(&self, latency: LatencyMode) -> ProbeOptions {
        ProbeOptions {
            cow: self.cow_probe,
            batches: self.batches,
            tlb: self.tlb_shootdowns,
            backend: self.backend,
            ..ProbeOptions::new(latency)
        }
    }
}

#[derive(Debug, Args)]
pub struct TopArgs {
    /// Only these processes (repeat, or separate with commas).
    #[arg(short, long = "pid", value_delimiter = ',')]
    pub pids: Vec<u32>,
    #[command(flatten)]
    pub guests: GuestArgs,
    /// How often the view refreshes (e.g. 1s, 500ms).
    #[arg(short, long, default_value = "1s", value_parser = parse::duration)]
    pub interval: Duration,
    /// Print this many refreshes as text instead of taking the terminal (like top -b -n N).
    #[arg(short = 'b', long, value_name = "N")]
    pub batch: Option<u64>,
    /// Rows printed per refresh with --batch.
    #[arg(long, default_value_t = 20)]
    pub limit: usize,
    /// How to time merges: auto samples (the bracket 50 ms when merges start, one window per 5 s), always
    /// times every merge at a cost to ksmd's scan rate.
    #[arg(long, default_value = "auto", value_parser = named(&LatencyMode::ALL))]
    pub merge_latency: LatencyMode,
    #[command(flatten)]
    pub switches: ProbeSwitches,
}

#[derive(Debug, Args)]
pub struct ServeArgs {
    /// Address to serve /metrics on.
    #[arg(long, default_value = crate::serve::DEFAULT_LISTEN)]
    pub listen: std::net::SocketAddr,
    /// How often the figures are refreshed (scrapes in between see the last refresh).
    #[arg(short, long, default_value = "5s", value_parser = parse::duration)]
    pub interval: Duration,
    /// Processes with series of their own (by merged pages); the rest are summed into one
    /// `comm="other"` series.
    #[arg(long, default_value_t = 20)]
    pub top: usize,
    /// How to time merges: auto samples (the bracket 50 ms when merges start, one window per 5 s), always
    /// times every merge at a cost to ksmd's scan rate.
    #[arg(long, default_value = "auto", value_parser = named(&LatencyMode::ALL))]
    pub merge_latency: LatencyMode,
    #[command(flatten)]
    pub switches: ProbeSwitches,
}

#[derive(Debug, Args)]
pub struct RecordArgs {
    /// Stop after this long (e.g. 30s, 2m). Default with --workload: once KSM has settled and
    /// stayed settled for 2 more full scans, at most 5 min; without: at Ctrl-C.
    #[arg(short, long, value_parser = parse::duration)]
    pub duration: Option<Duration>,
    /// Start a workload for the run: procs:N[,pages=P,dup=F,zero=F,rounds=R,wait=D,write=F,
    /// mode=madvise|prctl,thp=on|off,pattern=distinct|same,busy=on|off,unmerge=F] or vms:N[,mem=256M,shared=32M,private=16M,churn=1M/2s].
    #[arg(short, long)]
    pub workload: Option<String>,
    /// Rebuild cached workload assets (guest kernel and initramfs for vms).
    #[arg(long)]
    pub refresh: bool,
    /// Report only these processes (repeatable); their ksm_stat is read at start and end.
    #[arg(short, long = "pid")]
    pub pids: Vec<u32>,
    #[command(flatten)]
    pub guests: GuestArgs,
    /// Where to write the recording.
    #[arg(short, long, default_value = "ksm-trace.json")]
    pub output: PathBuf,
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// How to time merges.
    #[arg(long, default_value = "auto", value_parser = named(&LatencyMode::ALL))]
    pub merge_latency: LatencyMode,
    /// Stop once KSM has settled (pages_sharing moved < 5% over a full scan); --duration is
    /// then the timeout.
    #[arg(long)]
    pub until_settled: bool,
    /// Interval of the kernel-counter time series (e.g. 1s, 500ms).
    #[arg(long, default_value = "1s", value_parser = parse::duration)]
    pub interval: Duration,
    #[command(flatten)]
    pub switches: ProbeSwitches,
    /// Size of the events ring buffer (a power of two from 4k, e.g. 8M). Events that do not
    /// fit are counted as lost and the report marks what they make incomplete.
    #[arg(long, default_value = "8M", value_parser = ring_buffer_size)]
    pub ring_buffer: u32,
    /// ksmd's stack samples (for `ksm-trace flame`) per second of ksmd's CPU time; each
    /// interrupts ksmd, so more cost more (at 999 the stack walks alone took 0.43 % of ksmd's
    /// CPU here); 0: no profile.
    #[arg(long, default_value_t = crate::probes::profile::DEFAULT_HZ, value_parser = clap::value_parser!(u64).range(0..=10_000))]
    pub profile_hz: u64,
    /// Print the report as JSON.
    #[arg(long)]
    pub json: bool,
    /// Sum the report's per-process tables by guest or cgroup (JSON always has all three).
    #[arg(long, default_value = "process", value_parser = named(&crate::kernel::process::By::ALL))]
    pub by: crate::kernel::process::By,
    /// No progress line and no report on the terminal.
    #[arg(short, long)]
    pub quiet: bool,
}

#[derive(Debug, Args)]
pub struct ReportArgs {
    /// Recording to read.
    #[arg(default_value = "ksm-trace.json")]
    pub file: PathBuf,
    /// JSON instead of text.
    #[arg(long, conflicts_with = "csv")]
    pub json: bool,
    /// The counter time series as CSV.
    #[arg(long)]
    pub csv: bool,
    /// Sum the per-process tables by guest or cgroup (JSON always has all three).
    #[arg(long, default_value = "process", value_parser = named(&crate::kernel::process::By::ALL))]
    pub by: crate::kernel::process::By,
}

#[derive(Debug, Args)]
pub struct WorkloadArgs {
    /// procs:N[,...] or vms:N[,...] (see `record --help`).
    pub spec: String,
    /// Stop after this long; default: until the workload ends or Ctrl-C.
    #[arg(short, long, value_parser = parse::duration)]
    pub duration: Option<Duration>,
    #[command(flatten)]
    pub knobs: KnobArgs,
    /// Rebuild cached workload assets (guest kernel and initramfs for vms).
    #[arg(long)]
    pub refresh: bool,
}

/// QEMU guests that already run, traced by name like `--pid`s.
#[derive(Debug, Clone, Args)]
pub struct GuestArgs {
    /// Only this running QEMU guest (repeatable): its name as `virsh list` shows it, or QEMU's
    /// `-name`.
    #[arg(long = "vm", value_name = "NAME")]
    pub vms: Vec<String>,
    /// Only the QEMU guests running at start.
    #[arg(long, conflicts_with = "vms")]
    pub all_vms: bool,
}

impl GuestArgs {
    /// `pids` plus the pids of the guests asked for; a guest name that does not run is refused.
    pub fn with_pids(&self, pids: &[u32]) -> anyhow::Result<Vec<u32>> {
        let mut all = pids.to_vec();
        if self.all_vms || !self.vms.is_empty() {
            all.extend(crate::guest::running::select(&self.vms, self.all_vms)?);
        }
        all.sort_unstable();
        all.dedup();
        Ok(all)
    }
}

/// KSM knobs set for a run and restored afterwards.
#[derive(Debug, Clone, Args)]
pub struct KnobArgs {
    /// KSM pages_to_scan for the run.
    #[arg(long)]
    pub pages_to_scan: Option<u32>,
    /// KSM sleep_millisecs for the run.
    #[arg(long)]
    pub sleep_ms: Option<u32>,
    /// KSM use_zero_pages for the run (merge zero-filled pages with the kernel's zero page).
    #[arg(long, value_parser = ["on", "off"])]
    pub use_zero_pages: Option<String>,
    /// KSM smart_scan for the run (skip pages that did not merge recently).
    #[arg(long, value_parser = ["on", "off"])]
    pub smart_scan: Option<String>,
    /// KSM max_page_sharing for the run (only changeable while no KSM pages exist).
    #[arg(long)]
    pub max_page_sharing: Option<u32>,
    /// KSM advisor_mode for the run: none or scan-time.
    #[arg(long, value_parser = ["none", "scan-time"])]
    pub advisor: Option<String>,
    #[command(flatten)]
    pub advisor_bounds: AdvisorArgs,
}

/// The scan-time advisor's target and bounds (with `--advisor scan-time`).
#[derive(Debug, Clone, Args)]
pub struct AdvisorArgs {
    /// The full-scan time the advisor aims at (advisor_target_scan_time; whole seconds), e.g. 5s.
    #[arg(long, value_parser = parse::duration)]
    pub advisor_target: Option<Duration>,
    /// The most CPU the advisor lets ksmd use, percent of one CPU (advisor_max_cpu).
    #[arg(long)]
    pub advisor_max_cpu: Option<u64>,
    /// The fewest pages_to_scan the advisor picks (advisor_min_pages_to_scan).
    #[arg(long)]
    pub advisor_min_pages: Option<u64>,
    /// The most pages_to_scan the advisor picks (advisor_max_pages_to_scan).
    #[arg(long)]
    pub advisor_max_pages: Option<u64>,
}

impl AdvisorArgs {
    pub fn bounds(&self) -> crate::run::knobs::AdvisorBounds {
        crate::run::knobs::AdvisorBounds {
            target_scan_time_s: self.advisor_target.map(|d| d.as_secs_f64().round() as u64),
            max_cpu: self.advisor_max_cpu,
            min_pages: self.advisor_min_pages,
            max_pages: self.advisor_max_pages,
        }
    }
}

impl KnobArgs {
    pub fn settings(&self) -> crate::run::knobs::KnobSettings {
        crate::run::knobs::KnobSettings {
            pages_to_scan: self.pages_to_scan,
            sleep_ms: self.sleep_ms,
            use_zero_pages: self.use_zero_pages.as_deref().map(|v| v == "on"),
            smart_scan: self.smart_scan.as_deref().map(|v| v == "on"),
            max_page_sharing: self.max_page_sharing,
            advisor: self.advisor.clone(),
            advisor_bounds: self.advisor_bounds.bounds(),
        }
    }
}

#[derive(Debug, Args)]
pub struct CompareArgs {
    /// A's recordings; with no `--`, exactly two files: A then B.
    #[arg(required = true)]
    pub a: Vec<PathBuf>,
    /// B's recordings, after `--`.
    #[arg(last = true)]
    pub b: Vec<PathBuf>,
    /// Compare even when the runs drove different workloads.
    #[arg(long)]
    pub force: bool,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also draw the differential flame graph of the sides' first runs here (SVG).
    #[arg(long)]
    pub flame: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct FlameArgs {
    /// Recording (with a second one: differential graph of the change from the first).
    #[arg(required = true, num_args = 1..=2)]
    pub files: Vec<PathBuf>,
    /// Output file (SVG, or folded text with --folded); folded goes to stdout without it.
    #[arg(short, long)]
    pub output: Option<PathBuf>,
    /// Write folded stacks (`a;b;c N`) instead of an SVG.
    #[arg(long)]
    pub folded: bool,
    /// What the frames are.
    #[arg(long, default_value = "stack", value_parser = named(&View::ALL))]
    pub by: View,
}

/// `--ring-buffer`: the kernel takes a power of two that is a multiple of the page size.
fn ring_buffer_size(text: &str) -> Result<u32, String> {
    let bytes = parse::size(text)?;
    let page = crate::kernel::page_size();
    if !bytes.is_power_of_two() || bytes < page || bytes > 1 << 30 {
        return Err(format!(
            "{text} is not a power of two from {page} bytes to 1G: give e.g. 4k, 64k or 8M"
        ));
    }
    Ok(bytes as u32)
}

/// `--cow-probe`: the modes by name, and `on` for `auto` (what the switch took before it had
/// modes).
fn cow_probe() -> impl TypedValueParser<Value = CowProbe> {
    let names = CowProbe::ALL
        .iter()
        .map(|(_, name, help)| PossibleValue::new(name).help(help))
        .chain([PossibleValue::new("on").hide(true)]);
    PossibleValuesParser::new(names).map(|name| {
        CowProbe::ALL
            .iter()
            .find(|(_, n, _)| *n == name)
            .map_or(CowProbe::Auto, |(v, _, _)| *v)
    })
}

/// A value parser for an enum given as `[(value, name, help)]`: clap lists the names with
/// their help, and the domain type needs no clap derive.
fn named<T: Copy + Send + Sync + 'static>(
    all: &'static [(T, &'static str, &'static str)],
) -> impl TypedValueParser<Value = T> {
    PossibleValuesParser::new(
        all.iter()
            .map(|(_, name, help)| PossibleValue::new(name).help(help)),
    )
    .map(move |name| {
        all.iter()
            .find(|(_, n, _)| *n == name)
            .map(|(v, _, _)| *v)
            .expect("clap only passes listed names")
    })
}

#[derive(Debug, Subcommand)]
pub enum BenchCommand {
    /// The kernel selftest's merge time (ksm_tests -P, or -H with --thp), as a recording.
    #[command(after_help = "\
Examples:
  ksm-trace bench merge --size 100M                       # ksm_tests -P: 100 MiB, identical pages
  ksm-trace bench merge --size 100M --thp                 # ksm_tests -H: on transparent huge pages
  ksm-trace bench merge --merge-latency always -o m.json  # with every merge timed")]
    Merge(MergeBenchArgs),
    /// The kernel selftest's unmerge time (ksm_tests -D): one MADV_UNMERGEABLE call over a
    /// merged region, each round, as a recording.
    #[command(after_help = "\
Examples:
  ksm-trace bench unmerge --size 100M               # ksm_tests -D -s 100, five rounds
  ksm-trace bench unmerge --size 1G --wait 10s      # a larger region needs longer to merge")]
    Unmerge(UnmergeBenchArgs),
    /// What tracing costs ksmd: pages scanned per second, traced vs untraced, in one run.
    #[command(after_help = "\
Examples:
  ksm-trace bench overhead                               # both scenarios, 10 s and 1 s windows: about 35 min
  ksm-trace bench overhead --scenario merging --repetitions 1 --default-repetitions 4   # quicker, noisier")]
    Overhead(OverheadBenchArgs),
}

#[derive(Debug, Args)]
pub struct OverheadBenchArgs {
    /// The workload ksmd scans flat out (the settled scenario).
    #[arg(long, default_value = "procs:3,pages=12000,dup=0.67")]
    pub workload: String,
    /// The merging scenario: the same workload with each worker un-sharing and restoring this
    /// fraction of its identical pages every second, so ksmd keeps merging.
    #[arg(long, default_value_t = 0.02, value_parser = merging_write)]
    pub merging_write: f64,
    /// Which scenarios to measure, in this order.
    #[arg(long, default_value = "settled,merging", value_delimiter = ',', value_parser = named(&crate::bench::overhead::Scenario::ALL))]
    pub scenario: Vec<crate::bench::overhead::Scenario>,
    #[arg(long, default_value_t = 5000)]
    pub pages_to_scan: u32,
    /// Length of each measured window.
    #[arg(long, default_value = "10s", value_parser = parse::duration)]
    pub window: Duration,
    /// Rounds of (traced window per mode, untraced window).
    #[arg(long, default_value_t = 3)]
    pub repetitions: u32,
    /// Windows of the default record per scenario (its figure is the one the 2 % target is
    /// about, so it gets more than the other modes: on a machine whose speed varies ±10 %
    /// from window to window, 12 give about ±4 %; the short windows below do better).
    #[arg(long, default_value_t = 12)]
    pub default_repetitions: u32,
    /// Pairs of (short traced window, short untraced window) that measure the default's two
    /// states — between its sampling windows, and with the bracket attached (every 8th pair) —
    /// from which its ratio is composed: short windows side by side cancel the machine's drift
    /// far better than 10 s ones; 0 skips them.
    #[arg(long, default_value_t = 240)]
    pub short_pairs: u32,
    /// Length of each short window.
    #[arg(long, default_value = "1s", value_parser = parse::duration)]
    pub short_window: Duration,
}

/// A fraction of pages rewritten per second: above 0, at most 1.
fn merging_write(s: &str) -> Result<f64, String> {
    match s.parse::<f64>() {
        Ok(f) if f > 0.0 && f <= 1.0 => Ok(f),
        _ => Err(format!(
            "`{s}` is not a fraction above 0 and at most 1 (e.g. 0.02); use --scenario settled to skip the merging scenario"
        )),
    }
}

#[derive(Debug, Args)]
pub struct MergeBenchArgs {
    /// Size of the region of identical pages (e.g. 100M).
    #[arg(long, default_value = "100M", value_parser = parse::size)]
    pub size: u64,
    /// Back the region with transparent huge pages (ksm_tests -H).
    #[arg(long)]
    pub thp: bool,
    /// pages_to_scan during the run (the selftest's default -p is 10).
    #[arg(long, default_value_t = 10)]
    pub pages_to_scan: u32,
    /// How to time merges (off by default: tracing merges slows ksmd).
    #[arg(long, default_value = "off", value_parser = named(&LatencyMode::ALL))]
    pub merge_latency: LatencyMode,
    /// Whose conditions: the region's owner busy (ksm_tests'), idle, or both in turn.
    #[arg(long, default_value = "busy,idle", value_delimiter = ',', value_parser = named(&crate::bench::Owner::ALL))]
    pub owner: Vec<crate::bench::Owner>,
    /// Give up after this long.
    #[arg(long, default_value = "120s", value_parser = parse::duration)]
    pub timeout: Duration,
    #[arg(short, long, default_value = "ksm-trace-bench.json")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct UnmergeBenchArgs {
    /// Size of the region of identical pages (e.g. 100M).
    #[arg(long, default_value = "100M", value_parser = parse::size)]
    pub size: u64,
    /// Timed calls, one per round.
    #[arg(long, default_value_t = 5)]
    pub rounds: u32,
    /// Time each round gives ksmd to merge the region before the call.
    #[arg(long, default_value = "3s", value_parser = parse::duration)]
    pub wait: Duration,
    /// pages_to_scan while ksmd merges the region (sleep_millisecs=0).
    #[arg(long, default_value_t = 5000)]
    pub pages_to_scan: u32,
    #[arg(short, long, default_value = "ksm-trace-bench-unmerge.json")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct SweepArgs {
    /// The workload each configuration starts afresh.
    #[arg(short, long)]
    pub workload: String,
    /// pages_to_scan values, e.g. 100,1000,5000.
    #[arg(long, value_delimiter = ',')]
    pub pages_to_scan: Vec<u32>,
    /// sleep_millisecs values, e.g. 20,200.
    #[arg(long, value_delimiter = ',')]
    pub sleep_ms: Vec<u32>,
    /// smart_scan values: on,off.
    #[arg(long, value_delimiter = ',', value_parser = parse::on_off)]
    pub smart_scan: Vec<bool>,
    /// use_zero_pages values: on,off.
    #[arg(long, value_delimiter = ',', value_parser = parse::on_off)]
    pub use_zero_pages: Vec<bool>,
    /// max_page_sharing values.
    #[arg(long, value_delimiter = ',')]
    pub max_page_sharing: Vec<u32>,
    /// advisor_mode values: none,scan-time.
    #[arg(long, value_delimiter = ',', value_parser = ["none", "scan-time"])]
    pub advisor: Vec<String>,
    /// The scan-time advisor's target and bounds, for its configurations.
    #[command(flatten)]
    pub advisor_bounds: AdvisorArgs,
    /// Length of each configuration's recording (the timeout with --until-settled).
    #[arg(short, long, value_parser = parse::duration, default_value = "30s")]
    pub duration: Duration,
    /// End each configuration once KSM has settled.
    #[arg(long)]
    pub until_settled: bool,
    /// Same as --duration, for use with --until-settled.
    #[arg(long, value_parser = parse::duration)]
    pub timeout: Option<Duration>,
    /// Interval of each recording's time series.
    #[arg(long, default_value = "1s", value_parser = parse::duration)]
    pub interval: Duration,
    #[arg(long, default_value = "auto", value_parser = named(&LatencyMode::ALL))]
    pub merge_latency: LatencyMode,
    /// Directory for the recordings and the summary.
    #[arg(short, long, default_value = "ksm-trace-sweep")]
    pub output: PathBuf,
    /// First record the workload with KSM off; the summary then gives each configuration's
    /// impact: the workload's throughput (sysbench tps in vms guests) ÷ that without KSM.
    #[arg(long)]
    pub baseline: bool,
}

#[derive(Debug, Args)]
pub struct PlotArgs {
    /// Recording to read.
    #[arg(default_value = "ksm-trace.json")]
    pub file: PathBuf,
    /// Directory for the charts.
    #[arg(short, long, default_value = "ksm-trace-plots")]
    pub output: PathBuf,
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// Only these processes (repeatable); default: every process with memory opted in, and
    /// every QEMU guest.
    #[arg(short, long = "pid")]
    pub pids: Vec<u32>,
    /// Only the QEMU guests with these names (-name), repeatable.
    #[arg(long = "vm")]
    pub vms: Vec<String>,
    /// Every process with memory opted in, and every QEMU guest (the default, said outright).
    #[arg(long, conflicts_with_all = ["pids", "vms"])]
    pub all: bool,
    /// What a group is.
    #[arg(long, default_value = "process", value_parser = named(&crate::kernel::process::By::ALL))]
    pub by: crate::kernel::process::By,
    /// Name every mapping that holds memory KSM never merges (default: the largest three
    /// shared and three file mappings of each process).
    #[arg(long)]
    pub vmas: bool,
    /// Read about this many pages' contents (4 KiB each; about 10 s at 400 000 pages/s): with
    /// more opted-in memory than that, a uniform random sample of this size is read, and what
    /// the contents decide is an estimate with its 95 % interval.
    #[arg(long, default_value_t = 4 << 20, value_parser = clap::value_parser!(u64).range(1..))]
    pub max_pages: u64,
    /// Read every page, however many (exact counts; the time and memory grow with the host).
    #[arg(long, conflicts_with = "max_pages")]
    pub full: bool,
    /// The random sample's seed: the same seed on unchanged memory takes the same sample
    /// (printed with every sampled answer).
    #[arg(long)]
    pub seed: Option<u64>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct SharingArgs {
    /// A recording: its traced matrix (merge events, reconciled with the snapshot taken at the
    /// window's end).
    #[arg(required_unless_present = "now", conflicts_with = "now")]
    pub file: Option<PathBuf>,
    /// Take a snapshot of the page tables now instead (no tracing, nothing changed).
    #[arg(long)]
    pub now: bool,
    /// With a recording: its end snapshot (which also holds pages merged before the window)
    /// instead of the traced matrix.
    #[arg(long, requires = "file")]
    pub snapshot: bool,
    /// What a group is.
    #[arg(long, default_value = "process", value_parser = named(&crate::kernel::process::By::ALL))]
    pub by: crate::kernel::process::By,
    /// Trust domains as cgroup path prefixes (e.g. /tenant-a,/tenant-b): pages mapped from
    /// more than one are reported as shared across a boundary.
    #[arg(long, value_delimiter = ',')]
    pub domains: Vec<String>,
    /// With --now: only these processes (repeatable); default: every process with KSM pages.
    #[arg(short, long = "pid", requires = "now")]
    pub pids: Vec<u32>,
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also draw the matrix as a heatmap (SVG) here.
    #[arg(long)]
    pub svg: Option<PathBuf>,
}

#[derive(Debug, Args)]
pub struct DoctorArgs {
    /// JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

#[derive(Debug, Args)]
pub struct LabArgs {
    /// Kernel to run the scenario on: debian-6.12, debian-6.1 (booted under QEMU), the path of
    /// a kernel image you built (arch/x86/boot/bzImage; docs/lab.md lists the config it
    /// needs), or host (the running kernel, no guest: it drives the host's KSM and restores its
    /// knobs).
    #[arg(long, default_value = "debian-6.12")]
    pub kernel: String,
    /// Run the scenario on two kernels (names or paths, as --kernel takes them), alternating,
    /// and print `compare`'s table of their recordings.
    #[arg(long, num_args = 2, value_names = ["A", "B"])]
    pub compare: Option<Vec<String>>,
    /// With --compare: runs on each kernel.
    #[arg(long, default_value = "1")]
    pub runs: u32,
    /// Re-download the kernel and rebuild the guest image.
    #[arg(long)]
    pub refresh: bool,
    /// Give up on the guest after this long (the scenario runs under emulation).
    #[arg(long, default_value = "10m", value_parser = parse::duration)]
    pub timeout: Duration,
    /// Also save the guest's whole console output here.
    #[arg(long)]
    pub console: Option<PathBuf>,
    /// Print the scenario's whole transcript (each step's exit code, output, the recording and
    /// the kernel counters read around it) as JSON instead of the summary.
    #[arg(long)]
    pub json: bool,
}

impl LabArgs {
    pub fn options(&self) -> crate::lab::LabOptions {
        crate::lab::LabOptions {
            kernel: self.kernel.clone(),
            refresh: self.refresh,
            timeout: self.timeout,
            console: self.console.clone(),
            json: self.json,
            compare: self.compare.as_ref().map(|k| (k[0].clone(), k[1].clone())),
            runs: self.runs,
        }
    }
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn command_line_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn bad_durations_and_sizes_are_refused_naming_the_option() {
        for (args, option) in [
            (&["record", "--duration", "1e20"][..], "--duration"),
            (&["record", "--duration", "1e19"], "--duration"),
            (&["record", "--interval", "NaN"], "--interval"),
            (&["workload", "procs:2", "-d", "inf"], "--duration"),
            (&["sweep", "-w", "procs:2", "--timeout", "31d"], "--timeout"),
            (&["bench", "merge", "--size", "2000G"], "--size"),
            (&["bench", "overhead", "--window=-1s"], "--window"),
        ] {
            let err = Cli::try_parse_from(std::iter::once("ksm-trace").chain(args.iter().copied()))
                .unwrap_err();
            assert_eq!(
                err.kind(),
                clap::error::ErrorKind::ValueValidation,
                "{args:?}"
            );
            let text = err.to_string();
            assert!(text.contains(option), "{text}");
            assert!(text.contains("give"), "{text}");
        }
    }

    #[test]
    fn flame_views_by_name() {
        let Command::Flame(args) =
            Cli::try_parse_from(["ksm-trace", "flame", "a.json", "--by", "process"])
                .unwrap()
                .command
        else {
            panic!("not flame")
        };
        assert_eq!(args.by, crate::flame::View::Process);
        assert!(Cli::try_parse_from(["ksm-trace", "flame", "a.json", "--by", "pid"]).is_err());
    }

    #[test]
    fn on_off_switches_take_a_value() {
        let record = |args: &[&str]| match Cli::try_parse_from(
            ["ksm-trace", "record"].iter().chain(args).copied(),
        )
        .map(|cli| cli.command)
        {
            Ok(Command::Record(args)) => Ok((args.switches.batches, args.switches.cow_probe)),
            Ok(_) => panic!("not record"),
            Err(err) => Err(err.kind()),
        };
        assert_eq!(record(&[]), Ok((true, CowProbe::Auto)));
        assert_eq!(
            record(&["--batches", "off", "--cow-probe", "off"]),
            Ok((false, CowProbe::Off))
        );
        assert_eq!(record(&["--batches=on"]), Ok((true, CowProbe::Auto)));
        assert!(record(&["--batches"]).is_err(), "a bare switch is refused");
        // The COW probe's modes, and `on` as before.
        assert_eq!(
            record(&["--cow-probe", "fault-tracepoint"]),
            Ok((true, CowProbe::FaultTracepoint))
        );
        assert_eq!(record(&["--cow-probe", "on"]), Ok((true, CowProbe::Auto)));
        assert!(record(&["--cow-probe", "sometimes"]).is_err());
    }

    #[test]
    fn verbose_counts_and_is_global() {
        let cli = Cli::try_parse_from(["ksm-trace", "doctor", "-vv"]).unwrap();
        assert_eq!(cli.verbose, 2);
        assert_eq!(
            Cli::try_parse_from(["ksm-trace", "-v", "doctor"])
                .unwrap()
                .verbose,
            1
        );
    }
}

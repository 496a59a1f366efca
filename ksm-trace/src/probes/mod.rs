//! The kernel side as seen from user space: what the kernel allows ([`capabilities`]), BTF
//! offsets ([`btf`]), and loading and attaching the chosen programs. Dropping [`Probes`] detaches
//! everything.
pub mod bracket;
pub mod btf;
pub mod capabilities;
pub mod profile;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, KProbe, RawTracePoint, raw_trace_point::RawTracePointLinkId},
};
use ksm_trace_common::{
    Config, NO_OFFSET, counter, names,
    programs::{self, RawTracepoint},
};

pub use crate::recording::schema::LatencyMode;
use crate::recording::schema::{
    AttributionMechanism, BatchMechanism, BracketAttach, CowMechanism, EventSource, Mechanisms,
    MergeLatencyMechanism, ShootdownMechanism, UnmergeMechanism,
};
pub use capabilities::Capabilities;

impl LatencyMode {
    /// Every mode: its name (as `--merge-latency` takes it) and what it does.
    pub const ALL: [(LatencyMode, &'static str, &'static str); 4] = [
        (
            LatencyMode::Auto,
            "auto",
            "fentry/fexit where allowed; else the mmap_lock bracket, sampled: 50 ms when merges start, one window per 5 s",
        ),
        (
            LatencyMode::Always,
            "always",
            "fentry/fexit where allowed; else the mmap_lock bracket for the whole run",
        ),
        (
            LatencyMode::Both,
            "both",
            "fentry/fexit and the bracket on the same merges, to compare them",
        ),
        (LatencyMode::Off, "off", "no merge latency"),
    ];
}

/// Where the KSM events come from (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The ksm:* tracepoints where the kernel has them, else the function probes.
    Auto,
    /// The ksm:* tracepoints (Linux ≥ 6.4).
    Tracepoints,
    /// Function probes on mm/ksm.c ([`programs::FUNCTIONS`]) through fentry/fexit, also
    /// where the tracepoints exist: to compare the two on one kernel.
    Functions,
    /// The same function probes through kprobes/kretprobes, also where fentry is allowed: to
    /// prove the path kernels that refuse fentry take.
    Kprobes,
}

/// Where the events come from, as chosen on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Source {
    Tracepoints,
    /// fentry/fexit; with `or_kprobes`, kprobes where fentry is refused.
    Fentry {
        or_kprobes: bool,
    },
    Kprobes,
}

/// Whether the kernel can attach kprobes (aya attaches them through the perf kprobe PMU).
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

impl Backend {
    pub const ALL: [(Backend, &'static str, &'static str); 4] = [
        (
            Backend::Auto,
            "auto",
            "the ksm tracepoints where the kernel has them, else function probes",
        ),
        (
            Backend::Tracepoints,
            "tracepoints",
            "the ksm:* tracepoints (Linux 6.4 and later)",
        ),
        (
            Backend::Functions,
            "functions",
            "function probes on mm/ksm.c (fentry/fexit), even where the tracepoints exist",
        ),
        (
            Backend::Kprobes,
            "kprobes",
            "the function probes through kprobes/kretprobes, even where fentry is allowed",
        ),
    ];

    /// Refuses, in one line, a backend asked for by name that this kernel cannot run: for a
    /// command to call before it changes anything.
    pub fn check(self, caps: &Capabilities) -> Result<()> {
        self.source(caps, kprobes_available()).map(drop)
    }

    /// Where events come from on this kernel; Err says, in one line, why a backend asked for
    /// by name cannot run here.
    fn source(self, caps: &Capabilities, kprobes: bool) -> Result<Source> {
        let has_tracepoints = programs::KSM
            .iter()
            .any(|tp| caps.has_tracepoint(tp.tracepoint));
        let functions = |flag: &str| {
            let missing = caps.function_backend_missing();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(anyhow!(
                    "--backend {flag}: this kernel ({}) lacks what the function probes need ({}): use --backend auto",
                    caps.kernel_release,
                    missing.join(", ")
                ))
            }
        };
        match self {
            Backend::Auto if caps.function_backend() => Ok(Source::Fentry {
                or_kprobes: kprobes,
            }),
            Backend::Auto => Ok(Source::Tracepoints),
            Backend::Tracepoints if has_tracepoints => Ok(Source::Tracepoints),
            Backend::Tracepoints => Err(anyhow!(
                "--backend tracepoints: this kernel ({}) has no ksm tracepoints (they arrived in Linux 6.4): use --backend auto",
                caps.kernel_release
            )),
            Backend::Functions => {
                functions("functions").map(|()| Source::Fentry { or_kprobes: false })
            }
            Backend::Kprobes if !kprobes => Err(anyhow!(
                "--backend kprobes: this kernel ({}) has no kprobes (CONFIG_KPROBES, or no perf kprobe PMU): use --backend auto",
                caps.kernel_release
            )),
            Backend::Kprobes => functions("kprobes").map(|()| Source::Kprobes),
        }
    }
}

pub struct Probes {
    ebpf: Ebpf,
    bracket_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// The bracket can be armed (attached) at all.
    pub bracket_usable: bool,
    pub fexit_attached: bool,
    pub mechanisms: Mechanisms,
    profile_hz: u64,
}

/// The programs, built by build.rs from ksm-trace-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ksm-trace"));

/// What to load: how to time merges, the ring buffer's size, and the two probes that fire for
/// every process on the machine (COW faults, context switches), which a user may turn off.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ProbeOptions {
    pub latency: LatencyMode,
    /// A power of two, a multiple of the page size: small ones make lost events on purpose.
    pub ring_buffer_bytes: u32,
    /// fentry/fexit on do_wp_page (per-process COW breaks), where the kernel allows it.
    pub cow: bool,
    /// sched_switch (ksmd's batches and CPU time).
    pub batches: bool,
    /// tlb_flush (TLB shootdowns per merge).
    pub tlb: bool,
    pub backend: Backend,
    /// ksmd's stack samples per second of its CPU time; 0: no profile.
    pub profile_hz: u64,
}

impl ProbeOptions {
    pub fn new(latency: LatencyMode) -> Self {
        Self {
            latency,
            ring_buffer_bytes: ksm_trace_common::EVENTS_BYTES,
            cow: true,
            batches: true,
            tlb: false,
            backend: Backend::Auto,
            profile_hz: profile::DEFAULT_HZ,
        }
    }
}

impl Probes {
    /// Loads the programs and attaches those the kernel allows, choosing the best mechanism
    /// for each measurement and saying in [`Mechanisms`] what it chose and what it fell back
    /// from. The mmap_lock bracket is loaded but attached only by [`Probes::arm_bracket`].
    pub fn load(caps: &Capabilities, ksmd: u32, latency: LatencyMode) -> Result<Self> {
        Self::load_with(caps, ksmd, ProbeOptions::new(latency))
    }

    /// [`Probes::load`] with every choice a user can make.
    pub fn load_with(caps: &Capabilities, ksmd: u32, options: ProbeOptions) -> Result<Self> {
        let ProbeOptions {
            latency,
            ring_buffer_bytes: events_bytes,
            cow: want_cow,
            batches: want_batches,
            tlb: want_tlb,
            backend,
            profile_hz,
        } = options;
        let source = backend.source(caps, kprobes_available())?;
        let mut config: Config = caps.config(ksmd, source != Source::Tracepoints);
        // The function backend's zero-page probe compares each merge's KSM page with the zero
        // page; the tracepoints say which merges are zero-page merges themselves.
        let zero_pfn = (source != Source::Tracepoints).then(crate::kernel::pagemap::zero_page_pfn);
        if let Some(Ok(pfn)) = &zero_pfn {
            config.zero_pfn = *pfn;
        }
        if PROGRAMS.is_empty() {
            return Err(anyhow!(
                "this ksm-trace was built without its eBPF programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
            ));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CONFIG, &config, true)
            .map_max_entries(names::EVENTS, events_bytes)
            .load(PROGRAMS)
            .map_err(|e| anyhow!("loading the eBPF object: {}", one_line(&e.to_string())))?;
        let mut fallbacks = Vec::new();

        // aya needs its own parse of the kernel's BTF to load fentry/fexit: once, and only if
        // a function probe is wanted.
        let btf = std::cell::OnceCell::new();
        let kernel_btf = || -> Result<&aya::Btf> {
            if btf.get().is_none() {
                let parsed = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
                let _ = btf.set(parsed);
            }
            Ok(btf.get().expect("just set"))
        };

        let functions = programs::FUNCTIONS.map(|f| f.function).join(", ");
        let why = match backend {
            Backend::Functions => "--backend functions",
            Backend::Kprobes => "--backend kprobes",
            _ => "no ksm:* tracepoints (Linux < 6.4)",
        };
        let events = match source {
            Source::Tracepoints => {
                for tp in &programs::KSM {
                    match caps.raw_tracepoint(tp) {
                        Ok(()) => attach_raw(&mut ebpf, tp)?,
                        Err(why) => {
                            fallbacks.push(format!("ksm:{}: not traced ({why})", tp.tracepoint))
                        }
                    }
                }
                EventSource::Tracepoints
            }
            Source::Fentry { or_kprobes } => {
                match kernel_btf().and_then(|btf| attach_function_backend(&mut ebpf, caps, btf)) {
                    Ok(()) => EventSource::Functions,
                    Err(e) if or_kprobes => {
                        fallbacks.push(format!(
                            "fentry/fexit on the KSM functions refused ({e:#}): kprobes instead"
                        ));
                        attach_kprobe_backend(&mut ebpf).map_err(|k| {
                            anyhow!(
                                "this kernel ({}): {why}, and neither fentry ({e:#}) nor kprobes ({k:#}) could attach to the KSM functions: run `ksm-trace doctor`",
                                caps.kernel_release
                            )
                        })?;
                        EventSource::Kprobes
                    }
                    Err(e) => {
                        return Err(anyhow!(
                            "this kernel ({}): {why}, and the function probes could not attach ({e:#}): run `ksm-trace doctor`",
                            caps.kernel_release
                        ));
                    }
                }
            }
            Source::Kprobes => {
                attach_kprobe_backend(&mut ebpf).map_err(|e| {
                    anyhow!(
                        "this kernel ({}): --backend kprobes: the kprobes could not attach ({e:#}): run `ksm-trace doctor`",
                        caps.kernel_release
                    )
                })?;
                EventSource::Kprobes
            }
        };
        if events != EventSource::Tracepoints {
            let how = if events == EventSource::Kprobes {
                "kprobes/kretprobes"
            } else {
                "fentry/fexit"
            };
            fallbacks.push(format!(
                "{why}: events from {how} on {functions}; full scans end at ksmd's switch-out that sees ksm_scan.seqnr move"
            ));
            let zero = zero_pfn
                .expect("set for the function backend")
                .map_err(|e| format!("the zero page's pfn is unknown ({e:#})"))
                .and_then(|pfn| {
                    caps.zero_page_probe()?;
                    match events {
                        EventSource::Kprobes => attach_zero_page_kprobes(&mut ebpf),
                        _ => kernel_btf()
                            .and_then(|btf| attach_zero_page_fexit(&mut ebpf, caps, btf)),
                    }
                    .map(|()| pfn)
                    .map_err(|e| format!("{e:#}"))
                });
            fallbacks.push(match zero {
                Ok(pfn) => format!(
                    "zero-page merges (use_zero_pages) from {} on {} whose kpage is the zero page (pfn {pfn})",
                    if events == EventSource::Kprobes { "kprobe/kretprobe" } else { "fexit" },
                    programs::ZERO_PAGE_MERGE.function
                ),
                Err(e) => format!("zero-page merges (use_zero_pages) are not traced: {e}"),
            });
        }

        let batches = match caps.raw_tracepoint(&programs::SCHED_SWITCH) {
            // sched_switch fires on every context switch of every process: its own switch.
            _ if !want_batches => BatchMechanism::Off,
            Ok(()) if config.task_pid != NO_OFFSET => {
                attach_raw(&mut ebpf, &programs::SCHED_SWITCH)?;
                fallbacks.push(if caps.functions.get("ksm_do_scan").copied().unwrap_or(false) {
                    "ksm_do_scan is a function on this kernel, but batches still come from sched_switch (fentry on it is not implemented)".into()
                } else {
                    "ksm_do_scan is inlined on this kernel (not in BTF): batches are ksmd's on-CPU stretches from sched_switch".into()
                });
                BatchMechanism::SchedSwitch
            }
            Ok(()) => {
                fallbacks.push("no ksmd batches: task_struct.pid missing from BTF".into());
                BatchMechanism::Unavailable
            }
            Err(why) => {
                fallbacks.push(format!("no ksmd batches: sched_switch {why}"));
                BatchMechanism::Unavailable
            }
        };

        let attribution = if config.mm_owner == NO_OFFSET {
            fallbacks.push("mm_struct.owner missing from BTF (CONFIG_MEMCG=n): merges are not attributed to processes".into());
            AttributionMechanism::Unavailable
        } else {
            AttributionMechanism::MmOwner {
                mm_owner: config.mm_owner,
                task_tgid: config.task_tgid,
                task_comm: config.task_comm,
            }
        };

        if events != EventSource::Tracepoints && batches != BatchMechanism::SchedSwitch {
            fallbacks.push(
                "full scans are not traced: with the function backend their end is seen at ksmd's switch-out (sched_switch), which is off".into(),
            );
        }

        let mut fexit_attached = false;
        if latency != LatencyMode::Off {
            match kernel_btf().and_then(|btf| attach_fexit(&mut ebpf, caps, btf)) {
                Ok(()) => fexit_attached = true,
                Err(e) => fallbacks.push(format!(
                    "fentry/fexit on {} unavailable ({e}); merge latency from the mmap_lock tracepoint bracket instead",
                    programs::MERGE_FUNCTION
                )),
            }
        }
        // do_wp_page runs on every write-protect fault of every process: its own switch.
        let cow =
            match want_cow.then(|| kernel_btf().and_then(|btf| attach_cow(&mut ebpf, caps, btf))) {
                None => CowMechanism::Off,
                Some(Ok(())) => CowMechanism::DoWpPage {
                    vmemmap_from_merges: caps.vmemmap_base.is_none(),
                },
                Some(Err(e)) => {
                    fallbacks.push(format!(
                    "fentry/fexit on {} unavailable ({e}): COW breaks only as the global cow_ksm",
                    programs::COW_FUNCTION
                ));
                    CowMechanism::Unavailable
                }
            };

        // unmerge_ksm_pages runs only when something unmerges: always attached where it can be.
        let unmerge = if !caps
            .functions
            .get(programs::UNMERGE_FUNCTION)
            .copied()
            .unwrap_or(false)
        {
            fallbacks.push(format!(
                "no unmerge latency from the kernel: {} is not in BTF (inlined)",
                programs::UNMERGE_FUNCTION
            ));
            UnmergeMechanism::Unavailable
        } else {
            let fentry = if events == EventSource::Kprobes {
                Err(anyhow!("--backend kprobes"))
            } else {
                kernel_btf().and_then(|btf| {
                    attach_function(
                        &mut ebpf,
                        caps,
                        btf,
                        programs::UNMERGE_ENTRY,
                        programs::UNMERGE_EXIT,
                        programs::UNMERGE_FUNCTION,
                    )
                })
            };
            match fentry {
                Ok(()) => UnmergeMechanism::Fentry,
                Err(_) if kprobes_available() => {
                    attach_kprobes(
                        &mut ebpf,
                        &[
                            (programs::UNMERGE_KPROBE, programs::UNMERGE_FUNCTION),
                            (programs::UNMERGE_KRETPROBE, programs::UNMERGE_FUNCTION),
                        ],
                    )?;
                    UnmergeMechanism::Kprobes
                }
                Err(e) => {
                    fallbacks.push(format!(
                        "no unmerge latency from the kernel: fentry/fexit on {} unavailable ({e}) and no kprobes; the procs workload's `unmerge=F` times its own calls",
                        programs::UNMERGE_FUNCTION
                    ));
                    UnmergeMechanism::Unavailable
                }
            }
        };

        // tlb_flush fires on TLB flushes of every process: only when asked for.
        let tlb_shootdowns = match caps.raw_tracepoint(&programs::TLB_FLUSH) {
            _ if !want_tlb => ShootdownMechanism::Off,
            Ok(()) => {
                attach_raw(&mut ebpf, &programs::TLB_FLUSH)?;
                let ipis = programs::IPI_SEND.iter().all(|tp| {
                    caps.raw_tracepoint(tp)
                        .map_err(|why| {
                            fallbacks.push(format!(
                                "TLB flushes per merge are those asked for, not the IPIs sent: {} {why}",
                                tp.tracepoint
                            ))
                        })
                        .is_ok()
                });
                if ipis {
                    for tp in &programs::IPI_SEND {
                        attach_raw(&mut ebpf, tp)?;
                    }
                }
                ShootdownMechanism::TlbFlush { ipis }
            }
            Err(why) => {
                fallbacks.push(format!("no TLB shootdowns per merge: tlb_flush {why}"));
                ShootdownMechanism::Unavailable
            }
        };

        let bracket_present = latency != LatencyMode::Off
            && programs::BRACKET.iter().all(|tp| {
                caps.raw_tracepoint(tp)
                    .map_err(|why| {
                        fallbacks.push(format!("no mmap_lock bracket: {} {why}", tp.tracepoint))
                    })
                    .is_ok()
            });
        if bracket_present {
            for tp in &programs::BRACKET {
                program::<RawTracePoint>(&mut ebpf, tp.program)?
                    .load()
                    .map_err(|e| load_error(tp.program, e))?;
            }
        }
        let merge_latency = match (latency, fexit_attached, bracket_present) {
            (LatencyMode::Off, ..) => MergeLatencyMechanism::Off,
            (LatencyMode::Both, true, true) => MergeLatencyMechanism::FexitAndBracket,
            (_, true, _) => MergeLatencyMechanism::Fexit,
            (mode, false, true) => MergeLatencyMechanism::Bracket {
                attached: if mode == LatencyMode::Auto {
                    BracketAttach::OnMerges {
                        on_ms: bracket::SAMPLE_ON.as_millis() as u32,
                        period_ms: bracket::SAMPLE_PERIOD.as_millis() as u32,
                    }
                } else {
                    BracketAttach::Always
                },
            },
            (_, false, false) => MergeLatencyMechanism::Unavailable,
        };

        Ok(Self {
            ebpf,
            bracket_links: Vec::new(),
            bracket_usable: bracket_present && !(fexit_attached && latency != LatencyMode::Both),
            fexit_attached,
            profile_hz,
            mechanisms: Mechanisms {
                events,
                merge_latency,
                batches,
                attribution,
                cow,
                tlb_shootdowns,
                unmerge,
                fallbacks,
            },
        })
    }

    pub fn bracket_armed(&self) -> bool {
        !self.bracket_links.is_empty()
    }

    /// Attaches the mmap_lock bracket.
    pub fn arm_bracket(&mut self) -> Result<()> {
        if !self.bracket_usable || self.bracket_armed() {
            return Ok(());
        }
        for tp in &programs::BRACKET {
            let link = program::<RawTracePoint>(&mut self.ebpf, tp.program)?
                .attach(tp.tracepoint)
                .with_context(|| format!("attaching {} to {}", tp.program, tp.tracepoint))?;
            self.bracket_links.push((tp.program, link));
        }
        Ok(())
    }

    /// Detaches the mmap_lock bracket.
    pub fn disarm_bracket(&mut self) -> Result<()> {
        for (prog, link) in std::mem::take(&mut self.bracket_links) {
            program::<RawTracePoint>(&mut self.ebpf, prog)?.detach(link)?;
        }
        // An interval the detach cut off (acquired, never released) would otherwise time the
        // next merge on that mm, however much later, as one long merge.
        let map = self
            .ebpf
            .map_mut(names::INTERVALS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", names::INTERVALS))?;
        aya::maps::Array::<_, ksm_trace_common::Interval>::try_from(map)?.set(
            ksm_trace_common::interval::BRACKET,
            ksm_trace_common::Interval::default(),
            0,
        )?;
        Ok(())
    }

    /// Starts sampling ksmd's kernel stacks at the rate asked for (none at 0); says why not
    /// if the kernel refuses.
    pub fn start_profile(&mut self, ksmd: u32) -> Result<()> {
        if self.profile_hz == 0 {
            return Ok(());
        }
        profile::attach(&mut self.ebpf, ksmd, self.profile_hz)
    }

    pub fn profile(&self) -> Result<profile::Profile> {
        profile::collect(
            &self.ebpf,
            self.counter(counter::STACKS_LOST)?,
            self.profile_hz,
        )
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", names::EVENTS))?;
        Ok(RingBuf::try_from(map)?)
    }

    /// [`Self::take_events`], pollable for the wake-up when merges start (inside a tokio
    /// runtime).
    pub fn take_event_ring(&mut self) -> Result<bracket::EventRing> {
        let ring = self.take_events()?;
        // SAFETY: the ring buffer owns its map's fd, which stays open, the same fd, until the
        // ring buffer is dropped, and the AsyncFd owns the ring buffer.
        let ring = unsafe {
            bracket::EventRing::register_with_interest(ring, tokio::io::Interest::READABLE)
        };
        ring.map_err(|e| anyhow!("polling the events ring buffer: {}", e.into_parts().1))
    }

    /// Each loaded program's run time (ns) and number of runs, as the kernel accounts them
    /// while BPF_ENABLE_STATS is on (zeros otherwise).
    pub fn run_stats(&self) -> Vec<(String, (u64, u64))> {
        self.ebpf
            .programs()
            .filter_map(|(name, program)| {
                let info = program.info().ok()?;
                Some((
                    name.to_owned(),
                    (info.run_time().as_nanos() as u64, info.run_count()),
                ))
            })
            .collect()
    }

    /// Events the kernel side dropped because the ring buffer was full.
    pub fn lost_events(&self) -> Result<u64> {
        self.counter(counter::EVENTS_LOST)
    }

    fn counter(&self, index: u32) -> Result<u64> {
        let map = self
            .ebpf
            .map(names::COUNTERS)
            .ok_or_else(|| anyhow!("map {} missing", names::COUNTERS))?;
        let counters = PerCpuArray::<_, u64>::try_from(map)?;
        Ok(counters.get(&index, 0)?.iter().sum())
    }
}

fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = aya::programs::ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(prog.try_into()?)
}

fn attach_raw(ebpf: &mut Ebpf, tp: &RawTracepoint) -> Result<()> {
    let p = program::<RawTracePoint>(ebpf, tp.program)?;
    p.load().map_err(|e| load_error(tp.program, e))?;
    p.attach(tp.tracepoint).with_context(|| {
        format!(
            "attaching {} to raw tracepoint {}",
            tp.program, tp.tracepoint
        )
    })?;
    Ok(())
}

/// A load failure in one line: aya puts the verifier's whole log into the error, which belongs
/// in `-v` output, not in a one-line error or a recording's fallbacks.
fn load_error(prog: &str, e: aya::programs::ProgramError) -> anyhow::Error {
    if let aya::programs::ProgramError::LoadError { verifier_log, .. } = &e {
        log::debug!("verifier log for {prog}:\n{verifier_log}");
    }
    anyhow!("loading {prog}: {}", one_line(&e.to_string()))
}

/// The first line of a multi-line message, saying that more is shown with -v.
fn one_line(text: &str) -> String {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or_default().trim().to_owned();
    if lines.next().is_some() {
        format!("{first} (the verifier's log is shown with -vv)")
    } else {
        first
    }
}

/// Why a tracing program could not load, in words a user can act on.
fn refused(caps: &Capabilities, e: aya::programs::ProgramError) -> anyhow::Error {
    let eperm = matches!(&e, aya::programs::ProgramError::LoadError { io_error, .. }
        if io_error.raw_os_error() == Some(libc::EPERM));
    match (caps.lockdown.as_deref().filter(|l| *l != "none"), eperm) {
        (Some(l), _) => anyhow!("the kernel refused to load it: lockdown={l}"),
        (None, true) => anyhow!(
            "BPF_PROG_LOAD returned EPERM as root, which is how kernel lockdown refuses tracing programs"
        ),
        (None, false) => load_error("it", e),
    }
}

/// fentry/fexit on `do_wp_page`, counting write faults on KSM pages.
fn attach_cow(ebpf: &mut Ebpf, caps: &Capabilities, btf: &aya::Btf) -> Result<()> {
    const FUNCTION: &str = programs::COW_FUNCTION;
    if !caps.functions.get(FUNCTION).copied().unwrap_or(false) {
        return Err(anyhow!("{FUNCTION} is not in BTF (inlined)"));
    }
    if !cfg!(target_arch = "x86_64") {
        return Err(anyhow!(
            "the KSM-page check reads x86-64 page table entries"
        ));
    }
    for needed in ["vm_fault.orig_pte", "page.mapping"] {
        if caps.offset(needed) == NO_OFFSET {
            return Err(anyhow!("{needed} missing from BTF"));
        }
    }
    if caps.page_struct_size.is_none() {
        return Err(anyhow!("struct page not in BTF"));
    }
    attach_function(
        ebpf,
        caps,
        btf,
        programs::COW_ENTRY,
        programs::COW_EXIT,
        FUNCTION,
    )
}

fn attach_fexit(ebpf: &mut Ebpf, caps: &Capabilities, btf: &aya::Btf) -> Result<()> {
    const FUNCTION: &str = programs::MERGE_FUNCTION;
    if !caps.functions.get(FUNCTION).copied().unwrap_or(false) {
        return Err(anyhow!("{FUNCTION} is not in BTF (inlined)"));
    }
    if caps.offset("vm_area_struct.vm_mm") == NO_OFFSET {
        return Err(anyhow!("vm_area_struct.vm_mm missing from BTF"));
    }
    attach_function(
        ebpf,
        caps,
        btf,
        programs::MERGE_ENTRY,
        programs::MERGE_EXIT,
        FUNCTION,
    )
}

/// The function backend ([`programs::FUNCTIONS`]): every program loads before any attaches,
/// so a refusal leaves nothing attached.
fn attach_function_backend(ebpf: &mut Ebpf, caps: &Capabilities, btf: &aya::Btf) -> Result<()> {
    use programs::Hook;
    for f in &programs::FUNCTIONS {
        let loaded = match f.hook {
            Hook::Entry => program::<FEntry>(ebpf, f.program)?.load(f.function, btf),
            Hook::Exit => program::<FExit>(ebpf, f.program)?.load(f.function, btf),
        };
        loaded.map_err(|e| refused(caps, e).context(format!("{} on {}", f.program, f.function)))?;
    }
    for f in &programs::FUNCTIONS {
        match f.hook {
            Hook::Entry => program::<FEntry>(ebpf, f.program)?.attach().map(drop)?,
            Hook::Exit => program::<FExit>(ebpf, f.program)?.attach().map(drop)?,
        }
    }
    Ok(())
}

/// The function backend's optional zero-page probe ([`programs::ZERO_PAGE_MERGE`]).
fn attach_zero_page_fexit(ebpf: &mut Ebpf, caps: &Capabilities, btf: &aya::Btf) -> Result<()> {
    let f = &programs::ZERO_PAGE_MERGE;
    let prog = program::<FExit>(ebpf, f.program)?;
    prog.load(f.function, btf)
        .map_err(|e| refused(caps, e).context(format!("{} on {}", f.program, f.function)))?;
    prog.attach().map(drop)?;
    Ok(())
}

/// The same through kprobes.
fn attach_zero_page_kprobes(ebpf: &mut Ebpf) -> Result<()> {
    let f = &programs::ZERO_PAGE_MERGE;
    let kretprobe = f.kretprobe.expect("an exit hook has a kretprobe");
    attach_kprobes(ebpf, &[(f.kprobe, f.function), (kretprobe, f.function)])
}

/// The function backend through kprobes ([`programs::FunctionProbe::kprobe`]).
fn attach_kprobe_backend(ebpf: &mut Ebpf) -> Result<()> {
    let probes: Vec<(&str, &str)> = programs::FUNCTIONS
        .iter()
        .flat_map(|f| {
            std::iter::once((f.kprobe, f.function)).chain(f.kretprobe.map(|p| (p, f.function)))
        })
        .collect();
    attach_kprobes(ebpf, &probes)
}

/// Loads every `(program, function)` kprobe before attaching any, so a refusal leaves
/// nothing attached.
fn attach_kprobes(ebpf: &mut Ebpf, probes: &[(&str, &str)]) -> Result<()> {
    for &(name, _) in probes {
        program::<KProbe>(ebpf, name)?
            .load()
            .map_err(|e| load_error(name, e))?;
    }
    for &(name, function) in probes {
        program::<KProbe>(ebpf, name)?
            .attach(function, 0)
            .with_context(|| format!("attaching {name} to {function}"))?;
    }
    Ok(())
}

/// Loads an fentry/fexit pair on `function`, then attaches both (neither is attached when
/// either is refused).
fn attach_function(
    ebpf: &mut Ebpf,
    caps: &Capabilities,
    btf: &aya::Btf,
    entry: &str,
    exit: &str,
    function: &str,
) -> Result<()> {
    let why = |e| refused(caps, e);
    program::<FEntry>(ebpf, entry)?
        .load(function, btf)
        .map_err(why)?;
    program::<FExit>(ebpf, exit)?
        .load(function, btf)
        .map_err(why)?;
    program::<FEntry>(ebpf, entry)?.attach()?;
    program::<FExit>(ebpf, exit)?.attach()?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `doctor --json` found on a kernel of the lab (`ksm-trace lab --kernel NAME --json`,
    /// its `doctor.json.capabilities`): that kernel's BTF functions and offsets, tracepoints and
    /// kallsyms symbols, kept as a fixture.
    fn lab_kernel(name: &str) -> Capabilities {
        let path = format!(
            "{}/tests/fixtures/capabilities-{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn debian_6_1_takes_the_function_probes_and_refuses_the_tracepoints() {
        let caps = lab_kernel("debian-6.1");
        assert!(caps.function_backend_missing().is_empty());
        let auto = Backend::Auto.source(&caps, true).unwrap();
        assert_eq!(auto, Source::Fentry { or_kprobes: true });
        let no_kprobes = Backend::Auto.source(&caps, false).unwrap();
        assert_eq!(no_kprobes, Source::Fentry { or_kprobes: false });
        let err = Backend::Tracepoints
            .source(&caps, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no ksm tracepoints"), "{err}");
        assert_eq!(
            Backend::Kprobes.source(&caps, true).unwrap(),
            Source::Kprobes
        );
        // The function backend's globals: the full-scan counter and rmap items are read.
        let config = caps.config(1, true);
        assert_ne!(config.ksm_scan_seqnr_addr, 0);
        assert_ne!(config.rmap_item_mm, NO_OFFSET);
        assert_ne!(config.stable_node_sharers, NO_OFFSET);
    }

    #[test]
    fn debian_6_12_takes_the_tracepoints_and_can_be_forced_to_either_function_path() {
        let caps = lab_kernel("debian-6.12");
        assert_eq!(
            Backend::Auto.source(&caps, true).unwrap(),
            Source::Tracepoints
        );
        assert_eq!(
            Backend::Functions.source(&caps, true).unwrap(),
            Source::Fentry { or_kprobes: false }
        );
        assert_eq!(
            Backend::Kprobes.source(&caps, true).unwrap(),
            Source::Kprobes
        );
        let err = Backend::Kprobes
            .source(&caps, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no kprobes"), "{err}");
        // With the tracepoints, ksmd's switch-outs must not report full scans too.
        assert_eq!(caps.config(1, false).ksm_scan_seqnr_addr, 0);
        assert!(caps.functions[programs::UNMERGE_FUNCTION]);
    }
}

//! The kernel side as seen from user space: what the kernel allows ([`capabilities`]), BTF
//! offsets ([`btf`]), and one module per measurement — [`events`], [`latency`] (with the
//! bracket's sampling policy, [`bracket`]), [`batches`], [`cow`], [`unmerge`], [`tlb`],
//! [`profile`] — each choosing from the capabilities what it can use, loading and attaching
//! it through the shared [`load`] helpers, and returning its typed mechanism, with a typed
//! fallback where it could not use the best one. A new backend for a measurement is a change in
//! its module and its eBPF file. Dropping [`Probes`] detaches everything.
pub mod batches;
pub mod bracket;
pub mod btf;
mod calibrate;
pub mod capabilities;
pub mod cow;
pub mod events;
pub mod latency;
mod load;
pub mod profile;
pub mod tlb;
pub mod unmerge;

use anyhow::{Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::raw_trace_point::RawTracePointLinkId,
};
use ksm_trace_common::{Config, counter, names};

pub use crate::recording::schema::LatencyMode;
use crate::recording::schema::{
    BatchMechanism, BracketAttach, EventSource, Fallback, Mechanisms, MergeLatencyMechanism, Reason,
};
pub use capabilities::Capabilities;
pub use cow::CowProbe;
pub use events::{Backend, kprobes_available};
use load::Loader;

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
    /// Per-process COW breaks: fentry/fexit on do_wp_page, or the page fault tracepoints.
    pub cow: CowProbe,
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
            cow: CowProbe::Auto,
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

    /// [`Probes::load`] with every choice a user can make: each measurement in turn.
    pub fn load_with(caps: &Capabilities, ksmd: u32, options: ProbeOptions) -> Result<Self> {
        let source = options.backend.source(caps, kprobes_available())?;
        let functions = source != events::Source::Tracepoints;
        // The function backend's zero-page probe compares each merge's KSM page with the zero
        // page; the tracepoints say which merges are zero-page merges themselves.
        // So does the COW fault tracepoints' check for a write to KSM's zero page.
        let zero_pfn =
            (functions || options.cow.may_use_faults()).then(crate::kernel::pagemap::zero_page_pfn);
        let mut config: Config = caps.config(ksmd, functions);
        if let Some(Ok(pfn)) = &zero_pfn {
            config.zero_pfn = *pfn;
        }
        let mut l = Loader::new(load_object(&config, options.ring_buffer_bytes)?, caps);
        let events = events::attach(
            &mut l,
            source,
            options.backend,
            zero_pfn.filter(|_| functions),
        )?;
        let batches = batches::attach(&mut l, options.batches, config.task_pid)?;
        let attribution = events::attribution(&mut l, &config);
        // The function backend sees a full scan's end at ksmd's switch-out.
        if events != EventSource::Tracepoints && batches != BatchMechanism::SchedSwitch {
            l.fallback(Fallback::FullScansUntraced);
        }
        let latency = latency::attach(&mut l, options.latency)?;
        let cow = cow::attach(&mut l, options.cow);
        let unmerge = unmerge::attach(&mut l, events)?;
        let tlb_shootdowns = tlb::attach(&mut l, options.tlb)?;
        Ok(Self {
            ebpf: l.ebpf,
            bracket_links: Vec::new(),
            bracket_usable: latency.bracket_usable,
            fexit_attached: latency.fexit_attached,
            profile_hz: options.profile_hz,
            mechanisms: Mechanisms {
                events,
                merge_latency: latency.mechanism,
                batches,
                attribution,
                cow,
                tlb_shootdowns,
                unmerge,
                fallbacks: l.fallbacks,
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
        latency::arm(&mut self.ebpf, &mut self.bracket_links)
    }

    /// Detaches the mmap_lock bracket.
    pub fn disarm_bracket(&mut self) -> Result<()> {
        latency::disarm(&mut self.ebpf, &mut self.bracket_links)
    }

    /// Notes, in the recording's mechanisms, that ksmd's profile could not be taken or read.
    pub fn profile_unavailable(&mut self, e: &anyhow::Error) {
        self.mechanisms
            .fallbacks
            .push(Fallback::ProfileUnavailable {
                reason: Reason::Error {
                    message: format!("{e:#}"),
                },
            });
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

    /// Makes the next merge on each of `mms` wake the reader (the sampled bracket then opens a
    /// window for processes whose merges still lack timed ones); only when the bracket samples.
    pub fn wake_on_merges_of(&mut self, mms: &[u64]) -> Result<()> {
        if !matches!(
            self.mechanisms.merge_latency,
            MergeLatencyMechanism::Bracket {
                attached: BracketAttach::OnMerges { .. }
            }
        ) {
            return Ok(());
        }
        let map = self
            .ebpf
            .map_mut(names::WAKE_ON_MM)
            .ok_or_else(|| anyhow!("map {} missing", names::WAKE_ON_MM))?;
        let mut wake = aya::maps::HashMap::<_, u64, u8>::try_from(map)?;
        let stale: Vec<u64> = wake.keys().filter_map(|k| k.ok()).collect();
        for mm in stale.iter().filter(|mm| !mms.contains(mm)) {
            let _ = wake.remove(mm);
        }
        for mm in mms.iter().filter(|mm| !stale.contains(mm)) {
            wake.insert(mm, 1, 0)?;
        }
        Ok(())
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

/// The eBPF object with its globals and the ring buffer's size, loaded (no program yet).
fn load_object(config: &Config, ring_buffer_bytes: u32) -> Result<Ebpf> {
    if PROGRAMS.is_empty() {
        return Err(anyhow!(
            "this ksm-trace was built without its eBPF programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
        ));
    }
    EbpfLoader::new()
        .override_global(names::CONFIG, config, true)
        .map_max_entries(names::EVENTS, ring_buffer_bytes)
        .load(PROGRAMS)
        .map_err(|e| {
            anyhow!(
                "loading the eBPF object: {}",
                load::one_line(&e.to_string())
            )
        })
}

//! The kernel side as seen from user space: what the kernel allows ([`capabilities`]), BTF
//! offsets ([`btf`]), and loading and attaching the chosen programs. Dropping [`Probes`] detaches
//! everything.
pub mod btf;
pub mod capabilities;
pub mod profile;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf, EbpfLoader,
    maps::{MapData, PerCpuArray, RingBuf},
    programs::{FEntry, FExit, RawTracePoint, raw_trace_point::RawTracePointLinkId},
};
use ksm_trace_common::{Config, counter, names};
use serde::{Deserialize, Serialize};

pub use capabilities::Capabilities;

/// How merge latency is measured.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "kebab-case")]
pub enum LatencyMode {
    /// fentry/fexit where allowed; otherwise the mmap_lock bracket, attached from the start and
    /// detached after 2 s without merges, re-attached when merges resume (while attached it
    /// costs ksmd a large share of its scan rate).
    #[default]
    Auto,
    /// fentry/fexit where allowed; otherwise the mmap_lock bracket for the whole run.
    Always,
    /// Both mechanisms where fentry/fexit is allowed, to compare them.
    Both,
    /// No merge latency.
    Off,
}

/// Which mechanism produced each figure: stored in the recording and printed in reports.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct Mechanisms {
    pub events: String,
    pub merge_latency: String,
    pub batches: String,
    pub attribution: String,
    /// Per-process copy-on-write breaks of KSM pages.
    #[serde(default)]
    pub cow: String,
    /// What the kernel refused and what was used instead.
    pub fallbacks: Vec<String>,
}

/// How `Mechanisms::cow` starts when COW breaks are traced per process.
const COW_PROBE: &str = "fentry/fexit on do_wp_page";

impl Mechanisms {
    /// Whether per-process COW breaks were traced (else only the global cow_ksm exists).
    pub fn cow_traced(&self) -> bool {
        self.cow.starts_with(COW_PROBE)
    }
}

const KSM_PROGRAMS: [(&str, &str); 9] = [
    ("ksm_start_scan", "ksm_start_scan"),
    ("ksm_stop_scan", "ksm_stop_scan"),
    ("ksm_merge_with_ksm_page", "ksm_merge_with_ksm_page"),
    ("ksm_merge_one_page", "ksm_merge_one_page"),
    ("ksm_remove_ksm_page", "ksm_remove_ksm_page"),
    ("ksm_remove_rmap_item", "ksm_remove_rmap_item"),
    ("ksm_enter", "ksm_enter"),
    ("ksm_exit", "ksm_exit"),
    ("ksm_advisor", "ksm_advisor"),
];
const BRACKET_PROGRAMS: [(&str, &str); 2] = [
    ("ksmd_mmap_lock_acquired", "mmap_lock_acquire_returned"),
    ("ksmd_mmap_lock_released", "mmap_lock_released"),
];

pub struct Probes {
    ebpf: Ebpf,
    bracket_links: Vec<(&'static str, RawTracePointLinkId)>,
    /// The bracket can be armed (attached) at all.
    pub bracket_usable: bool,
    pub fexit_attached: bool,
    pub mechanisms: Mechanisms,
}

/// The programs, built by build.rs from ksm-trace-ebpf.
static PROGRAMS: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/ksm-trace"));

impl Probes {
    pub fn load(caps: &Capabilities, config: Config, latency: LatencyMode) -> Result<Self> {
        if PROGRAMS.is_empty() {
            return Err(anyhow!(
                "this ksm-trace was built without its eBPF programs (AYA_BUILD_SKIP): rebuild with `cargo xtask build`"
            ));
        }
        let mut ebpf = EbpfLoader::new()
            .override_global(names::CONFIG, &config, true)
            .load(PROGRAMS)
            .context("loading the eBPF object")?;
        let mut mechanisms = Mechanisms {
            events:
                "raw tracepoints on ksm:* (no tracefs needed), ring buffer drained every 100 ms"
                    .into(),
            ..Default::default()
        };

        for (prog, tp) in KSM_PROGRAMS {
            if !caps.has_tracepoint(tp) {
                mechanisms.fallbacks.push(format!(
                    "tracepoint ksm:{tp} missing on this kernel: not traced"
                ));
                continue;
            }
            attach_raw(&mut ebpf, prog, tp)?;
        }

        if caps.has_tracepoint("sched_switch") && config.task_pid != ksm_trace_common::NO_OFFSET {
            attach_raw(&mut ebpf, "ksmd_sched_switch", "sched_switch")?;
            mechanisms.batches = "sched:sched_switch: ksmd's on-CPU time from wake-up to sleep \
                                  (one batch of pages_to_scan pages)"
                .into();
            mechanisms.fallbacks.push(if caps.functions.get("ksm_do_scan").copied().unwrap_or(false) {
                "ksm_do_scan is a function on this kernel, but batches still come from sched_switch (fentry on it is not implemented)".into()
            } else {
                "ksm_do_scan is inlined on this kernel (not in BTF): batches are ksmd's on-CPU stretches from sched_switch".into()
            });
        } else {
            mechanisms.batches =
                "unavailable (no sched_switch tracepoint or task_struct.pid offset)".into();
        }

        mechanisms.attribution = if config.mm_owner == ksm_trace_common::NO_OFFSET {
            mechanisms.fallbacks.push("mm_struct.owner missing from BTF (CONFIG_MEMCG=n): merges are not attributed to processes".into());
            "unavailable".into()
        } else {
            format!(
                "mm_struct.owner → task_struct tgid/comm (BTF offsets {}/{}/{})",
                config.mm_owner, config.task_tgid, config.task_comm
            )
        };

        let mut fexit_attached = false;
        if latency != LatencyMode::Off {
            match attach_fexit(&mut ebpf, caps) {
                Ok(()) => fexit_attached = true,
                Err(e) => mechanisms.fallbacks.push(format!(
                    "fentry/fexit on try_to_merge_one_page unavailable ({e}); merge latency from the mmap_lock tracepoint bracket instead"
                )),
            }
        }
        match attach_cow(&mut ebpf, caps) {
            Ok(()) => {
                mechanisms.cow = match caps.vmemmap_base {
                    Some(_) => {
                        format!("{COW_PROBE}, faults on KSM pages only (the kernel's cow_ksm)")
                    }
                    None => format!(
                        "{COW_PROBE}, faults on KSM pages only (the kernel's cow_ksm); vmemmap's base is learned from the first traced merge, so breaks before it are missed"
                    ),
                }
            }
            Err(e) => {
                mechanisms.cow =
                    "per-process COW breaks unavailable: only the global cow_ksm from /proc/vmstat"
                        .into();
                mechanisms
                    .fallbacks
                    .push(format!("{COW_PROBE} unavailable ({e})"));
            }
        }
        let bracket_usable = latency != LatencyMode::Off
            && BRACKET_PROGRAMS
                .iter()
                .all(|(_, tp)| caps.has_tracepoint(tp));
        for (prog, _) in BRACKET_PROGRAMS {
            if bracket_usable {
                program::<RawTracePoint>(&mut ebpf, prog)?.load()?;
            }
        }
        mechanisms.merge_latency = match (latency, fexit_attached, bracket_usable) {
            (LatencyMode::Off, ..) => "off (--merge-latency off)".into(),
            (LatencyMode::Both, true, true) => "fexit on try_to_merge_one_page, and the mmap_lock bracket alongside for comparison".into(),
            (_, true, _) => "fentry/fexit on try_to_merge_one_page".into(),
            (LatencyMode::Auto, false, true) => "mmap_lock bracket (mmap_lock_acquire_returned → mmap_lock_released in ksmd on the merged mm), attached from the start and while merges are happening, detached after 2 s without".into(),
            (_, false, true) => "mmap_lock bracket (mmap_lock_acquire_returned → mmap_lock_released in ksmd on the merged mm), attached for the whole run".into(),
            (_, false, false) => "unavailable (no fentry/fexit and no mmap_lock tracepoints)".into(),
        };

        Ok(Self {
            ebpf,
            bracket_links: Vec::new(),
            bracket_usable: bracket_usable && !(fexit_attached && latency != LatencyMode::Both),
            fexit_attached,
            mechanisms,
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
        for (prog, tp) in BRACKET_PROGRAMS {
            let link = program::<RawTracePoint>(&mut self.ebpf, prog)?
                .attach(tp)
                .with_context(|| format!("attaching {prog} to {tp}"))?;
            self.bracket_links.push((prog, link));
        }
        Ok(())
    }

    /// Detaches the mmap_lock bracket.
    pub fn disarm_bracket(&mut self) -> Result<()> {
        for (prog, link) in std::mem::take(&mut self.bracket_links) {
            program::<RawTracePoint>(&mut self.ebpf, prog)?.detach(link)?;
        }
        Ok(())
    }

    /// Starts sampling ksmd's kernel stacks; says why not if the kernel refuses.
    pub fn start_profile(&mut self, ksmd: u32) -> Result<()> {
        profile::attach(&mut self.ebpf, ksmd)
    }

    pub fn profile(&self) -> Result<profile::Profile> {
        profile::collect(&self.ebpf, self.counter(counter::STACKS_LOST)?)
    }

    pub fn take_events(&mut self) -> Result<RingBuf<MapData>> {
        let map = self
            .ebpf
            .take_map(names::EVENTS)
            .ok_or_else(|| anyhow!("map {} missing from the eBPF object", names::EVENTS))?;
        Ok(RingBuf::try_from(map)?)
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

fn attach_raw(ebpf: &mut Ebpf, prog: &str, tp: &str) -> Result<()> {
    let p = program::<RawTracePoint>(ebpf, prog)?;
    p.load().with_context(|| format!("loading {prog}"))?;
    p.attach(tp)
        .with_context(|| format!("attaching {prog} to raw tracepoint {tp}"))?;
    Ok(())
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
        (None, false) => anyhow!("the kernel refused to load it: {e}"),
    }
}

/// fentry/fexit on `do_wp_page`, counting write faults on KSM pages.
fn attach_cow(ebpf: &mut Ebpf, caps: &Capabilities) -> Result<()> {
    const FUNCTION: &str = "do_wp_page";
    if !caps.functions.get(FUNCTION).copied().unwrap_or(false) {
        return Err(anyhow!("{FUNCTION} is not in BTF (inlined)"));
    }
    if !cfg!(target_arch = "x86_64") {
        return Err(anyhow!(
            "the KSM-page check reads x86-64 page table entries"
        ));
    }
    for needed in ["vm_fault.orig_pte", "page.mapping"] {
        if caps.offset(needed) == ksm_trace_common::NO_OFFSET {
            return Err(anyhow!("{needed} missing from BTF"));
        }
    }
    if caps.page_struct_size.is_none() {
        return Err(anyhow!("struct page not in BTF"));
    }
    let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
    program::<FEntry>(ebpf, "cow_entry")?
        .load(FUNCTION, &btf)
        .map_err(|e| refused(caps, e))?;
    program::<FExit>(ebpf, "cow_exit")?
        .load(FUNCTION, &btf)
        .map_err(|e| refused(caps, e))?;
    program::<FEntry>(ebpf, "cow_entry")?.attach()?;
    program::<FExit>(ebpf, "cow_exit")?.attach()?;
    Ok(())
}

fn attach_fexit(ebpf: &mut Ebpf, caps: &Capabilities) -> Result<()> {
    const FUNCTION: &str = "try_to_merge_one_page";
    if !caps.functions.get(FUNCTION).copied().unwrap_or(false) {
        return Err(anyhow!("{FUNCTION} is not in BTF (inlined)"));
    }
    if caps.offset("vm_area_struct.vm_mm") == ksm_trace_common::NO_OFFSET {
        return Err(anyhow!("vm_area_struct.vm_mm missing from BTF"));
    }
    let btf = aya::Btf::from_sys_fs().context("reading kernel BTF")?;
    let why = |e| refused(caps, e);
    let entry = program::<FEntry>(ebpf, "merge_one_page_entry")?;
    entry.load(FUNCTION, &btf).map_err(why)?;
    let exit = program::<FExit>(ebpf, "merge_one_page_exit")?;
    exit.load(FUNCTION, &btf).map_err(why)?;
    program::<FEntry>(ebpf, "merge_one_page_entry")?.attach()?;
    program::<FExit>(ebpf, "merge_one_page_exit")?.attach()?;
    Ok(())
}

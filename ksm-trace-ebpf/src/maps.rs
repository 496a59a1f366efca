//! Maps, the start-up configuration and the two helpers every program uses: `emit` an event and
//! `bump` a counter.
use aya_ebpf::{
    helpers::{bpf_ktime_get_ns, bpf_probe_read_kernel},
    macros::map,
    maps::{Array, PerCpuArray, RingBuf},
};
use ksm_trace_common::{Config, EVENTS_BYTES, Event, counter};

/// Filled in by the loader from the running kernel's BTF and /proc.
#[unsafe(no_mangle)]
static CONFIG: Config = Config::empty();

#[map]
static EVENTS: RingBuf = RingBuf::with_byte_size(EVENTS_BYTES, 0);

/// vmemmap's base address, learned from merge events (a `struct page *` and its pfn) for
/// kernels that do not list `vmemmap_base` in kallsyms.
#[map]
pub static VMEMMAP: Array<u64> = Array::with_max_entries(1, 0);

/// The direct map's base (`page_offset_base`), measured at start-up for the page-table walk.
#[map]
pub static DIRECT_MAP: Array<u64> = Array::with_max_entries(1, 0);

#[map]
static COUNTERS: PerCpuArray<u64> = PerCpuArray::with_max_entries(counter::COUNT, 0);

/// Do not wake the reader per event: wake-ups cost MSR writes on this kind of machine and the
/// collector drains on a timer anyway.
const BPF_RB_NO_WAKEUP: u64 = 1;
/// Wake the reader now (the first merge after a quiet spell: see `MERGE_QUIET_NS`).
const BPF_RB_FORCE_WAKEUP: u64 = 2;

#[inline(always)]
pub fn config() -> Config {
    // SAFETY: a plain global the loader overrides before the program is verified.
    unsafe { core::ptr::read_volatile(&CONFIG) }
}

#[inline(always)]
pub fn now() -> u64 {
    // SAFETY: helper with no arguments.
    unsafe { bpf_ktime_get_ns() }
}

#[inline(always)]
pub fn bump(index: u32) {
    if let Some(slot) = COUNTERS.get_ptr_mut(index) {
        // SAFETY: per-CPU slot, no concurrent writer on this CPU.
        unsafe { *slot += 1 };
    }
}

/// Writes `event` to the ring buffer, or counts it as lost when the buffer is full.
#[inline(always)]
pub fn emit(event: &Event) {
    submit(event, BPF_RB_NO_WAKEUP);
}

/// [`emit`], waking the reader at once.
#[inline(always)]
pub fn emit_and_wake(event: &Event) {
    submit(event, BPF_RB_FORCE_WAKEUP);
}

#[inline(always)]
fn submit(event: &Event, flags: u64) {
    match EVENTS.reserve::<Event>(0) {
        Some(mut entry) => {
            entry.write(*event);
            entry.submit(flags);
        }
        None => bump(counter::EVENTS_LOST),
    }
}

/// A kernel u64 at `addr` (0 when unreadable).
#[inline(always)]
pub fn read_u64(addr: u64) -> u64 {
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    unsafe { bpf_probe_read_kernel(addr as *const u64) }.unwrap_or(0)
}

/// vmemmap's base: the kernel's `vmemmap_base` where kallsyms lists it, else what merge events
/// taught (0 when neither is known yet).
#[inline(always)]
pub fn vmemmap_base() -> u64 {
    let addr = config().vmemmap_base_addr;
    if addr != 0 {
        read_u64(addr)
    } else {
        VMEMMAP.get(0).copied().unwrap_or(0)
    }
}

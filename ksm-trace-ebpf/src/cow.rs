//! Copy-on-write breaks of KSM pages, where the kernel allows fentry/fexit: `do_wp_page`
//! entered on a PTE that maps a KSM page is exactly a fault the kernel counts as cow_ksm (KSM
//! pages are never reused in place). The PTE's page is found through vmemmap (its base from
//! kallsyms, or learned from merge events), its KSM-ness in
//! `page->mapping`'s low bits; entry time is kept per thread until `do_wp_page` returns.
use aya_ebpf::{
    helpers::{bpf_get_current_comm, bpf_get_current_pid_tgid, bpf_probe_read_kernel},
    macros::{fentry, fexit, map},
    maps::HashMap,
    programs::{FEntryContext, FExitContext},
};
use ksm_trace_common::{Event, NO_OFFSET, kind};

use crate::maps::{config, emit, now, vmemmap_base};

/// pid_tgid → (entry time, pfn) of a fault on a KSM page in progress.
#[map]
static COW_IN_FLIGHT: HashMap<u64, [u64; 2]> = HashMap::with_max_entries(4096, 0);

const PTE_PRESENT: u64 = 1;
/// x86-64 PTE_PFN_MASK: physical address bits 12..51.
const PTE_PFN_MASK: u64 = 0x000f_ffff_ffff_f000;
/// `PAGE_MAPPING_KSM`: both low bits of `page->mapping` set.
const MAPPING_KSM: u64 = 3;

/// The pfn of the KSM page `vmf->orig_pte` maps, if it maps one.
#[inline(always)]
fn ksm_pfn(vmf: u64) -> Option<u64> {
    let cfg = config();
    if vmf == 0
        || cfg.vmf_orig_pte == NO_OFFSET
        || cfg.page_mapping == NO_OFFSET
        || cfg.page_size_of == 0
    {
        return None;
    }
    // SAFETY: bpf_probe_read_kernel tolerates any address.
    let pte: u64 =
        unsafe { bpf_probe_read_kernel((vmf + cfg.vmf_orig_pte as u64) as *const u64) }.ok()?;
    if pte & PTE_PRESENT == 0 {
        return None;
    }
    let pfn = (pte & PTE_PFN_MASK) >> 12;
    let vmemmap = vmemmap_base();
    if vmemmap == 0 {
        return None;
    }
    let page = vmemmap + pfn * cfg.page_size_of as u64;
    let mapping: u64 =
        unsafe { bpf_probe_read_kernel((page + cfg.page_mapping as u64) as *const u64) }.ok()?;
    (mapping & MAPPING_KSM == MAPPING_KSM).then_some(pfn)
}

#[fentry(function = "do_wp_page")]
pub fn cow_entry(ctx: FEntryContext) -> u32 {
    if let Some(pfn) = ksm_pfn(ctx.arg(0)) {
        let _ = COW_IN_FLIGHT.insert(&bpf_get_current_pid_tgid(), &[now(), pfn], 0);
    }
    0
}

#[fexit(function = "do_wp_page")]
pub fn cow_exit(_ctx: FExitContext) -> u32 {
    let key = bpf_get_current_pid_tgid();
    // SAFETY: a copy is taken before the entry is removed.
    let Some([start, pfn]) = (unsafe { COW_IN_FLIGHT.get(&key) }).copied() else {
        return 0;
    };
    let _ = COW_IN_FLIGHT.remove(&key);
    let t = now();
    emit(&Event {
        ts_ns: t,
        kind: kind::COW_BREAK,
        tgid: (key >> 32) as u32,
        comm: bpf_get_current_comm().unwrap_or_default(),
        pfn,
        arg0: t - start,
        ..Event::default()
    });
    0
}

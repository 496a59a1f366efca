//! x86-64 page tables read from eBPF: an address's PTE in an mm (4- or 5-level, through the
//! direct map whose base start-up measured), and whether a pfn is a KSM page (its struct page
//! through vmemmap). Every read is a bpf_probe_read_kernel: a table freed under the walk reads
//! as garbage or fails, never faults; the caller decides what a doubtful answer counts as.
use ksm_trace_common::NO_OFFSET;

use crate::maps::{DIRECT_MAP, config, read_u64, vmemmap_base};

pub const PRESENT: u64 = 1;
pub const WRITABLE: u64 = 1 << 1;
/// A PUD or PMD that maps a huge page: no KSM page below it.
const HUGE: u64 = 1 << 7;
/// x86-64 PTE_PFN_MASK: physical address bits 12..51.
pub const PFN_MASK: u64 = 0x000f_ffff_ffff_f000;
/// `FOLIO_MAPPING_KSM` (`PAGE_MAPPING_KSM` before 6.17): both low bits of `mapping` set.
const MAPPING_KSM: u64 = 3;

/// The direct map's base (0 before start-up measured it).
#[inline(always)]
fn direct_map() -> u64 {
    DIRECT_MAP.get(0).copied().unwrap_or(0)
}

/// The entry `index` of the table at physical address `table` (an entry's address bits).
#[inline(always)]
fn entry(base: u64, table: u64, index: u64) -> u64 {
    read_u64(base + (table & PFN_MASK) + (index & 511) * 8)
}

/// The PTE that maps `addr` in the page tables at `pgd` (a kernel virtual address); None where
/// a level is not present or maps a huge page, or the direct map is not known.
#[inline(always)]
pub fn pte(pgd: u64, addr: u64) -> Option<u64> {
    let base = direct_map();
    if base == 0 || pgd == 0 {
        return None;
    }
    // The PGD page is addressed by its virtual address; the levels below through the direct map.
    let top = if config().la57 != 0 {
        let p4d_table = read_u64(pgd + ((addr >> 48) & 511) * 8);
        if p4d_table & PRESENT == 0 {
            return None;
        }
        entry(base, p4d_table, addr >> 39)
    } else {
        read_u64(pgd + ((addr >> 39) & 511) * 8)
    };
    if top & PRESENT == 0 {
        return None;
    }
    let pud = entry(base, top, addr >> 30);
    if pud & PRESENT == 0 || pud & HUGE != 0 {
        return None;
    }
    let pmd = entry(base, pud, addr >> 21);
    if pmd & PRESENT == 0 || pmd & HUGE != 0 {
        return None;
    }
    Some(entry(base, pmd, addr >> 12))
}

/// Whether `pfn` is a KSM page: its struct page's `mapping` tagged KSM. A tail page of a large
/// folio is never one (KSM pages are order 0), and its mapping word means something else.
#[inline(always)]
pub fn is_ksm_page(pfn: u64) -> bool {
    let cfg = config();
    let vmemmap = vmemmap_base();
    if vmemmap == 0 || cfg.page_mapping == NO_OFFSET || cfg.page_size_of == 0 {
        return false;
    }
    let page = vmemmap + pfn * cfg.page_size_of as u64;
    if cfg.page_compound_head != NO_OFFSET
        && read_u64(page + cfg.page_compound_head as u64) & 1 != 0
    {
        return false;
    }
    read_u64(page + cfg.page_mapping as u64) & MAPPING_KSM == MAPPING_KSM
}

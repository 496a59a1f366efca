//! Copy-on-write breaks of KSM pages, per process (`--cow-probe`): fentry/fexit on
//! `do_wp_page` where the kernel allows it (a write fault on a PTE that maps a KSM page is
//! exactly what cow_ksm counts), else x86's page fault tracepoints with a page-table walk
//! (`exceptions:page_fault_user|kernel`; see the eBPF side, cow.rs), which need no tracing
//! program: only raw tracepoints, and where the kernel's direct map and struct pages are
//! (measured at start-up, [`super::calibrate`]). Both run on every write fault of every
//! process, hence the switch.
use ksm_trace_common::programs;

use super::{calibrate, load::Loader};
use crate::recording::schema::{CowMechanism, Fallback, Reason};

/// How to trace COW breaks (`--cow-probe`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CowProbe {
    /// fentry on do_wp_page where allowed, else the fault tracepoints.
    Auto,
    Fentry,
    FaultTracepoint,
    /// Both, to compare them on the same faults.
    Both,
    Off,
}

impl CowProbe {
    pub const ALL: [(CowProbe, &'static str, &'static str); 5] = [
        (
            CowProbe::Auto,
            "auto",
            "fentry/fexit on do_wp_page where allowed, else the page fault tracepoints",
        ),
        (
            CowProbe::Fentry,
            "fentry",
            "fentry/fexit on do_wp_page only",
        ),
        (
            CowProbe::FaultTracepoint,
            "fault-tracepoint",
            "x86's page_fault_user/page_fault_kernel with a page-table walk, even where fentry is allowed",
        ),
        (
            CowProbe::Both,
            "both",
            "do_wp_page and the fault tracepoints on the same faults, to compare them",
        ),
        (CowProbe::Off, "off", "only the global cow_ksm"),
    ];

    /// Whether the fault tracepoints may be wanted (the loader then finds the zero page first).
    pub fn may_use_faults(self) -> bool {
        matches!(self, Self::Auto | Self::FaultTracepoint | Self::Both)
    }
}

pub(super) fn attach(l: &mut Loader, wanted: CowProbe) -> CowMechanism {
    let do_wp_page = CowMechanism::DoWpPage {
        vmemmap_from_merges: l.caps.vmemmap_base.is_none(),
    };
    let fentry = match wanted {
        CowProbe::Off => return CowMechanism::Off,
        CowProbe::FaultTracepoint => false,
        CowProbe::Auto | CowProbe::Fentry | CowProbe::Both => match attach_do_wp_page(l) {
            Ok(()) if wanted != CowProbe::Both => return do_wp_page,
            Ok(()) => true,
            Err(reason) if wanted == CowProbe::Fentry => {
                l.fallback(Fallback::CowUnavailable { reason });
                return CowMechanism::Unavailable;
            }
            Err(reason) => {
                l.fallback(Fallback::CowFromFaults { reason });
                false
            }
        },
    };
    match attach_faults(l) {
        Ok(kernel_writes) if fentry => CowMechanism::DoWpPageAndFaultTracepoint { kernel_writes },
        Ok(kernel_writes) => CowMechanism::FaultTracepoint { kernel_writes },
        Err(reason) => {
            l.fallback(Fallback::CowFaultsUnavailable { reason });
            if fentry {
                do_wp_page
            } else {
                CowMechanism::Unavailable
            }
        }
    }
}

/// fentry/fexit on `do_wp_page`, counting write faults on KSM pages.
fn attach_do_wp_page(l: &mut Loader) -> Result<(), Reason> {
    l.function_in_btf(programs::COW_FUNCTION)?;
    if !cfg!(target_arch = "x86_64") {
        return Err(Reason::NotX86);
    }
    l.offsets_in_btf(&["vm_fault.orig_pte", "page.mapping"])?;
    if l.caps.page_struct_size.is_none() {
        return Err(Reason::OffsetMissing {
            member: "struct page (its size)".into(),
        });
    }
    l.attach_fentry_pair(
        programs::COW_ENTRY,
        programs::COW_EXIT,
        programs::COW_FUNCTION,
    )
}

/// The page fault tracepoints, the walk's bases measured first; and the faulting thread's TLB
/// flush that ends each break. Ok says whether the kernel's writes into user memory
/// (page_fault_kernel) are seen too.
fn attach_faults(l: &mut Loader) -> Result<bool, Reason> {
    if !cfg!(target_arch = "x86_64") {
        return Err(Reason::NotX86);
    }
    let [user, kernel] = &programs::COW_FAULTS;
    l.tracepoint_usable(user)?;
    l.offsets_in_btf(&[
        "task_struct.mm",
        "mm_struct.pgd",
        "mm_struct.ksm_merging_pages",
        "page.mapping",
    ])?;
    if l.caps.page_struct_size.is_none() {
        return Err(Reason::OffsetMissing {
            member: "struct page (its size)".into(),
        });
    }
    for tp in [&programs::CALIBRATE_DIRECT_MAP, &programs::CALIBRATE_PAGES] {
        l.tracepoint_usable(tp)?;
    }
    calibrate::measure(l).map_err(super::load::error)?;
    l.attach_raw(user).map_err(super::load::error)?;
    let kernel_writes = l.tracepoint_usable(kernel).is_ok();
    if kernel_writes {
        l.attach_raw(kernel).map_err(super::load::error)?;
    }
    if l.tracepoint_usable(&programs::COW_FLUSH).is_ok() {
        l.attach_raw(&programs::COW_FLUSH)
            .map_err(super::load::error)?;
    }
    Ok(kernel_writes)
}

//! Copy-on-write breaks of KSM pages, per process: fentry/fexit on `do_wp_page` where the
//! kernel allows it (a write fault on a PTE that maps a KSM page is exactly what cow_ksm
//! counts). It runs on every write-protect fault of every process, hence its own switch
//! (`--cow-probe off`).
use ksm_trace_common::programs;

use super::load::Loader;
use crate::recording::schema::{CowMechanism, Fallback, Reason};

pub(super) fn attach(l: &mut Loader, wanted: bool) -> CowMechanism {
    if !wanted {
        return CowMechanism::Off;
    }
    match attach_do_wp_page(l) {
        Ok(()) => CowMechanism::DoWpPage {
            vmemmap_from_merges: l.caps.vmemmap_base.is_none(),
        },
        Err(reason) => {
            l.fallback(Fallback::CowUnavailable { reason });
            CowMechanism::Unavailable
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

//! Copy-on-write breaks per process, where they were traced: of KSM pages (against the kernel's
//! cow_ksm, the rest shown as not attributed), of KSM's zero page, and how long each took.
use std::fmt::Write as _;

use crate::{
    histogram::Summary,
    recording::schema::CowMechanism,
    report::{
        histogram::fmt_ns,
        model::{ProcessReport, Report},
    },
};

pub(super) fn section(o: &mut String, r: &Report) {
    let broke: Vec<_> = r
        .processes
        .iter()
        .filter(|p| p.cow_breaks.unwrap_or(0) + p.zero_page_breaks.unwrap_or(0) > 0)
        .collect();
    if broke.is_empty() {
        return;
    }
    let cow: u64 = broke.iter().filter_map(|p| p.cow_breaks).sum();
    let kernel = r.kernel_deltas.get("cow_ksm").copied().unwrap_or(0);
    let _ = writeln!(
        o,
        "  COW breaks of KSM pages traced: {cow}; kernel cow_ksm {kernel:+}{}",
        match kernel - cow as i64 {
            0 => String::new(),
            n if n > 0 && matches!(r.mechanisms.cow, CowMechanism::DoWpPage { .. }) => {
                format!(" ({n} not attributed: breaks do_wp_page did not report)")
            }
            n if n > 0 => format!(
                " ({n} not attributed: breaks without a write fault the tracepoints see — unmerge calls (MADV_UNMERGEABLE, run=2), writes through get_user_pages, a guest's writes under KVM)"
            ),
            n => format!(" ({} more traced than counted)", -n),
        }
    );
    if !broke.iter().any(|p| p.zero_page_breaks.is_some()) {
        return;
    }
    let zero: u64 = broke.iter().filter_map(|p| p.zero_page_breaks).sum();
    let closed: u64 = broke.iter().filter_map(|p| p.cow_closed).sum();
    // With both mechanisms, the fault tracepoints' figures are the ones beside fentry's.
    let both = broke.iter().any(|p| p.cow_at_fault_ns.is_some());
    let at_fault = |p: &ProcessReport| match (p.cow_breaks_at_fault, p.cow_at_fault_ns) {
        (Some(n), Some(l)) => (n, l),
        _ => (p.cow_breaks.unwrap_or(0), p.cow_fault_ns),
    };
    let seen: u64 = broke.iter().map(|p| at_fault(p).0).sum();
    let _ = writeln!(
        o,
        "\nCOW breaks per process (page fault tracepoints): writes to KSM pages and to KSM's zero page ({zero}; not in cow_ksm), each break's latency from the fault to the TLB flush that installs the copy ({closed} of {} closed){}",
        seen + zero,
        if both {
            "; DO_WP_PAGE: fentry's count and latency on the same faults"
        } else {
            ""
        }
    );
    let _ = writeln!(
        o,
        "  {:<24} {:>8} {:>8} {:>10} {:>10} {:>10}{}",
        "PROCESS",
        "KSM",
        "ZERO",
        "p50",
        "p99",
        "MAX",
        if both {
            format!(" {:>12} {:>10}", "DO_WP_PAGE", "p50")
        } else {
            String::new()
        }
    );
    for p in broke {
        let (ksm, lat) = at_fault(p);
        let compared = match &p.cow_at_fault_ns {
            Some(_) => format!(
                " {:>12} {:>10}",
                p.cow_breaks.unwrap_or(0),
                ns(&p.cow_fault_ns, p.cow_fault_ns.p50)
            ),
            None => String::new(),
        };
        let _ = writeln!(
            o,
            "  {:<24} {:>8} {:>8} {:>10} {:>10} {:>10}{compared}",
            format!("{}[{}]", p.comm, p.pid),
            ksm,
            p.zero_page_breaks.unwrap_or(0),
            ns(&lat, lat.p50),
            ns(&lat, lat.p99),
            ns(&lat, lat.max),
        );
    }
}

fn ns(s: &Summary, v: u64) -> String {
    if s.count == 0 { "-".into() } else { fmt_ns(v) }
}

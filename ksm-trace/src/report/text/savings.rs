//! Record's report: what each recorded process, guest or cgroup saves and owes, rendered by
//! the same table as `sharing --now` (sharing/savings_table.rs).
use std::collections::BTreeMap;

use crate::sharing::savings_table::text;

/// Record's report: the recorded processes grouped as the tables are, every other process
/// with KSM pages as one group.
pub(super) fn section(
    o: &mut String,
    r: &crate::report::model::Report,
    by: crate::kernel::process::By,
) {
    let Some(savings) = &r.savings else {
        return;
    };
    let names: BTreeMap<u32, String> = r
        .processes
        .iter()
        .map(|p| {
            (
                p.pid,
                by.key(p.pid, &p.comm, p.guest.as_deref(), p.cgroup.as_deref()),
            )
        })
        .collect();
    o.push_str(&text(savings, |pid| {
        names
            .get(&pid)
            .cloned()
            .unwrap_or_else(|| "(processes not recorded)".into())
    }));
}

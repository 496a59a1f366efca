//! What the running kernel allows, found without changing anything: the same answers drive the
//! loader's choice of programs and `ksm-trace doctor`.
use std::{fs, path::Path};

use anyhow::{Result, bail};
use ksm_trace_common::{
    Config, NO_OFFSET,
    programs::{self, Arg, RawTracepoint},
};

use super::btf::{KernelBtf, VMLINUX_BTF};
use crate::kernel::{self, sysfs};
pub use crate::recording::schema::Capabilities;
use crate::recording::schema::Reason;

/// Every raw tracepoint a program of ours attaches to.
fn raw_tracepoints() -> impl Iterator<Item = &'static RawTracepoint> {
    programs::KSM
        .iter()
        .chain(&programs::BRACKET)
        .chain([&programs::SCHED_SWITCH, &programs::TLB_FLUSH])
        .chain(&programs::IPI_SEND)
        .chain(&programs::COW_FAULTS)
        .chain([&programs::CALIBRATE_DIRECT_MAP, &programs::CALIBRATE_PAGES])
}

/// Whether `name` is one of the `ksm:*` tracepoints.
pub fn is_ksm_tracepoint(name: &str) -> bool {
    programs::KSM.iter().any(|tp| tp.tracepoint == name)
}

/// Functions fentry/fexit would use where allowed (the function backend's, and others
/// `doctor` reports on).
pub const KSM_FUNCTIONS: [&str; 11] = [
    "try_to_merge_one_page",
    "try_to_merge_with_ksm_page",
    "ksm_do_scan",
    "cmp_and_merge_page",
    "do_wp_page",
    "wp_page_copy",
    "lru_add_drain_all",
    "remove_node_from_stable_tree",
    "__ksm_enter",
    "__ksm_exit",
    "unmerge_ksm_pages",
];

impl Capabilities {
    /// What the kernel allows; the lockdown mode and LSMs only where securityfs is mounted
    /// already (`run::mounts::read_security` mounts it for the read).
    pub fn detect() -> Self {
        let (lockdown, lsms) = kernel::security::read(Path::new(kernel::security::SECURITYFS));
        let mut caps = Capabilities {
            kernel_release: kernel::kernel_release(),
            root: nix::unistd::geteuid().is_root(),
            ksm: sysfs::available(),
            btf: Path::new(VMLINUX_BTF).exists(),
            lockdown,
            lsms,
            tracefs_mounted: crate::kernel::tracefs::mounted(),
            la57: kernel::cpu_flag("la57"),
            thp: fs::read_to_string("/sys/kernel/mm/transparent_hugepage/enabled")
                .ok()
                .map(|s| s.trim().to_owned()),
            ..Default::default()
        };
        if let Ok(btf) = KernelBtf::load().as_ref().map_err(|_| ()) {
            for tp in raw_tracepoints() {
                let present = btf.has_tracepoint(tp.tracepoint);
                caps.tracepoints.insert(tp.tracepoint.to_owned(), present);
                let args = btf.tracepoint_args(tp.tracepoint);
                if let Some(why) = present
                    .then(|| prototype_differs(args.as_deref(), tp))
                    .flatten()
                {
                    caps.prototype_mismatches
                        .insert(tp.tracepoint.to_owned(), why);
                }
            }
            for f in KSM_FUNCTIONS {
                caps.functions.insert(f.to_owned(), btf.has_function(f));
            }
            let zero = &programs::ZERO_PAGE_MERGE;
            if let Some(why) = btf
                .function_args(zero.function)
                .and_then(|args| function_prototype_differs(&args, &programs::ZERO_PAGE_MERGE_ARGS))
            {
                caps.prototype_mismatches
                    .insert(zero.function.to_owned(), why);
            }
            for (name, s, m) in OFFSETS {
                let offset = struct_names(s).find_map(|s| btf.member_offset(s, m));
                caps.offsets.insert(name.to_owned(), offset);
            }
            caps.page_struct_size = btf.struct_size("page");
        }
        // A data symbol: listed only with CONFIG_KALLSYMS_ALL. Without it the COW probe learns
        // vmemmap's base from the first merge event (a struct page pointer and its pfn).
        let symbols = kernel::kallsyms::lookup(&["vmemmap_base", "ksm_scan", "ksm_rmap_items"]);
        let symbol = |name: &str| symbols.get(name).copied();
        caps.vmemmap_base = symbol("vmemmap_base");
        // Static variables of mm/ksm.c the function backend reads (CONFIG_KALLSYMS_ALL).
        caps.ksm_scan = symbol("ksm_scan");
        caps.ksm_rmap_items = symbol("ksm_rmap_items");
        caps
    }

    /// Whether this kernel gets its events from the function backend: it has none of the ksm
    /// tracepoints, and its BTF has every function the backend attaches to (out of line).
    pub fn function_backend(&self) -> bool {
        let no_tracepoints = programs::KSM
            .iter()
            .all(|tp| !self.has_tracepoint(tp.tracepoint));
        no_tracepoints && self.function_backend_missing().is_empty()
    }

    /// What the function backend would need and this kernel lacks.
    pub fn function_backend_missing(&self) -> Vec<String> {
        let mut missing: Vec<String> = programs::FUNCTIONS
            .iter()
            .filter(|f| !self.functions.get(f.function).copied().unwrap_or(false))
            .map(|f| format!("function {} (inlined or absent)", f.function))
            .collect();
        for name in FUNCTION_BACKEND_OFFSETS {
            if self.offset(name) == NO_OFFSET {
                missing.push(format!("{name} in BTF"));
            }
        }
        if self.ksm_scan.is_none() {
            missing.push("ksm_scan in /proc/kallsyms (CONFIG_KALLSYMS_ALL)".into());
        }
        if self.vmemmap_base.is_none() {
            missing.push("vmemmap_base in /proc/kallsyms".into());
        }
        missing
    }

    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.tracepoints.get(name).copied().unwrap_or(false)
    }

    /// Whether `tp`'s program can attach here: the tracepoint exists and its arguments are the
    /// ones the program reads. Err says why not.
    pub fn raw_tracepoint(&self, tp: &RawTracepoint) -> Result<(), Reason> {
        if !self.has_tracepoint(tp.tracepoint) {
            return Err(Reason::TracepointMissing);
        }
        match self.prototype_mismatches.get(tp.tracepoint) {
            Some(why) => Err(Reason::PrototypeDiffers {
                detail: why.clone(),
            }),
            None => Ok(()),
        }
    }

    /// Whether the function backend's zero-page probe can attach here: its function is out of
    /// line and has the arguments it reads. Err says why not.
    pub fn zero_page_probe(&self) -> Result<(), Reason> {
        let f = programs::ZERO_PAGE_MERGE.function;
        if !self.functions.get(f).copied().unwrap_or(false) {
            return Err(Reason::NotInBtf {
                function: f.to_owned(),
            });
        }
        match self.prototype_mismatches.get(f) {
            Some(why) => Err(Reason::PrototypeDiffers {
                detail: format!("{f}: {why}"),
            }),
            None => Ok(()),
        }
    }

    pub fn offset(&self, name: &str) -> u32 {
        self.offsets
            .get(name)
            .copied()
            .flatten()
            .unwrap_or(NO_OFFSET)
    }

    /// Refuses, with what to do, when a recording cannot work here.
    /// Root and KSM itself are checked by `session::preflight`, which every command that
    /// traces runs first.
    pub fn require_tracing(&self) -> Result<()> {
        if !self.btf {
            bail!(
                "this kernel has no BTF ({VMLINUX_BTF} is missing): use a kernel built with CONFIG_DEBUG_INFO_BTF=y"
            );
        }
        let missing = programs::KSM
            .iter()
            .filter(|tp| !self.has_tracepoint(tp.tracepoint))
            .count();
        if missing == programs::KSM.len() && !self.function_backend() {
            bail!(
                "this kernel ({}) has no ksm tracepoints (they arrived in Linux 6.4) and lacks what the function probes standing in for them need ({}): run `ksm-trace doctor` to see what it can measure",
                self.kernel_release,
                self.function_backend_missing().join(", ")
            );
        }
        if let Some((tp, why)) = self
            .prototype_mismatches
            .iter()
            .find(|(tp, _)| is_ksm_tracepoint(tp))
        {
            bail!(
                "ksm:{tp} on this kernel ({}) differs from what ksm-trace reads ({why}): this ksm-trace does not know this kernel's ksm tracepoints; run `ksm-trace doctor`",
                self.kernel_release
            );
        }
        Ok(())
    }

    /// The programs' globals; `functions`: events come from the function backend.
    pub fn config(&self, ksmd_pid: u32, functions: bool) -> Config {
        let seqnr = self.offset("ksm_scan.seqnr");
        Config {
            ksmd_pid,
            mm_owner: self.offset("mm_struct.owner"),
            task_tgid: self.offset("task_struct.tgid"),
            task_pid: self.offset("task_struct.pid"),
            task_comm: self.offset("task_struct.comm"),
            vma_mm: self.offset("vm_area_struct.vm_mm"),
            vmf_orig_pte: self.offset("vm_fault.orig_pte"),
            page_mapping: self.offset("page.mapping"),
            page_size_of: self.page_struct_size.unwrap_or(0),
            rmap_item_mm: self.offset("ksm_rmap_item.mm"),
            vmemmap_base_addr: self.vmemmap_base.unwrap_or(0),
            stable_node_kpfn: self.offset("ksm_stable_node.kpfn"),
            stable_node_sharers: self.offset("ksm_stable_node.rmap_hlist_len"),
            // Only for the function backend: it makes ksmd's switch-outs report full scans.
            ksm_scan_seqnr_addr: match (functions, self.ksm_scan) {
                (true, Some(addr)) if seqnr != NO_OFFSET => addr + seqnr as u64,
                _ => 0,
            },
            ksm_rmap_items_addr: if functions {
                self.ksm_rmap_items.unwrap_or(0)
            } else {
                0
            },
            // Found by the loader (our own pagemap), not a property of the kernel's BTF.
            zero_pfn: 0,
            task_mm: self.offset("task_struct.mm"),
            mm_pgd: self.offset("mm_struct.pgd"),
            mm_ksm_merging_pages: self.offset("mm_struct.ksm_merging_pages"),
            mm_ksm_zero_pages: self.offset("mm_struct.ksm_zero_pages"),
            page_compound_head: self.offset("page.compound_head"),
            la57: self.la57 as u32,
        }
    }
}

/// Offsets only the function backend reads.
const FUNCTION_BACKEND_OFFSETS: [&str; 4] = [
    "ksm_rmap_item.mm",
    "ksm_stable_node.kpfn",
    "ksm_stable_node.rmap_hlist_len",
    "ksm_scan.seqnr",
];

const OFFSETS: [(&str, &str, &str); 16] = [
    ("task_struct.mm", "task_struct", "mm"),
    ("mm_struct.pgd", "mm_struct", "pgd"),
    (
        "mm_struct.ksm_merging_pages",
        "mm_struct",
        "ksm_merging_pages",
    ),
    ("mm_struct.ksm_zero_pages", "mm_struct", "ksm_zero_pages"),
    ("page.compound_head", "page", "compound_head"),
    ("ksm_rmap_item.mm", "ksm_rmap_item", "mm"),
    ("ksm_stable_node.kpfn", "ksm_stable_node", "kpfn"),
    (
        "ksm_stable_node.rmap_hlist_len",
        "ksm_stable_node",
        "rmap_hlist_len",
    ),
    ("ksm_scan.seqnr", "ksm_scan", "seqnr"),
    ("vm_fault.orig_pte", "vm_fault", "orig_pte"),
    ("page.mapping", "page", "mapping"),
    ("mm_struct.owner", "mm_struct", "owner"),
    ("task_struct.tgid", "task_struct", "tgid"),
    ("task_struct.pid", "task_struct", "pid"),
    ("task_struct.comm", "task_struct", "comm"),
    ("vm_area_struct.vm_mm", "vm_area_struct", "vm_mm"),
];

/// The names a struct of mm/ksm.c has had: `ksm_rmap_item` and `ksm_stable_node` were
/// `rmap_item` and `stable_node` before Linux 6.0 (Ubuntu 22.04's 5.15, RHEL 9's 5.14).
fn struct_names(name: &'static str) -> impl Iterator<Item = &'static str> {
    let before_6_0 = match name {
        "ksm_rmap_item" | "ksm_stable_node" => name.strip_prefix("ksm_"),
        _ => None,
    };
    std::iter::once(name).chain(before_6_0)
}

/// Why the kernel's argument list (`args`) does not give `tp`'s program what it reads, if it
/// does not: an argument it reads is missing or of another kind.
fn prototype_differs(args: Option<&[Arg]>, tp: &RawTracepoint) -> Option<String> {
    let Some(args) = args else {
        return Some("its prototype is not readable in BTF".into());
    };
    let wrong: Vec<String> = tp
        .reads
        .iter()
        .filter(|(i, want)| args.get(*i) != Some(want))
        .map(|(i, want)| {
            format!(
                "argument {i} is {}, the program reads {}",
                args.get(*i).map_or("missing".into(), describe),
                describe(want)
            )
        })
        .collect();
    (!wrong.is_empty()).then(|| wrong.join("; "))
}

/// Why function arguments `args` are not exactly `want`: an fexit program finds the return
/// value after the last argument, so the count must match too.
fn function_prototype_differs(args: &[Arg], want: &[Arg]) -> Option<String> {
    let list = |a: &[Arg]| a.iter().map(describe).collect::<Vec<_>>().join(", ");
    (args != want).then(|| {
        format!(
            "its arguments are ({}), the probe reads ({})",
            list(args),
            list(want)
        )
    })
}

fn describe(a: &Arg) -> String {
    match a {
        Arg::Ptr => "a pointer".to_owned(),
        Arg::Int(n) => format!("a {n}-byte integer"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ksm_structs_are_also_looked_up_by_their_names_before_6_0() {
        let names = |s| struct_names(s).collect::<Vec<_>>();
        assert_eq!(names("ksm_rmap_item"), ["ksm_rmap_item", "rmap_item"]);
        assert_eq!(names("ksm_stable_node"), ["ksm_stable_node", "stable_node"]);
        assert_eq!(names("ksm_scan"), ["ksm_scan"]);
        assert_eq!(names("task_struct"), ["task_struct"]);
    }

    #[test]
    fn a_function_probe_needs_its_exact_argument_list() {
        use ksm_trace_common::programs::{Arg::*, ZERO_PAGE_MERGE_ARGS};
        // try_to_merge_one_page(vma, page, kpage) in 6.1 and 6.12.
        assert_eq!(
            function_prototype_differs(&[Ptr, Ptr, Ptr], &ZERO_PAGE_MERGE_ARGS),
            None
        );
        // One more argument moves fexit's return value: refused, not misread.
        assert_eq!(
            function_prototype_differs(&[Ptr, Ptr, Ptr, Ptr], &ZERO_PAGE_MERGE_ARGS).unwrap(),
            "its arguments are (a pointer, a pointer, a pointer, a pointer), the probe reads (a pointer, a pointer, a pointer)"
        );
        assert!(function_prototype_differs(&[Ptr, Ptr], &ZERO_PAGE_MERGE_ARGS).is_some());
    }

    #[test]
    fn the_zero_page_probe_needs_its_function_out_of_line_and_unchanged() {
        let mut caps = Capabilities::default();
        let f = ksm_trace_common::programs::ZERO_PAGE_MERGE.function;
        assert_eq!(
            caps.zero_page_probe(),
            Err(Reason::NotInBtf {
                function: f.to_owned()
            })
        );
        caps.functions.insert(f.to_owned(), true);
        assert_eq!(caps.zero_page_probe(), Ok(()));
        caps.prototype_mismatches
            .insert(f.to_owned(), "its arguments are (a pointer)".into());
        assert!(matches!(
            caps.zero_page_probe(),
            Err(Reason::PrototypeDiffers { detail }) if detail.contains("its arguments")
        ));
    }

    #[test]
    fn only_the_arguments_a_program_reads_must_match() {
        use ksm_trace_common::programs::{Arg::*, BRACKET};
        let acquired = &BRACKET[0];
        // 6.18: (mm, write, success); 6.12: (mm, memcg_path, write, success).
        assert_eq!(
            prototype_differs(Some(&[Ptr, Int(1), Int(1)]), acquired),
            None
        );
        assert_eq!(
            prototype_differs(Some(&[Ptr, Ptr, Int(1), Int(1)]), acquired),
            None
        );
        assert_eq!(
            prototype_differs(Some(&[Int(8)]), acquired).unwrap(),
            "argument 0 is a 8-byte integer, the program reads a pointer"
        );
        assert!(
            prototype_differs(Some(&[]), acquired)
                .unwrap()
                .contains("missing")
        );
        assert!(prototype_differs(None, acquired).is_some());
    }
}

//! Struct member offsets and symbol presence from the running kernel's BTF, so the eBPF programs
//! never hard-code a layout.
use anyhow::{Context as _, Result};
use btf_rs::{Btf, Type};
use ksm_trace_common::programs::Arg;

pub const VMLINUX_BTF: &str = "/sys/kernel/btf/vmlinux";

pub struct KernelBtf {
    btf: Btf,
}

impl KernelBtf {
    pub fn load() -> Result<Self> {
        Self::from_file(VMLINUX_BTF)
    }

    pub fn from_file(path: &str) -> Result<Self> {
        Ok(Self {
            btf: Btf::from_file(path).with_context(|| format!("parsing BTF from {path}"))?,
        })
    }

    /// Byte offset of `member` in `struct name`, looking inside anonymous structs and unions
    /// (mm_struct keeps its members in one).
    pub fn member_offset(&self, name: &str, member: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => self.find_member(s, member, 0),
            _ => None,
        })
    }

    /// `sizeof(struct name)`.
    pub fn struct_size(&self, name: &str) -> Option<u32> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        types.iter().find_map(|t| match t {
            Type::Struct(s) if !s.members.is_empty() => Some(s.size() as u32),
            _ => None,
        })
    }

    fn find_member(&self, s: &btf_rs::Struct, member: &str, base_bits: u32) -> Option<u32> {
        for m in &s.members {
            let name = self.btf.resolve_name(m).unwrap_or_default();
            let bits = base_bits + m.bit_offset();
            if name == member {
                return Some(bits / 8);
            }
            if name.is_empty()
                && let Ok(Type::Struct(inner) | Type::Union(inner)) =
                    self.btf.resolve_chained_type(m)
                && let Some(off) = self.find_member(&inner, member, bits)
            {
                return Some(off);
            }
        }
        None
    }

    /// True when the kernel has raw tracepoint `name` (its `btf_trace_<name>` typedef exists);
    /// this needs no tracefs mount.
    pub fn has_tracepoint(&self, name: &str) -> bool {
        self.has_named(&format!("btf_trace_{name}"), |t| {
            matches!(t, Type::Typedef(_))
        })
    }

    /// The arguments of raw tracepoint `name` from its `btf_trace_<name>` prototype, without the
    /// `void *__data` every such prototype starts with; None when the tracepoint is missing or
    /// a type cannot be resolved.
    pub fn tracepoint_args(&self, name: &str) -> Option<Vec<Arg>> {
        let types = self
            .btf
            .resolve_types_by_name(&format!("btf_trace_{name}"))
            .ok()?;
        let typedef = types.iter().find_map(|t| match t {
            Type::Typedef(td) => Some(td.clone()),
            _ => None,
        })?;
        let Type::Ptr(ptr) = self.btf.resolve_chained_type(&typedef).ok()? else {
            return None;
        };
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&ptr).ok()? else {
            return None;
        };
        proto
            .parameters
            .iter()
            .skip(1)
            .map(|p| self.arg_kind(self.btf.resolve_chained_type(p).ok()?))
            .collect()
    }

    /// Pointer or integer of some size, looking through typedefs and qualifiers.
    fn arg_kind(&self, mut t: Type) -> Option<Arg> {
        loop {
            t = match t {
                Type::Ptr(_) => return Some(Arg::Ptr),
                Type::Int(i) => return Some(Arg::Int(i.size() as u8)),
                Type::Enum(e) => return Some(Arg::Int(e.size() as u8)),
                Type::Enum64(e) => return Some(Arg::Int(e.size() as u8)),
                Type::Typedef(td) => self.btf.resolve_chained_type(&td).ok()?,
                Type::Const(c) | Type::Volatile(c) => self.btf.resolve_chained_type(&c).ok()?,
                _ => return None,
            }
        }
    }

    /// The parameters of function `name` from its BTF prototype; None when it is not in BTF
    /// (inlined) or a type cannot be resolved.
    pub fn function_args(&self, name: &str) -> Option<Vec<Arg>> {
        let types = self.btf.resolve_types_by_name(name).ok()?;
        let func = types.iter().find_map(|t| match t {
            Type::Func(f) => Some(f.clone()),
            _ => None,
        })?;
        let Type::FuncProto(proto) = self.btf.resolve_chained_type(&func).ok()? else {
            return None;
        };
        proto
            .parameters
            .iter()
            .map(|p| self.arg_kind(self.btf.resolve_chained_type(p).ok()?))
            .collect()
    }

    /// True when `name` is a function in BTF (a candidate for fentry/fexit; inlined functions
    /// are absent).
    pub fn has_function(&self, name: &str) -> bool {
        self.has_named(name, |t| matches!(t, Type::Func(_)))
    }

    fn has_named(&self, name: &str, want: impl Fn(&Type) -> bool) -> bool {
        self.btf
            .resolve_types_by_name(name)
            .map(|ts| ts.iter().any(&want))
            .unwrap_or(false)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    // These read the running kernel's BTF: the lookup logic is what is under test, and a
    // hand-made BTF blob would only test our own assumptions about the format.
    fn btf() -> KernelBtf {
        KernelBtf::load().expect("the project's machines have kernel BTF")
    }

    #[test]
    fn finds_members_inside_anonymous_structs() {
        let btf = btf();
        // mm_struct's members all live in an anonymous struct; owner needs CONFIG_MEMCG.
        let users = btf
            .member_offset("mm_struct", "mm_users")
            .expect("mm_users");
        assert!(users > 0);
        let owner = btf.member_offset("mm_struct", "owner");
        if let Some(owner) = owner {
            assert_ne!(owner, users);
        }
    }

    #[test]
    fn task_struct_layout_is_consistent() {
        let btf = btf();
        let pid = btf.member_offset("task_struct", "pid").expect("pid");
        let tgid = btf.member_offset("task_struct", "tgid").expect("tgid");
        // `pid_t pid; pid_t tgid;` are adjacent in every kernel since 2.6.
        assert_eq!(tgid, pid + 4);
        assert!(btf.member_offset("task_struct", "comm").is_some());
        assert_eq!(btf.member_offset("task_struct", "no_such_member"), None);
        assert_eq!(btf.member_offset("no_such_struct", "pid"), None);
        // struct page is 64 bytes on x86-64 kernels without debug options.
        let page = btf.struct_size("page").expect("struct page");
        assert!(
            btf.member_offset("page", "mapping")
                .is_some_and(|m| m < page)
        );
    }

    #[test]
    fn tracepoint_prototypes_match_what_the_programs_read() {
        let btf = btf();
        use ksm_trace_common::programs::{BRACKET, IPI_SEND, KSM, SCHED_SWITCH, TLB_FLUSH};
        for tp in KSM
            .iter()
            .chain(&BRACKET)
            .chain([&SCHED_SWITCH, &TLB_FLUSH])
            .chain(&IPI_SEND)
        {
            if btf.has_tracepoint(tp.tracepoint) {
                let args = btf.tracepoint_args(tp.tracepoint).unwrap();
                for (i, kind) in tp.reads {
                    assert_eq!(args.get(*i), Some(kind), "{} argument {i}", tp.tracepoint);
                }
            }
        }
        assert_eq!(btf.tracepoint_args("no_such_tracepoint"), None);
    }

    #[test]
    fn tracepoints_and_functions() {
        let btf = btf();
        assert!(btf.has_tracepoint("sched_switch"));
        assert!(!btf.has_tracepoint("no_such_tracepoint"));
        assert!(btf.has_function("schedule"));
        assert!(!btf.has_function("sched_switch"));
    }

    #[test]
    fn function_prototypes() {
        let btf = btf();
        // void schedule(void); int wake_up_process(struct task_struct *p).
        assert_eq!(btf.function_args("schedule"), Some(vec![]));
        assert_eq!(btf.function_args("wake_up_process"), Some(vec![Arg::Ptr]));
        assert_eq!(btf.function_args("no_such_function"), None);
    }
}

//! Where merges, unmerges, full scans and enter/exit come from: the `ksm:*` tracepoints where
//! the kernel has them (Linux 6.4 and later), else the function backend on mm/ksm.c through
//! fentry/fexit or kprobes ([`Backend`] chooses); and whom they are attributed to.
use anyhow::{Result, anyhow};
use aya::programs::{FEntry, FExit};
use ksm_trace_common::{
    Config, NO_OFFSET,
    programs::{self, Hook},
};

use super::{
    Capabilities,
    load::{Loader, error, program, refused},
};
use crate::recording::schema::{AttributionMechanism, EventSource, Fallback, Reason};

/// Where the KSM events come from (`--backend`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Backend {
    /// The ksm:* tracepoints where the kernel has them, else the function probes.
    Auto,
    /// The ksm:* tracepoints (Linux ≥ 6.4).
    Tracepoints,
    /// Function probes on mm/ksm.c ([`programs::FUNCTIONS`]) through fentry/fexit, also
    /// where the tracepoints exist: to compare the two on one kernel.
    Functions,
    /// The same function probes through kprobes/kretprobes, also where fentry is allowed: to
    /// prove the path kernels that refuse fentry take.
    Kprobes,
}

/// Where the events come from, as chosen on this kernel.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Source {
    Tracepoints,
    /// fentry/fexit; with `or_kprobes`, kprobes where fentry is refused.
    Fentry {
        or_kprobes: bool,
    },
    Kprobes,
}

/// Whether the kernel can attach kprobes (aya attaches them through the perf kprobe PMU).
pub fn kprobes_available() -> bool {
    std::path::Path::new("/sys/bus/event_source/devices/kprobe/type").exists()
}

impl Backend {
    pub const ALL: [(Backend, &'static str, &'static str); 4] = [
        (
            Backend::Auto,
            "auto",
            "the ksm tracepoints where the kernel has them, else function probes",
        ),
        (
            Backend::Tracepoints,
            "tracepoints",
            "the ksm:* tracepoints (Linux 6.4 and later)",
        ),
        (
            Backend::Functions,
            "functions",
            "function probes on mm/ksm.c (fentry/fexit), even where the tracepoints exist",
        ),
        (
            Backend::Kprobes,
            "kprobes",
            "the function probes through kprobes/kretprobes, even where fentry is allowed",
        ),
    ];

    /// Refuses, in one line, a backend asked for by name that this kernel cannot run: for a
    /// command to call before it changes anything.
    pub fn check(self, caps: &Capabilities) -> Result<()> {
        self.source(caps, kprobes_available()).map(drop)
    }

    /// Where events come from on this kernel; Err says, in one line, why a backend asked for
    /// by name cannot run here.
    pub(super) fn source(self, caps: &Capabilities, kprobes: bool) -> Result<Source> {
        let has_tracepoints = programs::KSM
            .iter()
            .any(|tp| caps.has_tracepoint(tp.tracepoint));
        let functions = |flag: &str| {
            let missing = caps.function_backend_missing();
            if missing.is_empty() {
                Ok(())
            } else {
                Err(anyhow!(
                    "--backend {flag}: this kernel ({}) lacks what the function probes need ({}): use --backend auto",
                    caps.kernel_release,
                    missing.join(", ")
                ))
            }
        };
        match self {
            Backend::Auto if caps.function_backend() => Ok(Source::Fentry {
                or_kprobes: kprobes,
            }),
            Backend::Auto => Ok(Source::Tracepoints),
            Backend::Tracepoints if has_tracepoints => Ok(Source::Tracepoints),
            Backend::Tracepoints => Err(anyhow!(
                "--backend tracepoints: this kernel ({}) has no ksm tracepoints (they arrived in Linux 6.4): use --backend auto",
                caps.kernel_release
            )),
            Backend::Functions => {
                functions("functions").map(|()| Source::Fentry { or_kprobes: false })
            }
            Backend::Kprobes if !kprobes => Err(anyhow!(
                "--backend kprobes: this kernel ({}) has no kprobes (CONFIG_KPROBES, or no perf kprobe PMU): use --backend auto",
                caps.kernel_release
            )),
            Backend::Kprobes => functions("kprobes").map(|()| Source::Kprobes),
        }
    }
}

/// Attaches the event programs of `source`; a kernel that can run none of them is refused in
/// one line. `zero_pfn`: the zero page's pfn, for the function backend's zero-page probe.
pub(super) fn attach(
    l: &mut Loader,
    source: Source,
    backend: Backend,
    zero_pfn: Option<Result<u64>>,
) -> Result<EventSource> {
    let asked = matches!(backend, Backend::Functions | Backend::Kprobes);
    let why = match backend {
        Backend::Functions => "--backend functions",
        Backend::Kprobes => "--backend kprobes",
        _ => "no ksm:* tracepoints (Linux < 6.4)",
    };
    let release = &l.caps.kernel_release;
    let events = match source {
        Source::Tracepoints => {
            for tp in &programs::KSM {
                match l.tracepoint_usable(tp) {
                    Ok(()) => l.attach_raw(tp)?,
                    Err(reason) => l.fallback(Fallback::KsmTracepoint {
                        tracepoint: tp.tracepoint.to_owned(),
                        reason,
                    }),
                }
            }
            return Ok(EventSource::Tracepoints);
        }
        Source::Fentry { or_kprobes } => match attach_function_backend(l) {
            Ok(()) => EventSource::Functions,
            Err(reason) if or_kprobes => {
                attach_kprobe_backend(l).map_err(|k| {
                    anyhow!(
                        "this kernel ({release}): {why}, and neither fentry ({}) nor kprobes ({k:#}) could attach to the KSM functions: run `ksm-trace doctor`",
                        crate::report::mechanisms::reason(&reason)
                    )
                })?;
                l.fallback(Fallback::KprobesForFentry { reason });
                EventSource::Kprobes
            }
            Err(reason) => {
                return Err(anyhow!(
                    "this kernel ({release}): {why}, and the function probes could not attach ({}): run `ksm-trace doctor`",
                    crate::report::mechanisms::reason(&reason)
                ));
            }
        },
        Source::Kprobes => {
            attach_kprobe_backend(l).map_err(|e| {
                anyhow!(
                    "this kernel ({release}): --backend kprobes: the kprobes could not attach ({e:#}): run `ksm-trace doctor`"
                )
            })?;
            EventSource::Kprobes
        }
    };
    l.fallback(Fallback::FunctionBackend { asked, via: events });
    let zero = zero_pfn
        .expect("set for the function backend")
        .map_err(error)
        .and_then(|pfn| {
            l.caps.zero_page_probe()?;
            match events {
                EventSource::Kprobes => attach_zero_page_kprobes(l).map_err(error),
                _ => attach_zero_page_fexit(l),
            }
            .map(|()| pfn)
        });
    l.fallback(match zero {
        Ok(zero_pfn) => Fallback::ZeroPageMergesFromFunction {
            via: events,
            zero_pfn,
        },
        Err(reason) => Fallback::ZeroPageMergesUntraced { reason },
    });
    Ok(events)
}

/// Who owns an mm: mm_struct.owner → task_struct, at the offsets the globals carry.
pub(super) fn attribution(l: &mut Loader, config: &Config) -> AttributionMechanism {
    if config.mm_owner == NO_OFFSET {
        l.fallback(Fallback::NotAttributed {
            reason: Reason::OffsetMissing {
                member: "mm_struct.owner".into(),
            },
        });
        return AttributionMechanism::Unavailable;
    }
    AttributionMechanism::MmOwner {
        mm_owner: config.mm_owner,
        task_tgid: config.task_tgid,
        task_comm: config.task_comm,
    }
}

/// The function backend ([`programs::FUNCTIONS`]) through fentry/fexit: every program loads
/// before any attaches, so a refusal leaves nothing attached.
fn attach_function_backend(l: &mut Loader) -> Result<(), Reason> {
    l.with_btf(|ebpf, caps, btf| {
        for f in &programs::FUNCTIONS {
            let loaded = match f.hook {
                Hook::Entry => program::<FEntry>(ebpf, f.program)
                    .map_err(error)?
                    .load(f.function, btf),
                Hook::Exit => program::<FExit>(ebpf, f.program)
                    .map_err(error)?
                    .load(f.function, btf),
            };
            loaded.map_err(|e| refused(caps, f.program, f.function, e))?;
        }
        for f in &programs::FUNCTIONS {
            let attached = match f.hook {
                Hook::Entry => program::<FEntry>(ebpf, f.program)
                    .map_err(error)?
                    .attach()
                    .map(drop),
                Hook::Exit => program::<FExit>(ebpf, f.program)
                    .map_err(error)?
                    .attach()
                    .map(drop),
            };
            attached.map_err(|e| error(e.into()))?;
        }
        Ok(())
    })
}

/// The function backend through kprobes ([`programs::FunctionProbe::kprobe`]).
fn attach_kprobe_backend(l: &mut Loader) -> Result<()> {
    let probes: Vec<(&str, &str)> = programs::FUNCTIONS
        .iter()
        .flat_map(|f| {
            std::iter::once((f.kprobe, f.function)).chain(f.kretprobe.map(|p| (p, f.function)))
        })
        .collect();
    l.attach_kprobes(&probes)
}

/// The function backend's optional zero-page probe ([`programs::ZERO_PAGE_MERGE`]).
fn attach_zero_page_fexit(l: &mut Loader) -> Result<(), Reason> {
    let f = &programs::ZERO_PAGE_MERGE;
    l.with_btf(|ebpf, caps, btf| {
        let prog = program::<FExit>(ebpf, f.program).map_err(error)?;
        prog.load(f.function, btf)
            .map_err(|e| refused(caps, f.program, f.function, e))?;
        prog.attach().map(drop).map_err(|e| error(e.into()))
    })
}

/// The same through kprobes.
fn attach_zero_page_kprobes(l: &mut Loader) -> Result<()> {
    let f = &programs::ZERO_PAGE_MERGE;
    let kretprobe = f.kretprobe.expect("an exit hook has a kretprobe");
    l.attach_kprobes(&[(f.kprobe, f.function), (kretprobe, f.function)])
}

#[cfg(test)]
mod tests {
    use super::*;

    /// What `doctor --json` found on a kernel of the lab (`ksm-trace lab --kernel NAME --json`,
    /// its `doctor.json.capabilities`): that kernel's BTF functions and offsets, tracepoints and
    /// kallsyms symbols, kept as a fixture.
    fn lab_kernel(name: &str) -> Capabilities {
        let path = format!(
            "{}/tests/fixtures/capabilities-{name}.json",
            env!("CARGO_MANIFEST_DIR")
        );
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap()
    }

    #[test]
    fn debian_6_1_takes_the_function_probes_and_refuses_the_tracepoints() {
        let caps = lab_kernel("debian-6.1");
        assert!(caps.function_backend_missing().is_empty());
        let auto = Backend::Auto.source(&caps, true).unwrap();
        assert_eq!(auto, Source::Fentry { or_kprobes: true });
        let no_kprobes = Backend::Auto.source(&caps, false).unwrap();
        assert_eq!(no_kprobes, Source::Fentry { or_kprobes: false });
        let err = Backend::Tracepoints
            .source(&caps, true)
            .unwrap_err()
            .to_string();
        assert!(err.contains("no ksm tracepoints"), "{err}");
        assert_eq!(
            Backend::Kprobes.source(&caps, true).unwrap(),
            Source::Kprobes
        );
        // The function backend's globals: the full-scan counter and rmap items are read.
        let config = caps.config(1, true);
        assert_ne!(config.ksm_scan_seqnr_addr, 0);
        assert_ne!(config.rmap_item_mm, NO_OFFSET);
        assert_ne!(config.stable_node_sharers, NO_OFFSET);
    }

    #[test]
    fn debian_6_12_takes_the_tracepoints_and_can_be_forced_to_either_function_path() {
        let caps = lab_kernel("debian-6.12");
        assert_eq!(
            Backend::Auto.source(&caps, true).unwrap(),
            Source::Tracepoints
        );
        assert_eq!(
            Backend::Functions.source(&caps, true).unwrap(),
            Source::Fentry { or_kprobes: false }
        );
        assert_eq!(
            Backend::Kprobes.source(&caps, true).unwrap(),
            Source::Kprobes
        );
        let err = Backend::Kprobes
            .source(&caps, false)
            .unwrap_err()
            .to_string();
        assert!(err.contains("has no kprobes"), "{err}");
        // With the tracepoints, ksmd's switch-outs must not report full scans too.
        assert_eq!(caps.config(1, false).ksm_scan_seqnr_addr, 0);
        assert!(caps.functions[programs::UNMERGE_FUNCTION]);
    }
}

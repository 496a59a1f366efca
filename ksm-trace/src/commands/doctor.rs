//! `ksm-trace doctor`: for the running kernel, which mechanism each measurement would use and
//! why the better ones are not available.
use std::fmt::Write as _;

use anyhow::Result;

use crate::{
    kernel::{self, sysfs},
    probes::{Capabilities, LatencyMode, Probes},
    recording::schema::Mechanisms,
    report::mechanisms,
};

pub fn run(json: bool) -> Result<String> {
    let caps = crate::run::session::detect_capabilities();
    let probed = probe(&caps);
    if json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "capabilities": caps,
            "mechanisms": probed.as_ref().ok(),
            "probe_error": probed.as_ref().err(),
        }))? + "\n");
    }
    let mut o = String::new();
    kernel_facts(&mut o, &caps);
    tracepoints(&mut o, &caps);
    functions_and_offsets(&mut o, &caps);
    match &probed {
        Ok(m) => {
            let _ = write!(o, "measurements:\n{}", mechanisms::lines(m));
        }
        Err(why) => {
            let _ = writeln!(o, "measurements: {why}");
        }
    }
    if caps.ksm {
        let _ = writeln!(o, "KSM knobs:");
        for (k, v) in sysfs::knob_values() {
            let _ = writeln!(o, "  {k}: {v}");
        }
    }
    Ok(o)
}

/// What each measurement would use here: loading (not attaching for long) is the only way to
/// learn whether fentry is allowed.
fn probe(caps: &Capabilities) -> Result<Mechanisms, String> {
    if !caps.root {
        Err("not probed: loading programs needs root".to_owned())
    } else if !caps.ksm {
        Err("not probed: this kernel has no KSM".to_owned())
    } else if !caps.btf {
        Err("not probed: this kernel has no BTF".to_owned())
    } else {
        let ksmd = kernel::ksmd_pid().unwrap_or(0);
        Probes::load(caps, ksmd, LatencyMode::Auto)
            .map(|p| p.mechanisms.clone())
            .map_err(|e| format!("loading the programs failed: {e:#}"))
    }
}

fn yes(b: bool) -> &'static str {
    if b { "yes" } else { "no" }
}

fn kernel_facts(o: &mut String, caps: &Capabilities) {
    let _ = writeln!(o, "kernel {}", caps.kernel_release);
    let _ = writeln!(
        o,
        "  root: {}   KSM: {}   BTF: {}   lockdown: {}   tracefs mounted: {}",
        yes(caps.root),
        yes(caps.ksm),
        yes(caps.btf),
        caps.lockdown.as_deref().unwrap_or("not readable"),
        yes(caps.tracefs_mounted)
    );
    let _ = writeln!(
        o,
        "  LSMs: {}   THP: {}",
        caps.lsms.as_deref().unwrap_or("not readable"),
        caps.thp.as_deref().unwrap_or("n/a")
    );
}

/// The ksm tracepoints (or the function backend standing in for them), the others ksm-trace
/// attaches to, and kprobes.
fn tracepoints(o: &mut String, caps: &Capabilities) {
    let missing: Vec<&str> = ksm_trace_common::programs::KSM
        .iter()
        .map(|tp| tp.tracepoint)
        .filter(|t| !caps.has_tracepoint(t))
        .collect();
    let _ = writeln!(
        o,
        "tracepoints (raw, no tracefs needed): {}",
        if missing.is_empty() {
            "all ksm:* present".to_owned()
        } else {
            format!("missing {}", missing.join(", "))
        }
    );
    if missing.len() == ksm_trace_common::programs::KSM.len() {
        let needs = caps.function_backend_missing();
        let _ = writeln!(
            o,
            "  function backend (fentry/fexit standing in for them): {}",
            if needs.is_empty() {
                "its functions, offsets and symbols are all here".to_owned()
            } else {
                format!("not possible, missing {}", needs.join(", "))
            }
        );
    }
    for tp in [
        "sched_switch",
        "mmap_lock_acquire_returned",
        "mmap_lock_released",
    ] {
        let _ = writeln!(o, "  {tp}: {}", yes(caps.has_tracepoint(tp)));
    }
    for (tp, why) in &caps.prototype_mismatches {
        let _ = writeln!(o, "  {tp}: not attached, {why}");
    }
    let _ = writeln!(
        o,
        "kprobes (the function backend where fentry is refused; --backend kprobes): {}",
        if crate::probes::kprobes_available() {
            "available"
        } else {
            "none (no perf kprobe PMU: CONFIG_KPROBES off?)"
        }
    );
}

fn functions_and_offsets(o: &mut String, caps: &Capabilities) {
    let _ = writeln!(
        o,
        "functions in BTF (fentry/fexit candidates; absent = inlined):"
    );
    for (f, present) in &caps.functions {
        let _ = writeln!(o, "  {f}: {}", yes(*present));
    }
    let _ = writeln!(o, "offsets from BTF:");
    for (name, off) in &caps.offsets {
        let _ = writeln!(
            o,
            "  {name}: {}",
            off.map_or("missing".to_owned(), |v| v.to_string())
        );
    }
}

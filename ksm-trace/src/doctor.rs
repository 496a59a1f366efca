//! `ksm-trace doctor`: for the running kernel, which mechanism each measurement would use and
//! why the better ones are not available.
use std::fmt::Write as _;

use anyhow::Result;

use crate::{
    kernel::{self, sysfs},
    probes::{Capabilities, LatencyMode, Probes, capabilities::KSM_TRACEPOINTS},
};

pub fn run(json: bool) -> Result<String> {
    let caps = Capabilities::detect();
    // Loading (not attaching for long) is the only way to learn whether fentry is allowed.
    let mechanisms = if caps.root && caps.ksm && caps.btf {
        let ksmd = kernel::ksmd_pid().unwrap_or(0);
        Probes::load(&caps, caps.config(ksmd), LatencyMode::Auto)
            .map(|p| p.mechanisms.clone())
            .ok()
    } else {
        None
    };
    if json {
        return Ok(serde_json::to_string_pretty(&serde_json::json!({
            "capabilities": caps,
            "mechanisms": mechanisms,
        }))? + "\n");
    }
    let yes = |b: bool| if b { "yes" } else { "no" };
    let mut o = String::new();
    let _ = writeln!(o, "kernel {}", caps.kernel_release);
    let _ = writeln!(
        o,
        "  root: {}   KSM: {}   BTF: {}   lockdown: {}   tracefs mounted: {}",
        yes(caps.root),
        yes(caps.ksm),
        yes(caps.btf),
        caps.lockdown.as_deref().unwrap_or("n/a"),
        yes(caps.tracefs_mounted)
    );
    let _ = writeln!(o, "  THP: {}", caps.thp.as_deref().unwrap_or("n/a"));
    let missing: Vec<&str> = KSM_TRACEPOINTS
        .iter()
        .copied()
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
    for tp in [
        "sched_switch",
        "mmap_lock_acquire_returned",
        "mmap_lock_released",
    ] {
        let _ = writeln!(o, "  {tp}: {}", yes(caps.has_tracepoint(tp)));
    }
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
    match &mechanisms {
        Some(m) => {
            let _ = writeln!(
                o,
                "measurements:\n  merge latency: {}\n  batches: {}\n  attribution: {}",
                m.merge_latency, m.batches, m.attribution
            );
            for f in &m.fallbacks {
                let _ = writeln!(o, "  fallback: {f}");
            }
        }
        None => {
            let _ = writeln!(o, "measurements: not probed (needs root, KSM and BTF)");
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

//! tracefs: whether it is mounted (ksm-trace's own raw tracepoints do not need it; bpftrace's
//! classic tracepoints do). Mounting it for a run is `run::mounts`.
use std::path::Path;

pub const TRACEFS: &str = "/sys/kernel/tracing";

pub fn mounted() -> bool {
    Path::new(TRACEFS).join("events").exists()
}

//! tracefs, mounted for the length of a run only when it is not mounted already. ksm-trace's own
//! raw tracepoints do not need it; bpftrace's classic tracepoints do.
use std::path::Path;

use anyhow::{Context as _, Result};
use nix::mount::{MsFlags, mount, umount};

pub const TRACEFS: &str = "/sys/kernel/tracing";

pub fn mounted() -> bool {
    Path::new(TRACEFS).join("events").exists()
}

/// Unmounts tracefs on drop if it was mounted here.
pub struct TracefsMount {
    mounted_here: bool,
}

impl TracefsMount {
    pub fn ensure() -> Result<Self> {
        if mounted() {
            return Ok(Self {
                mounted_here: false,
            });
        }
        // Written down first: a kill right after the mount must not leave it behind.
        crate::recovery::mounted(Path::new(TRACEFS));
        mount(
            Some("nodev"),
            TRACEFS,
            Some("tracefs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .inspect_err(|_| crate::recovery::unmounted(Path::new(TRACEFS)))
        .with_context(|| format!("mounting tracefs on {TRACEFS}"))?;
        Ok(Self { mounted_here: true })
    }
}

impl Drop for TracefsMount {
    fn drop(&mut self) {
        if !self.mounted_here {
            return;
        }
        match umount(TRACEFS) {
            Ok(()) => crate::recovery::unmounted(Path::new(TRACEFS)),
            Err(e) => {
                log::warn!("unmounting {TRACEFS}: {e} (unmount it by hand: umount {TRACEFS})")
            }
        }
    }
}

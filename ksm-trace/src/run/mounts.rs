//! File systems a run mounts, for its length only and only when not mounted already: tracefs
//! for bpftrace's classic tracepoints. Each mount is written into the crash-recovery state
//! before it is made, so a killed run's mount is undone by the next one.
use std::path::Path;

use anyhow::{Context as _, Result};
use nix::mount::{MsFlags, mount, umount};

use super::recovery;
use crate::kernel::tracefs::{TRACEFS, mounted};

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
        recovery::mounted(Path::new(TRACEFS));
        mount(
            Some("nodev"),
            TRACEFS,
            Some("tracefs"),
            MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
            None::<&str>,
        )
        .inspect_err(|_| recovery::unmounted(Path::new(TRACEFS)))
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
            Ok(()) => recovery::unmounted(Path::new(TRACEFS)),
            Err(e) => {
                log::warn!("unmounting {TRACEFS}: {e} (unmount it by hand: umount {TRACEFS})")
            }
        }
    }
}

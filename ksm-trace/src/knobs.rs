//! KSM's sysfs knobs, set for one run and put back afterwards.
//!
//! Every value is saved before the first write; [`KnobGuard`] restores them on drop, and
//! [`restore_saved`] does the same from the panic hook and the signal path, so the system is left
//! as it was found on normal exit, error, Ctrl-C, SIGTERM and panic.
use std::{
    sync::Mutex,
    time::{Duration, Instant},
};

use anyhow::{Result, bail};

use crate::kernel::sysfs;

/// (knob, original value), in the order they were first changed.
static SAVED: Mutex<Vec<(String, String)>> = Mutex::new(Vec::new());

/// Writes back every saved knob, newest first. Idempotent.
pub fn restore_saved() -> Vec<String> {
    let mut errors = Vec::new();
    let saved = match SAVED.lock() {
        Ok(mut saved) => std::mem::take(&mut *saved),
        Err(poisoned) => std::mem::take(&mut *poisoned.into_inner()),
    };
    for (name, value) in saved.iter().rev() {
        if let Err(e) = sysfs::write(name, value) {
            errors.push(format!("{e:#}"));
        }
    }
    errors
}

/// The knob settings a run asks for; `None` leaves the knob as it is.
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct KnobSettings {
    pub pages_to_scan: Option<u32>,
    pub sleep_ms: Option<u32>,
    pub use_zero_pages: Option<bool>,
    pub smart_scan: Option<bool>,
    pub max_page_sharing: Option<u32>,
    /// advisor_mode: `none` or `scan-time` (the advisor then sets pages_to_scan itself).
    pub advisor: Option<String>,
}

impl KnobSettings {
    /// Checks the settings against the running kernel without changing anything.
    pub fn validate(&self) -> Result<()> {
        if self.pages_to_scan == Some(0) {
            bail!("--pages-to-scan 0 would never scan: give a positive number of pages");
        }
        if let Some(a) = &self.advisor
            && a != "none"
            && a != "scan-time"
        {
            bail!("--advisor {a} is not none or scan-time");
        }
        if self.max_page_sharing.is_some_and(|m| m < 2) {
            bail!("--max-page-sharing must be at least 2");
        }
        if self.pages_to_scan.is_some() && self.advisor.as_deref() == Some("scan-time") {
            bail!(
                "--pages-to-scan and --advisor scan-time conflict: the advisor sets pages_to_scan itself"
            );
        }
        if self.pages_to_scan.is_some()
            && self.advisor.is_none()
            && let Ok(mode) = sysfs::read("advisor_mode")
            && mode.contains("[scan-time]")
        {
            bail!(
                "pages_to_scan is managed by the KSM advisor (advisor_mode=scan-time): drop \
                         --pages-to-scan or write none to {}/advisor_mode",
                sysfs::KSM_DIR
            );
        }
        Ok(())
    }
}

pub struct KnobGuard {
    /// ksmd's `run` when the guard was made.
    pub original_run: i64,
    /// Whether this run started ksmd.
    ran_ksmd: bool,
}

/// How long ksmd may take to drop what exited processes left in its trees.
const REAP_TIMEOUT: Duration = Duration::from_secs(5);

impl KnobGuard {
    pub fn new() -> Result<Self> {
        Ok(Self {
            original_run: sysfs::read_i64("run")?,
            ran_ksmd: false,
        })
    }

    /// Sets `name` to `value`, saving its original value the first time.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let current = sysfs::selected(&sysfs::read(name)?);
        {
            let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
            if !saved.iter().any(|(n, _)| n == name) {
                saved.push((name.to_owned(), current.clone()));
            }
        }
        if current != value {
            sysfs::write(name, value)?;
        }
        Ok(())
    }

    pub fn apply(&mut self, settings: &KnobSettings) -> Result<()> {
        // The advisor first: pages_to_scan cannot be written while it is in scan-time mode.
        if let Some(a) = &settings.advisor {
            self.set("advisor_mode", a)?;
        }
        if let Some(m) = settings.max_page_sharing {
            self.set("max_page_sharing", &m.to_string()).map_err(|e| {
                anyhow::anyhow!("{e:#}: the kernel changes max_page_sharing only while no KSM pages exist (stop other KSM users)")
            })?;
        }
        if let Some(s) = settings.smart_scan {
            self.set("smart_scan", if s { "1" } else { "0" })?;
        }
        if let Some(p) = settings.pages_to_scan {
            self.set("pages_to_scan", &p.to_string())?;
        }
        if let Some(s) = settings.sleep_ms {
            self.set("sleep_millisecs", &s.to_string())?;
        }
        if let Some(z) = settings.use_zero_pages {
            self.set("use_zero_pages", if z { "1" } else { "0" })?;
        }
        Ok(())
    }

    /// Stops ksmd between batches: the write returns once ksmd has finished its current batch
    /// (both take ksm_thread_mutex), so counters read afterwards describe a quiet ksmd. Pages
    /// stay merged (run=0, not run=2).
    pub fn pause_ksmd(&mut self) -> Result<()> {
        self.set("run", "0")
    }

    pub fn run_ksmd(&mut self) -> Result<()> {
        self.ran_ksmd = true;
        self.set("run", "1")
    }

    /// A process that exits leaves its rmap items for ksmd to drop on its next visit (ksm_exit
    /// moves the mm right after the scan cursor), so if ksmd is stopped again they stay counted
    /// in pages_shared/pages_sharing with no process behind them. When this run started ksmd,
    /// let it finish one more full scan — it visits those mms first — before stopping it.
    fn reap_exited(&mut self) -> Result<()> {
        let start = sysfs::read_i64("full_scans")?;
        self.set("sleep_millisecs", "0")?;
        self.set("run", "1")?;
        let deadline = Instant::now() + REAP_TIMEOUT;
        while sysfs::read_i64("full_scans")? == start {
            if Instant::now() >= deadline {
                bail!(
                    "ksmd did not finish a full scan within {} s: pages of exited workers may stay counted in pages_shared until it next runs",
                    REAP_TIMEOUT.as_secs()
                );
            }
            std::thread::sleep(Duration::from_millis(10));
        }
        Ok(())
    }
}

impl Drop for KnobGuard {
    fn drop(&mut self) {
        if self.ran_ksmd
            && self.original_run == 0
            && let Err(e) = self.reap_exited()
        {
            eprintln!("ksm-trace: {e:#}");
        }
        for e in restore_saved() {
            eprintln!("ksm-trace: could not restore a KSM knob: {e}");
        }
    }
}

//! KSM's sysfs knobs, set for one run and put back afterwards.
//!
//! Every value is saved before the first write; [`KnobGuard`] restores them on drop, and
//! [`restore_saved`] does the same from the panic hook and the signal path, so the system is left
//! as it was found on normal exit, error, Ctrl-C, SIGTERM and panic.
use std::sync::Mutex;

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
    if !saved.is_empty() && errors.is_empty() {
        crate::run::recovery::knobs_restored();
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
    /// The scan-time advisor's target and bounds.
    #[serde(default)]
    pub advisor_bounds: AdvisorBounds,
}

/// What the scan-time advisor aims at and the bounds it keeps pages_to_scan in (None: as the
/// machine has it).
#[derive(Clone, Debug, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct AdvisorBounds {
    /// advisor_target_scan_time, seconds per full scan.
    pub target_scan_time_s: Option<u64>,
    /// advisor_max_cpu, percent of one CPU.
    pub max_cpu: Option<u64>,
    /// advisor_min_pages_to_scan and advisor_max_pages_to_scan.
    pub min_pages: Option<u64>,
    pub max_pages: Option<u64>,
}

impl AdvisorBounds {
    fn is_set(&self) -> bool {
        *self != Self::default()
    }

    /// (knob, value) of each bound set.
    fn knobs(&self) -> Vec<(&'static str, u64)> {
        [
            ("advisor_target_scan_time", self.target_scan_time_s),
            ("advisor_max_cpu", self.max_cpu),
            ("advisor_min_pages_to_scan", self.min_pages),
            ("advisor_max_pages_to_scan", self.max_pages),
        ]
        .into_iter()
        .filter_map(|(k, v)| Some((k, v?)))
        .collect()
    }
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
        let b = &self.advisor_bounds;
        if b.is_set() && self.advisor.as_deref() != Some("scan-time") {
            bail!(
                "--advisor-target, --advisor-max-cpu and --advisor-min/max-pages set the scan-time advisor: add --advisor scan-time"
            );
        }
        if b.target_scan_time_s == Some(0) {
            bail!("--advisor-target must be at least 1 s: the advisor counts whole seconds");
        }
        if b.max_cpu.is_some_and(|c| c == 0 || c > 100) {
            bail!("--advisor-max-cpu is a percentage of one CPU: give 1 to 100");
        }
        if let (Some(lo), Some(hi)) = (b.min_pages, b.max_pages)
            && lo > hi
        {
            bail!("--advisor-min-pages {lo} is above --advisor-max-pages {hi}: swap them");
        }
        if b.min_pages == Some(0) {
            bail!("--advisor-min-pages must be at least 1");
        }
        if b.is_set()
            && !std::path::Path::new(sysfs::KSM_DIR)
                .join("advisor_mode")
                .exists()
        {
            bail!(
                "this kernel has no KSM advisor (it came in Linux 6.8): drop the --advisor options"
            );
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

/// How long one full scan of a workload ksm-trace started should take when the user chose no
/// scan settings: short enough that a run sees several full scans and settles in well under a
/// minute, long enough that ksmd's batches stay a modest share of a CPU.
pub const TARGET_FULL_SCAN_S: f64 = 2.0;
/// The most pages per batch ksm-trace picks by itself.
const MAX_AUTO_PAGES_TO_SCAN: u64 = 20_000;

/// What ksm-trace does about the scan rate before a run, and the line that says so.
#[derive(Clone, Debug, PartialEq)]
pub struct ScanPlan {
    /// The settings to apply (the user's, plus a chosen pages_to_scan where it picked one).
    pub settings: KnobSettings,
    pub message: Option<String>,
}

impl ScanPlan {
    /// `pages`: mergeable pages one full scan covers (the workload's and those KSM already
    /// tracks); `current`: pages_to_scan and sleep_millisecs now; `own_workload`: ksm-trace
    /// starts the workload (a study subject), so it may pick a scan rate that reaches it. It
    /// never picks one for the machine's own processes, and never under the advisor, which
    /// sets pages_to_scan itself.
    pub fn new(
        user: &KnobSettings,
        pages: u64,
        current: (u64, u64),
        advisor_on: bool,
        own_workload: bool,
    ) -> Self {
        let mut settings = user.clone();
        let sleep_ms = user.sleep_ms.map_or(current.1, u64::from).max(1);
        let full_scan_s = |pages_to_scan: u64| {
            pages.div_ceil(pages_to_scan.max(1)) as f64 * sleep_ms as f64 / 1000.0
        };
        if user.pages_to_scan.is_some()
            || advisor_on
            || user.advisor.as_deref() == Some("scan-time")
            || pages == 0
        {
            return Self {
                settings,
                message: None,
            };
        }
        let at_current = full_scan_s(current.0);
        if !own_workload || at_current <= TARGET_FULL_SCAN_S {
            return Self {
                settings,
                message: Some(format!(
                    "at pages_to_scan={} and sleep_millisecs={sleep_ms}, one full scan of the {pages} pages KSM covers takes at least {at_current:.1} s{}",
                    current.0,
                    if at_current > 60.0 {
                        ": expect few full scans in a short run (--pages-to-scan raises the rate)"
                    } else {
                        ""
                    }
                )),
            };
        }
        let wanted = (pages as f64 * sleep_ms as f64 / (TARGET_FULL_SCAN_S * 1000.0)).ceil() as u64;
        let chosen = wanted
            .div_ceil(100)
            .saturating_mul(100)
            .min(MAX_AUTO_PAGES_TO_SCAN);
        settings.pages_to_scan = Some(chosen as u32);
        Self {
            settings,
            message: Some(format!(
                "no scan settings given: pages_to_scan {}→{chosen} for this run, so one full scan of the workload's {pages} pages takes about {:.1} s at sleep_millisecs={sleep_ms} instead of {at_current:.0} s (restored afterwards; --pages-to-scan chooses)",
                current.0,
                full_scan_s(chosen)
            )),
        }
    }
}

pub struct KnobGuard {
    /// ksmd's `run` when the guard was made.
    pub original_run: i64,
    /// Whether this run started ksmd.
    ran_ksmd: bool,
}

impl KnobGuard {
    pub fn new() -> Result<Self> {
        Ok(Self {
            original_run: sysfs::read_i64("run")?,
            ran_ksmd: false,
        })
    }

    /// Sets `name` to `value`, saving its original value the first time.
    pub fn set(&mut self, name: &str, value: &str) -> Result<()> {
        let current = self.save(name)?;
        if current != value {
            sysfs::write(name, value)?;
        }
        Ok(())
    }

    /// Saves `name`'s original value (the first time), in memory for the orderly exits and in
    /// the crash-recovery state for the others; returns its current value.
    fn save(&mut self, name: &str) -> Result<String> {
        let current = sysfs::selected(&sysfs::read(name)?);
        let mut saved = SAVED.lock().unwrap_or_else(|p| p.into_inner());
        if !saved.iter().any(|(n, _)| n == name) {
            crate::run::recovery::knob_changed(name, &current);
            saved.push((name.to_owned(), current.clone()));
        }
        Ok(current)
    }

    pub fn apply(&mut self, settings: &KnobSettings) -> Result<()> {
        // The advisor first: pages_to_scan cannot be written while it is in scan-time mode.
        // Switching the mode makes the kernel set pages_to_scan itself (to advisor_min_pages_to_scan,
        // or back to 100), so it is saved first and restored after the mode.
        if let Some(a) = &settings.advisor {
            self.save("pages_to_scan")?;
            // The bounds before the mode: the kernel starts the advisor from them.
            for (knob, value) in settings.advisor_bounds.knobs() {
                self.set(knob, &value.to_string())?;
            }
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
        if self.original_run == 0 {
            crate::run::recovery::ksmd_started();
        }
        self.set("run", "1")
    }

    /// A process that exits leaves its rmap items for ksmd to drop on its next visit (ksm_exit
    /// moves the mm right after the scan cursor), so if ksmd is stopped again they stay counted
    /// in pages_shared/pages_sharing with no process behind them. When this run started ksmd,
    /// let it finish one more full scan — it visits those mms first — before stopping it.
    fn reap_exited(&mut self) -> Result<()> {
        self.save("sleep_millisecs")?;
        self.save("run")?;
        crate::kernel::let_ksmd_drop_exited()
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

#[cfg(test)]
mod tests {
    use super::*;

    fn plan(user: KnobSettings, pages: u64, current: (u64, u64), own: bool) -> ScanPlan {
        ScanPlan::new(&user, pages, current, false, own)
    }

    #[test]
    fn picks_a_rate_that_reaches_its_own_workload() {
        // vms:4 at the kernel's defaults: 262144 pages, 100 pages per 20 ms = 52 s per scan.
        let p = plan(KnobSettings::default(), 262_144, (100, 20), true);
        assert_eq!(p.settings.pages_to_scan, Some(2700));
        let msg = p.message.unwrap();
        assert!(msg.contains("pages_to_scan 100→2700"), "{msg}");
        assert!(msg.contains("about 2.0 s"), "{msg}");
        // The user's sleep is what the rate is computed for.
        let user = KnobSettings {
            sleep_ms: Some(200),
            ..Default::default()
        };
        let p = plan(user, 10_000, (100, 20), true);
        assert_eq!(p.settings.pages_to_scan, Some(1000));
        assert_eq!(p.settings.sleep_ms, Some(200));
    }

    #[test]
    fn leaves_the_rate_alone_when_chosen_or_not_its_own() {
        let user = KnobSettings {
            pages_to_scan: Some(500),
            ..Default::default()
        };
        assert_eq!(plan(user.clone(), 262_144, (100, 20), true).settings, user);
        // Someone else's processes: the machine's settings, and how slow they are.
        let p = plan(KnobSettings::default(), 262_144, (100, 20), false);
        assert_eq!(p.settings.pages_to_scan, None);
        let msg = p.message.unwrap();
        assert!(msg.contains("at least 52.4 s"), "{msg}");
        // Already fast enough.
        let p = plan(KnobSettings::default(), 1000, (100, 20), true);
        assert_eq!(p.settings.pages_to_scan, None);
        // The advisor owns pages_to_scan.
        let p = ScanPlan::new(&KnobSettings::default(), 262_144, (100, 20), true, true);
        assert_eq!(
            p,
            ScanPlan {
                settings: KnobSettings::default(),
                message: None
            }
        );
    }

    #[test]
    fn caps_what_it_picks() {
        let p = plan(KnobSettings::default(), 100_000_000, (100, 20), true);
        assert_eq!(
            p.settings.pages_to_scan,
            Some(MAX_AUTO_PAGES_TO_SCAN as u32)
        );
    }
}

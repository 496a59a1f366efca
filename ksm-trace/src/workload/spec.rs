//! Workload specs: `KIND:COUNT[,key=value...]`, e.g. `procs:8,pages=25600,dup=0.5,rounds=5,wait=2s`
//! or `vms:4,mem=256M,shared=32M,churn=1M/2s`.
use std::{collections::BTreeMap, time::Duration};

use anyhow::{Context as _, Result, anyhow, bail};
use serde::{Deserialize, Serialize};

use crate::parse;

/// How a procs worker makes its memory mergeable.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum MergeMode {
    /// madvise(MADV_MERGEABLE) on the region.
    Madvise,
    /// prctl(PR_SET_MEMORY_MERGE): the whole process.
    Prctl,
    /// Never opted in: memory KSM must leave alone (a control, and `explain`'s "not opted in").
    Off,
}

/// Processes with mergeable anonymous memory.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct ProcsSpec {
    pub count: u32,
    /// Pages per process.
    pub pages: u64,
    /// Fraction of each process's pages that is identical across processes.
    pub dup: f64,
    /// Fraction that is zero-filled.
    pub zero: f64,
    /// Number of memory patterns each process writes; every round after the first rewrites all
    /// its pages (breaking merged pages, which KSM then merges again).
    pub rounds: u32,
    /// Time between rounds; after the last round the workload ends once this has passed again.
    #[serde(with = "humantime_serde_compat")]
    pub wait: Duration,
    /// Fraction of the identical pages written per second (copy-on-write pressure).
    pub write: f64,
    pub mode: MergeMode,
    /// Some(true): MADV_HUGEPAGE, Some(false): MADV_NOHUGEPAGE, None: system default.
    pub thp: Option<bool>,
    /// `same`: every byte of every page is '*' (the kernel selftest's fill; dup and zero are
    /// ignored, and rounds rewrite nothing); `distinct`: the dup/zero/unique pattern.
    #[serde(default)]
    pub same: bool,
    /// Workers spin on a CPU between their writes instead of sleeping, so their memory is in
    /// use while ksmd merges it (as a running VM's is, and as the kernel selftest's busy-polling
    /// process is): every merge must then shoot down the worker's TLB entries on that CPU.
    #[serde(default)]
    pub busy: bool,
    /// Fraction of the identical pages each worker unmerges at the end of every round, in one
    /// timed MADV_UNMERGEABLE call (the kernel selftest's `ksm_tests -D`), then marks them
    /// mergeable again for the next round (after the last round they stay unmerged); 0: none.
    /// With `mode=prctl`, `unmerge=1` is prctl(PR_SET_MEMORY_MERGE, 0) instead (the whole
    /// process), turned on again the same way.
    #[serde(default)]
    pub unmerge: f64,
    /// `map=shared`: the memory is MAP_SHARED, as a VMM's guest RAM backed by memfd or shm
    /// can be; MADV_MERGEABLE then succeeds and KSM never merges it.
    #[serde(default)]
    pub shared: bool,
}

/// Guest VMs under QEMU.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct VmsSpec {
    pub count: u32,
    /// Guest RAM, bytes.
    pub mem: u64,
    /// Seeded payload identical in every guest, bytes.
    pub shared: u64,
    /// Random memory private to each guest, bytes.
    pub private: u64,
    /// Overwrite then restore `bytes` of the shared payload every `every`.
    pub churn: Option<Churn>,
    /// What the guests run (shared, private and churn apply to busybox guests only).
    pub system: GuestSystem,
}

/// What a `vms` guest boots and runs.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "os", rename_all = "lowercase")]
pub enum GuestSystem {
    /// ksm-trace's busybox initramfs with the seeded payload: quick, synthetic.
    Busybox,
    /// Debian 12 with MariaDB from the cached image; `load` runs sysbench against it.
    Debian { load: Option<SysbenchLoad> },
    /// The user's bootable disk image (raw or qcow2), booted by firmware from a copy-on-write
    /// overlay per guest; the image itself is never written.
    Image { path: std::path::PathBuf },
}

/// `sysbench oltp_read_write` inside each Debian guest, on its own MariaDB.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct SysbenchLoad {
    pub tables: u32,
    pub table_size: u64,
    pub threads: u32,
    /// How long the load runs once the tables are ready.
    #[serde(with = "humantime_serde_compat")]
    pub time: Duration,
}

#[derive(Clone, Copy, Debug, PartialEq, Serialize, Deserialize)]
pub struct Churn {
    pub bytes: u64,
    #[serde(with = "humantime_serde_compat")]
    pub every: Duration,
}

#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "lowercase")]
pub enum WorkloadSpec {
    Procs(ProcsSpec),
    Vms(VmsSpec),
}

/// Workers a procs workload may start: each holds two pipes in ksm-trace (the open-file limit
/// is raised to fit) and about 1 MiB of its own beside its pages.
pub const MAX_PROCS: u64 = 4096;

const PROCS_HELP: &str = "procs:N[,pages=P][,dup=F][,zero=F][,rounds=R][,wait=D][,write=F][,mode=madvise|prctl|off][,thp=on|off][,pattern=distinct|same][,busy=on|off][,unmerge=F][,map=private|shared]";
const VMS_HELP: &str = "vms:N[,mem=256M][,shared=32M][,private=16M][,churn=1M/2s] or vms:N,os=debian[,load=sysbench,tables=2,table-size=10000,threads=1,time=60s] or vms:N,image=PATH";

impl WorkloadSpec {
    pub fn parse(text: &str) -> Result<Self> {
        let (kind, rest) = text.split_once(':').ok_or_else(|| {
            anyhow!("workload spec {text:?} has no count: use {PROCS_HELP} or {VMS_HELP}")
        })?;
        let mut parts = rest.split(',');
        let count_text = parts.next().unwrap_or_default();
        let options = parse_options(parts)?;
        match kind {
            "procs" => parse_procs(count_text, options).map(Self::Procs),
            "vms" => parse_vms(count_text, options).map(Self::Vms),
            _ => bail!("unknown workload kind {kind:?}: use {PROCS_HELP} or {VMS_HELP}"),
        }
    }

    /// How long the workload's own load runs (vms with sysbench), if it has one.
    pub fn load_time(&self) -> Option<Duration> {
        match self {
            Self::Vms(VmsSpec {
                system: GuestSystem::Debian { load: Some(load) },
                ..
            }) => Some(load.time),
            _ => None,
        }
    }

    /// procs with rounds or unmerging: how long its script runs (every round and the wait
    /// after the last); None when the workload only fills once and holds.
    pub fn rounds_time(&self) -> Option<Duration> {
        match self {
            Self::Procs(p) if p.rounds > 1 || p.unmerge > 0.0 => Some(p.wait * p.rounds),
            _ => None,
        }
    }

    /// Host memory the workload will use, in bytes.
    pub fn memory_bytes(&self, page_size: u64) -> u64 {
        match self {
            Self::Procs(p) => p.count as u64 * p.pages * page_size,
            // QEMU's own overhead (TCG translation buffer, devices) on top of guest RAM.
            Self::Vms(v) => v.count as u64 * (v.mem + (64 << 20)),
        }
    }
}

fn parse_procs(count_text: &str, options: BTreeMap<String, String>) -> Result<ProcsSpec> {
    let mut spec = ProcsSpec {
        count: parse_count(count_text, 1, MAX_PROCS, "procs")?,
        pages: 25_600,
        dup: 0.5,
        zero: 0.0,
        rounds: 1,
        wait: Duration::from_secs(10),
        write: 0.0,
        mode: MergeMode::Madvise,
        thp: None,
        same: false,
        busy: false,
        unmerge: 0.0,
        shared: false,
    };
    for (key, value) in options {
        match key.as_str() {
            "pages" => spec.pages = parse_count(&value, 1, 64 << 20, "pages")? as u64,
            "dup" => spec.dup = parse_fraction(&value, "dup")?,
            "zero" => spec.zero = parse_fraction(&value, "zero")?,
            "rounds" => spec.rounds = parse_count(&value, 1, 10_000, "rounds")?,
            "wait" => spec.wait = parsed(parse::duration(&value), "wait", &value)?,
            "write" => spec.write = parse_fraction(&value, "write")?,
            "unmerge" => spec.unmerge = parse_fraction(&value, "unmerge")?,
            "mode" => {
                spec.mode = match value.as_str() {
                    "madvise" => MergeMode::Madvise,
                    "prctl" => MergeMode::Prctl,
                    "off" => MergeMode::Off,
                    _ => bail!("mode={value} is not madvise, prctl or off"),
                }
            }
            "thp" => spec.thp = Some(parsed(parse::on_off(&value), "thp", &value)?),
            "busy" => spec.busy = parsed(parse::on_off(&value), "busy", &value)?,
            "map" => {
                spec.shared = match value.as_str() {
                    "shared" => true,
                    "private" => false,
                    _ => bail!("map={value} is not private or shared"),
                }
            }
            "pattern" => {
                spec.same = match value.as_str() {
                    "same" => true,
                    "distinct" => false,
                    _ => bail!("pattern={value} is not distinct or same"),
                }
            }
            _ => bail!("unknown procs option {key:?}: use {PROCS_HELP}"),
        }
    }
    if spec.mode == MergeMode::Off && spec.unmerge > 0.0 {
        bail!(
            "unmerge={} needs memory that was merged: drop it with mode=off",
            spec.unmerge
        );
    }
    if spec.dup + spec.zero > 1.0 {
        bail!(
            "dup={} plus zero={} is more than all pages: make them add up to at most 1",
            spec.dup,
            spec.zero
        );
    }
    Ok(spec)
}

fn parse_vms(count_text: &str, mut options: BTreeMap<String, String>) -> Result<VmsSpec> {
    let system = parse_guest_system(&mut options)?;
    let busybox = system == GuestSystem::Busybox;
    let mut spec = VmsSpec {
        count: parse_count(count_text, 1, 64, "vms")?,
        // A Debian guest with MariaDB needs more than busybox; a user's image, a typical VM's.
        mem: match system {
            GuestSystem::Busybox => 256 << 20,
            GuestSystem::Debian { .. } => 512 << 20,
            GuestSystem::Image { .. } => 1 << 30,
        },
        shared: 32 << 20,
        private: 16 << 20,
        churn: None,
        system,
    };
    for (key, value) in options {
        if !busybox && ["shared", "private", "churn"].contains(&key.as_str()) {
            bail!("{key}= shapes the busybox guests' payload only: drop it, or drop os=/image=");
        }
        match key.as_str() {
            "mem" => spec.mem = parsed(parse::size(&value), "mem", &value)?,
            "shared" => spec.shared = parsed(parse::size(&value), "shared", &value)?,
            "private" => spec.private = parsed(parse::size(&value), "private", &value)?,
            "churn" => {
                let (bytes, every) = value
                    .split_once('/')
                    .ok_or_else(|| anyhow!("churn={value} is not SIZE/INTERVAL (e.g. 1M/2s)"))?;
                spec.churn = Some(Churn {
                    bytes: parsed(parse::size(bytes), "churn size", bytes)?,
                    every: parsed(parse::duration(every), "churn interval", every)?,
                });
            }
            _ => bail!("unknown vms option {key:?}: use {VMS_HELP}"),
        }
    }
    // MariaDB needs room; anything else is the user's to judge above a bootable minimum.
    let min_mem = match spec.system {
        GuestSystem::Debian { .. } => 384 << 20,
        _ => 96 << 20,
    };
    if spec.mem < min_mem {
        bail!(
            "mem={} MiB is too small for a guest: use at least {}M",
            spec.mem >> 20,
            min_mem >> 20
        );
    }
    if !busybox {
        return Ok(spec);
    }
    // The guest kernel and busybox need room besides the payloads.
    if spec.shared + spec.private + (64 << 20) > spec.mem {
        bail!(
            "shared ({} MiB) + private ({} MiB) do not fit in mem={} MiB with 64 MiB for the guest kernel: raise mem or lower them",
            spec.shared >> 20,
            spec.private >> 20,
            spec.mem >> 20
        );
    }
    if let Some(churn) = spec.churn
        && churn.bytes > spec.shared
    {
        bail!(
            "churn size {} is larger than the shared payload: lower it or raise shared",
            churn.bytes
        );
    }
    Ok(spec)
}

/// Takes `os=`, `image=`, `load=` and the load's own options out of `options`.
fn parse_guest_system(options: &mut BTreeMap<String, String>) -> Result<GuestSystem> {
    let os = options.remove("os");
    let image = options.remove("image");
    let load = options.remove("load");
    let mut sysbench = SysbenchLoad {
        tables: 2,
        table_size: 10_000,
        threads: 1,
        time: Duration::from_secs(60),
    };
    let mut load_options = Vec::new();
    for key in ["tables", "table-size", "threads", "time"] {
        let Some(value) = options.remove(key) else {
            continue;
        };
        load_options.push(key);
        match key {
            "tables" => sysbench.tables = parse_count(&value, 1, 64, "tables")?,
            "table-size" => {
                sysbench.table_size = parse_count(&value, 1, 10_000_000, "table-size")? as u64
            }
            "threads" => sysbench.threads = parse_count(&value, 1, 256, "threads")?,
            _ => {
                sysbench.time = parsed(parse::duration(&value), "time", &value)?;
                if sysbench.time < Duration::from_secs(1) {
                    bail!(
                        "time={value} is too short: sysbench runs whole seconds, use at least 1s"
                    );
                }
            }
        }
    }
    let load = match load.as_deref() {
        None | Some("none") => None,
        Some("sysbench") => Some(sysbench),
        Some(other) => bail!("load={other} is not sysbench or none"),
    };
    if load.is_none()
        && let Some(key) = load_options.first()
    {
        bail!("{key}= sets the sysbench load: add load=sysbench");
    }
    match (os.as_deref(), image) {
        (Some(_), Some(_)) => bail!("image= boots your own image: drop os="),
        (None, Some(path)) => {
            if load.is_some() {
                bail!("load=sysbench runs in ksm-trace's Debian guests, not in image=: drop one");
            }
            if path.is_empty() {
                bail!("image= needs the path of a bootable raw or qcow2 disk image");
            }
            Ok(GuestSystem::Image { path: path.into() })
        }
        (None | Some("debian"), None) if load.is_some() => Ok(GuestSystem::Debian { load }),
        (Some("debian"), None) => Ok(GuestSystem::Debian { load }),
        (None | Some("busybox"), None) => {
            if load.is_some() {
                bail!("load=sysbench needs os=debian (busybox guests have no database)");
            }
            Ok(GuestSystem::Busybox)
        }
        (Some(other), None) => bail!("os={other} is not busybox or debian"),
    }
}

fn parse_options<'a>(parts: impl Iterator<Item = &'a str>) -> Result<BTreeMap<String, String>> {
    let mut options = BTreeMap::new();
    for part in parts {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| anyhow!("workload option {part:?} is not key=value"))?;
        if options.insert(k.to_owned(), v.to_owned()).is_some() {
            bail!("workload option {k:?} is given twice");
        }
    }
    Ok(options)
}

fn parse_count(text: &str, min: u64, max: u64, what: &str) -> Result<u32> {
    let n: u64 = text
        .parse()
        .with_context(|| format!("{what} must be a whole number, not {text:?}"))?;
    if !(min..=max).contains(&n) {
        bail!("{what}={n} is out of range: use {min} to {max}");
    }
    Ok(n as u32)
}

fn parse_fraction(text: &str, what: &str) -> Result<f64> {
    let f: f64 = text
        .parse()
        .with_context(|| format!("{what} must be a fraction between 0 and 1, not {text:?}"))?;
    if !(0.0..=1.0).contains(&f) {
        bail!("{what}={f} is out of range: use a fraction between 0 and 1");
    }
    Ok(f)
}

/// `what=text: reason`, for errors from [`crate::parse`].
fn parsed<T>(result: Result<T, String>, what: &str, text: &str) -> Result<T> {
    result.map_err(|e| anyhow!("{what}={text}: {e}"))
}

/// Durations in recordings as seconds (f64), readable by any tool.
mod humantime_serde_compat {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_procs_with_defaults_and_options() {
        let WorkloadSpec::Procs(p) = WorkloadSpec::parse("procs:4").unwrap() else {
            panic!()
        };
        assert_eq!(
            (p.count, p.pages, p.dup, p.rounds, p.mode, p.thp),
            (4, 25_600, 0.5, 1, MergeMode::Madvise, None)
        );
        let WorkloadSpec::Procs(p) = WorkloadSpec::parse(
            "procs:8,pages=100,dup=0.5,zero=0.1,rounds=5,wait=2s,write=0.05,mode=prctl,thp=off,busy=on,unmerge=0.25",
        )
        .unwrap() else {
            panic!()
        };
        assert_eq!(
            (p.count, p.pages, p.rounds, p.wait),
            (8, 100, 5, Duration::from_secs(2))
        );
        assert_eq!(
            (p.zero, p.write, p.mode, p.thp),
            (0.1, 0.05, MergeMode::Prctl, Some(false))
        );
        assert!(p.busy);
        assert_eq!(p.unmerge, 0.25);
        assert!(
            WorkloadSpec::parse("procs:1,unmerge=2")
                .unwrap_err()
                .to_string()
                .contains("unmerge")
        );
        assert!(WorkloadSpec::parse("procs:1000,pages=64").is_ok());
        let err = WorkloadSpec::parse("procs:5000").unwrap_err().to_string();
        assert!(err.contains("4096"), "{err}");
    }

    #[test]
    fn parses_guest_systems_with_their_defaults() {
        let vms = |text: &str| match WorkloadSpec::parse(text).unwrap() {
            WorkloadSpec::Vms(v) => v,
            _ => panic!("{text}"),
        };
        let v = vms("vms:2,load=sysbench,tables=4,table-size=500,threads=2,time=90s");
        let GuestSystem::Debian { load: Some(load) } = &v.system else {
            panic!("{v:?}")
        };
        assert_eq!(
            (load.tables, load.table_size, load.threads, load.time),
            (4, 500, 2, Duration::from_secs(90))
        );
        assert_eq!(v.mem, 512 << 20);
        assert_eq!(
            vms("vms:1,os=debian").system,
            GuestSystem::Debian { load: None }
        );
        let v = vms("vms:3,image=/srv/db.qcow2,mem=2G");
        assert_eq!(
            (v.system, v.mem),
            (
                GuestSystem::Image {
                    path: "/srv/db.qcow2".into()
                },
                2 << 30
            )
        );
        assert_eq!(vms("vms:1").system, GuestSystem::Busybox);
    }

    #[test]
    fn parses_vms() {
        let WorkloadSpec::Vms(v) =
            WorkloadSpec::parse("vms:4,mem=256M,shared=32M,churn=1M/2s").unwrap()
        else {
            panic!()
        };
        assert_eq!((v.count, v.mem, v.shared), (4, 256 << 20, 32 << 20));
        assert_eq!(
            v.churn,
            Some(Churn {
                bytes: 1 << 20,
                every: Duration::from_secs(2)
            })
        );
        let WorkloadSpec::Vms(v) = WorkloadSpec::parse("vms:2,mem=128M").unwrap() else {
            panic!()
        };
        assert_eq!(
            (v.mem, v.shared, v.private, v.churn),
            (128 << 20, 32 << 20, 16 << 20, None)
        );
    }

    #[test]
    fn rejects_bad_specs_with_a_reason() {
        for (spec, needle) in [
            ("procs", "no count"),
            ("procs:0", "out of range"),
            ("procs:-1", "whole number"),
            ("procs:2,pages=0", "out of range"),
            ("procs:2,dup=1.5", "out of range"),
            ("procs:2,dup=x", "fraction"),
            ("procs:2,dup=0.8,zero=0.5", "at most 1"),
            ("procs:2,mode=mmap", "madvise, prctl or off"),
            ("procs:2,thp=maybe", "on or off"),
            ("procs:2,wait=-2s", "duration"),
            ("procs:2,wait=1e20", "wait=1e20: longer than 30 days"),
            ("procs:2,wait=NaN", "wait=NaN: not longer than zero"),
            ("procs:2,color=red", "unknown procs option"),
            ("procs:2,pages", "key=value"),
            ("procs:2,pages=1,pages=2", "twice"),
            ("vms:0", "out of range"),
            ("vms:2,mem=-1M", "size"),
            ("vms:2,mem=64M", "too small"),
            ("vms:2,mem=128M,shared=100M", "do not fit"),
            ("vms:2,mem=99999999999G", "out of range"),
            ("vms:2,churn=1M", "SIZE/INTERVAL"),
            (
                "vms:2,churn=1M/inf",
                "churn interval=inf: longer than 30 days",
            ),
            (
                "vms:2,churn=99999999999999999999K/1s",
                "churn size=99999999999999999999K: out of range",
            ),
            ("vms:2,churn=64M/1s", "larger than the shared"),
            ("vms:2,disk=1G", "unknown vms option"),
            ("vms:2,os=windows", "not busybox or debian"),
            ("vms:2,os=busybox,load=sysbench", "needs os=debian"),
            ("vms:2,load=pgbench", "not sysbench or none"),
            ("vms:2,os=debian,tables=4", "add load=sysbench"),
            ("vms:2,load=sysbench,tables=0", "out of range"),
            ("vms:2,load=sysbench,time=500ms", "too short"),
            ("vms:2,os=debian,shared=8M", "busybox guests' payload only"),
            ("vms:2,os=debian,image=/x.qcow2", "drop os="),
            ("vms:2,image=/x.qcow2,load=sysbench", "not in image="),
            ("vms:2,image=", "needs the path"),
            ("vms:2,os=debian,mem=256M", "at least 384M"),
            ("disks:2", "unknown workload kind"),
        ] {
            let err = WorkloadSpec::parse(spec).unwrap_err().to_string();
            assert!(err.contains(needle), "{spec}: {err}");
        }
    }

    #[test]
    fn memory_size() {
        let spec = WorkloadSpec::parse("procs:3,pages=10").unwrap();
        assert_eq!(spec.memory_bytes(4096), 3 * 10 * 4096);
    }
}

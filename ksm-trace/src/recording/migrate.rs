//! Older recordings, upgraded one version at a time to the current shape before they are
//! deserialized: one function per step, each taking a file of version N to version N + 1 (see
//! the version rule in `schema.rs`). Steps work on the JSON value, so they need no copy of the
//! old types.
use anyhow::{Result, anyhow};
use serde_json::{Map, Value, json};

use super::schema::VERSION;

/// Upgrades `value`, a recording of `version`, to [`VERSION`].
pub fn upgrade(mut value: Value, version: u32) -> Result<Value> {
    for from in version..VERSION {
        value = match from {
            1 => v1_to_v2(value)?,
            2 => v2_to_v3(value)?,
            3 => v3_to_v4(value)?,
            4 => v4_to_v5(value)?,
            5 => v5_to_v6(value)?,
            6 => v6_to_v7(value)?,
            7 => v7_to_v8(value)?,
            8 => v8_to_v9(value)?,
            9 => v9_to_v10(value)?,
            10 => v10_to_v11(value)?,
            _ => return Err(anyhow!("no upgrade from version {from}")),
        };
    }
    Ok(value)
}

/// Version 10 had no savings split in the end snapshot, and no word of a KSM-off baseline.
fn v10_to_v11(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(11));
    if let Some(meta) = root.get_mut("meta") {
        default(meta, "ksmd_kept_off", json!(false));
    }
    if let Some(end) = root
        .get_mut("sharing")
        .and_then(|s| s.get_mut("end_snapshot"))
        .filter(|e| e.is_object())
    {
        default(end, "savings", Value::Null);
    }
    Ok(v)
}

/// Version 9 had no COW breaks from the page fault tracepoints, did not read la57, and did
/// not count the merges inside the bracket's windows, nor the windows opened for them.
fn v9_to_v10(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(10));
    if let Some(caps) = root.get_mut("meta").and_then(|m| m.get_mut("capabilities")) {
        default(caps, "la57", json!(false));
    }
    if let Some(latency) = root.get_mut("latency") {
        default(latency, "coverage_windows", Value::Null);
    }
    let empty = serde_json::to_value(crate::histogram::Histogram::new())?;
    for p in processes(root) {
        default(p, "cow_breaks_at_fault", json!(0));
        default(p, "zero_page_breaks", json!(0));
        default(p, "cow_at_fault_ns", empty.clone());
        default(p, "merges_in_windows", Value::Null);
    }
    Ok(v)
}

/// Version 8 kept each fallback as prose, and did not read the active LSMs.
fn v8_to_v9(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(9));
    if let Some(Value::Array(fallbacks)) = root
        .get_mut("mechanisms")
        .and_then(|m| m.get_mut("fallbacks"))
    {
        for f in fallbacks.iter_mut() {
            if let Value::String(text) = f {
                *f = json!({"kind": "recorded", "text": text});
            }
        }
    }
    if let Some(caps) = root.get_mut("meta").and_then(|m| m.get_mut("capabilities")) {
        default(caps, "lsms", Value::Null);
    }
    Ok(v)
}

/// Version 7 did not say how much of each burst its windows left out.
fn v7_to_v8(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(8));
    if let Some(latency) = root.get_mut("latency") {
        default(latency, "burst_head", Value::Null);
    }
    Ok(v)
}

/// Version 7 only added a way to sample merge latency (`BracketAttach::OnMerges`): a version
/// 6 file is a version 7 file.
fn v6_to_v7(mut v: Value) -> Result<Value> {
    object(&mut v, "recording")?.insert("version".into(), json!(7));
    Ok(v)
}

/// Version 5 did not time a worker's unmerge calls (there was no `unmerge=F`), nor the
/// kernel's.
fn v5_to_v6(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(6));
    for worker in workers(root) {
        default(worker, "unmerge", Value::Null);
    }
    if let Some(mech) = root.get_mut("mechanisms") {
        default(mech, "unmerge", json!({"kind": "unavailable"}));
    }
    let empty = serde_json::to_value(crate::histogram::Histogram::new())?;
    for p in processes(root) {
        default(p, "unmerge_call_ns", empty.clone());
        default(p, "unmerge_call_pages", json!(0));
    }
    Ok(v)
}

/// Version 4 did not record who shares with whom, nor TLB shootdowns ("off": not recorded).
fn v4_to_v5(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(5));
    root.entry("sharing").or_insert(Value::Null);
    if let Some(mech) = root.get_mut("mechanisms") {
        default(mech, "tlb_shootdowns", json!({"kind": "off"}));
    }
    let empty = serde_json::to_value(crate::histogram::Histogram::new())?;
    for p in processes(root) {
        // A process's merge figures are flattened into its record.
        default(p, "tlb_remote_flushes", json!(0));
        default(p, "tlb_shootdowns", json!(0));
        default(p, "merges_with_shootdowns", json!(0));
        default(p, "merge_latency_shootdown_ns", empty.clone());
    }
    Ok(v)
}

/// Version 3 did not read who a process is beyond its comm, and had no guest loads.
fn v3_to_v4(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(4));
    for p in processes(root) {
        default(p, "guest", Value::Null);
        default(p, "cgroup", Value::Null);
    }
    for worker in workers(root) {
        default(worker, "load", Value::Null);
    }
    Ok(v)
}

/// Version 2 was written only from the ksm tracepoints, and did not look up mm/ksm.c's
/// globals.
fn v2_to_v3(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(3));
    let mech = object(
        root.get_mut("mechanisms")
            .ok_or_else(|| anyhow!("no mechanisms"))?,
        "mechanisms",
    )?;
    mech.insert("events".into(), json!({"kind": "tracepoints"}));
    if let Some(caps) = root.get_mut("meta").and_then(|m| m.get_mut("capabilities")) {
        default(caps, "ksm_scan", Value::Null);
        default(caps, "ksm_rmap_items", Value::Null);
    }
    Ok(v)
}

/// Version 1 stored mechanisms as prose, the parsed workload spec, and lacked the COW fields in
/// files written before they were added.
fn v1_to_v2(mut v: Value) -> Result<Value> {
    let root = object(&mut v, "recording")?;
    root.insert("version".into(), json!(2));

    let mech = object(
        root.get_mut("mechanisms")
            .ok_or_else(|| anyhow!("no mechanisms"))?,
        "mechanisms",
    )?;
    let text = |m: &Map<String, Value>, k: &str| {
        m.get(k)
            .and_then(Value::as_str)
            .unwrap_or_default()
            .to_owned()
    };
    let latency = text(mech, "merge_latency");
    let batches = text(mech, "batches");
    let attribution = text(mech, "attribution");
    let cow = text(mech, "cow");
    mech.remove("events");
    mech.insert("merge_latency".into(), merge_latency_v1(&latency));
    mech.insert(
        "batches".into(),
        if batches.starts_with("sched:sched_switch") {
            json!({"kind": "sched-switch"})
        } else {
            json!({"kind": "unavailable"})
        },
    );
    mech.insert("attribution".into(), attribution_v1(&attribution));
    mech.insert(
        "cow".into(),
        if cow.starts_with("fentry/fexit on do_wp_page") {
            json!({"kind": "do-wp-page",
                   "vmemmap_from_merges": cow.contains("learned from the first traced merge")})
        } else {
            json!({"kind": "unavailable"})
        },
    );

    if let Some(Value::Object(workload)) = root.get_mut("meta").and_then(|m| m.get_mut("workload"))
    {
        let kind = workload
            .remove("spec")
            .and_then(|s| s.get("kind").and_then(Value::as_str).map(str::to_owned))
            .ok_or_else(|| anyhow!("workload without a spec kind"))?;
        workload.insert("kind".into(), json!(kind));
        for worker in workload
            .get_mut("workers")
            .and_then(Value::as_array_mut)
            .into_iter()
            .flatten()
        {
            default(worker, "write_fault_ns", json!([]));
        }
    }
    if let Some(caps) = root.get_mut("meta").and_then(|m| m.get_mut("capabilities")) {
        default(caps, "page_struct_size", Value::Null);
        default(caps, "vmemmap_base", Value::Null);
        // Version 1 did not check prototypes; its programs attached, so none differed.
        default(caps, "prototype_mismatches", json!({}));
    }
    if let Some(events) = root.get_mut("events") {
        default(events, "unattributed_unmerges", json!(0));
    }
    for p in processes(root) {
        // Without the COW probe these stay unread: `cow` above is then unavailable.
        default(p, "cow_breaks", json!(0));
        default(p, "cow_fault_ns", json!([]));
        default(
            p,
            "time_ns",
            json!({"new_page": 0, "join": 0, "zero_page": 0, "failed": 0}),
        );
    }
    Ok(v)
}

fn merge_latency_v1(text: &str) -> Value {
    if text.starts_with("off") {
        json!({"kind": "off"})
    } else if text.starts_with("fexit on try_to_merge_one_page, and the mmap_lock bracket") {
        json!({"kind": "fexit-and-bracket"})
    } else if text.starts_with("fentry/fexit") {
        json!({"kind": "fexit"})
    } else if text.starts_with("mmap_lock bracket") {
        let attached = if text.contains("for the whole run") {
            "always"
        } else {
            "while-merging"
        };
        json!({"kind": "bracket", "attached": {"kind": attached}})
    } else {
        json!({"kind": "unavailable"})
    }
}

/// `mm_struct.owner → task_struct tgid/comm (BTF offsets 1296/1268/1752)`.
fn attribution_v1(text: &str) -> Value {
    let offsets: Vec<u32> = text
        .rsplit_once("BTF offsets ")
        .map(|(_, tail)| {
            tail.trim_end_matches(')')
                .split('/')
                .filter_map(|n| n.parse().ok())
                .collect()
        })
        .unwrap_or_default();
    match offsets[..] {
        [mm_owner, task_tgid, task_comm] => {
            json!({"kind": "mm-owner", "mm_owner": mm_owner, "task_tgid": task_tgid, "task_comm": task_comm})
        }
        _ => json!({"kind": "unavailable"}),
    }
}

fn object<'a>(v: &'a mut Value, what: &str) -> Result<&'a mut Map<String, Value>> {
    v.as_object_mut()
        .ok_or_else(|| anyhow!("{what} is not an object"))
}

/// Inserts `key: value` into an object that lacks it.
/// The recording's process records.
fn processes(root: &mut Map<String, Value>) -> impl Iterator<Item = &mut Value> {
    root.get_mut("processes")
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

/// The workload's workers, if the recording had a workload.
fn workers(root: &mut Map<String, Value>) -> impl Iterator<Item = &mut Value> {
    root.get_mut("meta")
        .and_then(|m| m.get_mut("workload"))
        .and_then(|w| w.get_mut("workers"))
        .and_then(Value::as_array_mut)
        .into_iter()
        .flatten()
}

fn default(v: &mut Value, key: &str, value: Value) {
    if let Some(o) = v.as_object_mut() {
        o.entry(key).or_insert(value);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn v1_mechanism_prose_becomes_typed() {
        assert_eq!(
            merge_latency_v1(
                "mmap_lock bracket (mmap_lock_acquire_returned → mmap_lock_released in ksmd on the merged mm), attached for the whole run"
            ),
            json!({"kind": "bracket", "attached": {"kind": "always"}})
        );
        assert_eq!(
            merge_latency_v1(
                "mmap_lock bracket (…), attached from the start and while merges are happening, detached after 2 s without"
            ),
            json!({"kind": "bracket", "attached": {"kind": "while-merging"}})
        );
        assert_eq!(
            merge_latency_v1("fentry/fexit on try_to_merge_one_page"),
            json!({"kind": "fexit"})
        );
        assert_eq!(
            attribution_v1("mm_struct.owner → task_struct tgid/comm (BTF offsets 1296/1268/1752)"),
            json!({"kind": "mm-owner", "mm_owner": 1296, "task_tgid": 1268, "task_comm": 1752})
        );
        assert_eq!(
            attribution_v1("unavailable"),
            json!({"kind": "unavailable"})
        );
    }

    #[test]
    fn unknown_versions_are_refused() {
        assert!(upgrade(json!({}), 0).is_err());
    }
}

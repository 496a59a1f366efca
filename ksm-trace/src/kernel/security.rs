//! securityfs: the lockdown mode and the active LSMs, which say why the kernel may refuse a
//! tracing program. securityfs is often not mounted at boot: `run::mounts` mounts it for the
//! read where it is not.
use std::{fs, path::Path};

pub const SECURITYFS: &str = "/sys/kernel/security";

/// Whether securityfs is mounted (its `lsm` file is there).
pub fn mounted() -> bool {
    Path::new(SECURITYFS).join("lsm").exists()
}

/// The lockdown mode (the selected one of `none [integrity] confidentiality`) and the active
/// LSMs (`lockdown,capability,…`), each None where not readable.
pub fn read(dir: &Path) -> (Option<String>, Option<String>) {
    let file = |name: &str| {
        fs::read_to_string(dir.join(name))
            .ok()
            .map(|s| s.trim().to_owned())
    };
    (
        file("lockdown").map(|s| super::sysfs::selected(&s)),
        file("lsm"),
    )
}

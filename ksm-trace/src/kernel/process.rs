//! Who a process is, as /proc tells it: its comm, its cgroup (the container or pod it belongs
//! to) and, for a QEMU process, the guest's name — how every per-process figure is labelled.
use std::fs;

/// A process as the reports and the exporter label it.
#[derive(Clone, Debug, PartialEq)]
pub struct ProcessIdentity {
    pub pid: u32,
    pub comm: String,
    /// Its cgroup v2 path (`/` when it has none of its own).
    pub cgroup: String,
    /// The guest's name, for a QEMU process (`-name guest=NAME` or `-name NAME`).
    pub guest: Option<String>,
}

impl ProcessIdentity {
    /// A process the unit tests make up: comm `p<pid>`, in `cgroup`, not a guest.
    #[cfg(test)]
    pub fn made_up(pid: u32, cgroup: &str) -> Self {
        Self {
            pid,
            comm: format!("p{pid}"),
            cgroup: cgroup.into(),
            guest: None,
        }
    }

    /// What /proc says of `pid` (empty fields for a process that is gone).
    pub fn read(pid: u32) -> Self {
        let read =
            |file: &str| fs::read_to_string(format!("/proc/{pid}/{file}")).unwrap_or_default();
        let cmdline: Vec<String> = read("cmdline").split('\0').map(str::to_owned).collect();
        Self {
            pid,
            comm: read("comm").trim().to_owned(),
            cgroup: cgroup_v2(&read("cgroup")),
            guest: guest_name(&cmdline),
        }
    }
}

/// What a group of processes is, for the tables that sum processes up (sharing, report).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum By {
    Process,
    Guest,
    Cgroup,
}

impl By {
    pub const ALL: [(By, &'static str, &'static str); 3] = [
        (By::Process, "process", "each process (pid and comm)"),
        (
            By::Guest,
            "guest",
            "each QEMU guest by name; other processes as one group",
        ),
        (
            By::Cgroup,
            "cgroup",
            "each cgroup v2 path (a container, a pod, a VM's scope)",
        ),
    ];

    /// The group of a process with these fields (a cgroup unknown because the process was
    /// gone reads `(gone)`).
    pub fn key(self, pid: u32, comm: &str, guest: Option<&str>, cgroup: Option<&str>) -> String {
        match self {
            By::Process => format!("{comm}[{pid}]"),
            By::Guest => guest.unwrap_or("(not a guest)").to_owned(),
            By::Cgroup => cgroup.unwrap_or("(gone)").to_owned(),
        }
    }

    /// The group of `p`.
    pub fn group(self, p: &ProcessIdentity) -> String {
        self.key(p.pid, &p.comm, p.guest.as_deref(), Some(&p.cgroup))
    }
}

/// The `0::PATH` line of /proc/<pid>/cgroup.
pub fn cgroup_v2(text: &str) -> String {
    text.lines()
        .find_map(|l| l.strip_prefix("0::"))
        .unwrap_or("/")
        .to_owned()
}

/// QEMU's `-name guest=NAME,...` or `-name NAME` (how libvirt and ksm-trace name guests).
pub fn guest_name(cmdline: &[String]) -> Option<String> {
    let exe = cmdline.first()?;
    if !exe.contains("qemu") {
        return None;
    }
    let value = cmdline
        .iter()
        .position(|a| a == "-name")
        .and_then(|i| cmdline.get(i + 1))?;
    let first = value.split(',').next()?;
    Some(first.strip_prefix("guest=").unwrap_or(first).to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cgroup_and_guest_names() {
        assert_eq!(
            cgroup_v2("12:memory:/x\n0::/system.slice/qemu.scope\n"),
            "/system.slice/qemu.scope"
        );
        assert_eq!(cgroup_v2("4:memory:/only-v1\n"), "/");
        let args = |s: &str| s.split(' ').map(str::to_owned).collect::<Vec<_>>();
        assert_eq!(
            guest_name(&args(
                "/usr/bin/qemu-system-x86_64 -name guest=db1,debug-threads=on -m 1G"
            )),
            Some("db1".into())
        );
        assert_eq!(
            guest_name(&args("qemu-system-x86_64 -name ksm-vm0 -m 256M")),
            Some("ksm-vm0".into())
        );
        assert_eq!(guest_name(&args("/bin/sleep -name x")), None);
    }
}

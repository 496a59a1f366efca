//! A process's mappings as /proc/<pid>/smaps shows them: what `explain` needs of each — where
//! it is, whether it is shared, hugetlbfs or opted in to KSM (VmFlags `mg`), and how much of it
//! is resident and anonymous.
use serde::Serialize;

/// One mapping.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct Vma {
    pub start: u64,
    pub end: u64,
    /// `rw-p`, `rw-s`...
    pub perms: String,
    /// The file, `[heap]`, `/memfd:guest-ram (deleted)`, or empty for anonymous memory.
    pub path: String,
    pub rss_kib: u64,
    /// Resident anonymous memory (KSM pages included; shared memory and the zero page not).
    pub anonymous_kib: u64,
    /// Of it, in transparent huge pages.
    pub anon_huge_kib: u64,
    /// hugetlbfs pages mapped (shared or private).
    pub hugetlb_kib: u64,
    pub flags: Vec<String>,
}

impl Vma {
    pub fn shared(&self) -> bool {
        self.perms.ends_with('s')
    }

    /// Opted in to KSM: madvise(MADV_MERGEABLE), or the prctl, which marks every mapping KSM
    /// could merge.
    pub fn mergeable(&self) -> bool {
        self.flags.iter().any(|f| f == "mg")
    }

    pub fn hugetlb(&self) -> bool {
        self.flags.iter().any(|f| f == "ht")
    }

    /// What the VMA is called in a report.
    pub fn name(&self) -> String {
        let path = if self.path.is_empty() {
            "(anonymous)"
        } else {
            &self.path
        };
        format!("{path} {:x}-{:x} {}", self.start, self.end, self.perms)
    }
}

/// Parses the text of /proc/<pid>/smaps.
pub fn parse(text: &str) -> Vec<Vma> {
    let mut vmas: Vec<Vma> = Vec::new();
    for line in text.lines() {
        let mut fields = line.split_whitespace();
        let Some(first) = fields.next() else {
            continue;
        };
        if let Some((a, b)) = first.split_once('-')
            && let (Ok(start), Ok(end)) = (u64::from_str_radix(a, 16), u64::from_str_radix(b, 16))
        {
            let perms = fields.next().unwrap_or_default().to_owned();
            // offset, device, inode, then the path (which may hold spaces).
            let path = fields.skip(3).collect::<Vec<_>>().join(" ");
            vmas.push(Vma {
                start,
                end,
                perms,
                path,
                ..Default::default()
            });
            continue;
        }
        let Some(vma) = vmas.last_mut() else {
            continue;
        };
        let kib = fields
            .clone()
            .next()
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or(0);
        match first {
            "Rss:" => vma.rss_kib = kib,
            "Anonymous:" => vma.anonymous_kib = kib,
            "AnonHugePages:" => vma.anon_huge_kib = kib,
            "Shared_Hugetlb:" | "Private_Hugetlb:" => vma.hugetlb_kib += kib,
            "VmFlags:" => vma.flags = fields.map(str::to_owned).collect(),
            _ => {}
        }
    }
    vmas
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_each_mapping_its_sizes_and_flags() {
        let text = "\
7f0000000000-7f0000400000 rw-p 00000000 00:00 0 
Size:               4096 kB
Rss:                4096 kB
Anonymous:          4096 kB
AnonHugePages:      2048 kB
Shared_Hugetlb:        0 kB
Private_Hugetlb:       0 kB
VmFlags: rd wr mr mw me ac mg
7f1000000000-7f1000200000 rw-s 00000000 00:01 42                         /memfd:guest ram (deleted)
Rss:                2048 kB
Anonymous:             0 kB
AnonHugePages:         0 kB
VmFlags: rd wr sh mr mw me ms sd
";
        let v = parse(text);
        assert_eq!(v.len(), 2);
        assert_eq!((v[0].start, v[0].end), (0x7f00_0000_0000, 0x7f00_0040_0000));
        assert!(v[0].mergeable() && !v[0].shared() && !v[0].hugetlb());
        assert_eq!((v[0].anonymous_kib, v[0].anon_huge_kib), (4096, 2048));
        assert!(v[1].shared() && !v[1].mergeable());
        assert_eq!(v[1].path, "/memfd:guest ram (deleted)");
        assert_eq!(v[1].rss_kib, 2048);
        assert!(
            v[1].name()
                .starts_with("/memfd:guest ram (deleted) 7f1000000000-")
        );
    }
}

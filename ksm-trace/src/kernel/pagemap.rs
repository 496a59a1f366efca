//! Which physical page backs an address, and whether it is a KSM page: /proc/<pid>/pagemap
//! (the pfn, root only) and /proc/kpageflags (KPF_KSM). Reading them changes nothing.
use std::{fs::File, os::unix::fs::FileExt as _};

use anyhow::{Context as _, Result};

const PRESENT: u64 = 1 << 63;
/// A file page or shared anonymous memory: never a KSM page (those are private anonymous), so
/// the kernel's page flags need not be read (a process's text alone is thousands of pages).
const FILE_OR_SHARED: u64 = 1 << 61;
const PFN_MASK: u64 = (1 << 55) - 1;
const KPF_ANON: u64 = 1 << 12;
const KPF_KSM: u64 = 1 << 21;
const KPF_THP: u64 = 1 << 22;
const SWAPPED: u64 = 1 << 62;

/// What one page-table entry of a private mapping holds.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PageState {
    /// Never touched (or dropped): nothing for KSM.
    NotPresent,
    Swapped,
    Page {
        pfn: u64,
        ksm: bool,
        thp: bool,
    },
}

/// A process's page table as /proc/<pid>/pagemap shows it (pfns are shown to root only).
pub struct Pagemap {
    file: File,
    page: u64,
}

impl Pagemap {
    /// `pid` = None: this process.
    pub fn open(pid: Option<u32>) -> Result<Self> {
        let path = match pid {
            Some(pid) => format!("/proc/{pid}/pagemap"),
            None => "/proc/self/pagemap".to_owned(),
        };
        Ok(Self {
            file: File::open(&path).with_context(|| format!("opening {path}"))?,
            page: super::page_size(),
        })
    }

    /// The pfn of the private anonymous page mapped at `addr`, if one is (the zero page too).
    pub fn pfn(&self, addr: u64) -> Option<u64> {
        let mut buf = [0u8; 8];
        self.file
            .read_exact_at(&mut buf, addr / self.page * 8)
            .ok()?;
        private_pfn(u64::from_ne_bytes(buf))
    }

    /// Calls `f` with the pfn of each private anonymous page present in `[start, end)`, one
    /// pagemap read per 512 pages.
    fn each_pfn(&self, start: u64, end: u64, mut f: impl FnMut(u64)) {
        const CHUNK: u64 = 512;
        let mut buf = vec![0u8; (CHUNK * 8) as usize];
        let mut first = start / self.page;
        let last = end.div_ceil(self.page);
        while first < last {
            let n = (last - first).min(CHUNK);
            let bytes = &mut buf[..(n * 8) as usize];
            if self.file.read_exact_at(bytes, first * 8).is_err() {
                return;
            }
            bytes
                .chunks_exact(8)
                .filter_map(|e| private_pfn(u64::from_ne_bytes(e.try_into().expect("8 bytes"))))
                .for_each(&mut f);
            first += n;
        }
    }
}

/// The pfn of a pagemap entry if it maps a page that could be a KSM page.
fn private_pfn(entry: u64) -> Option<u64> {
    let pfn = entry & PFN_MASK;
    (entry & PRESENT != 0 && entry & FILE_OR_SHARED == 0 && pfn != 0).then_some(pfn)
}

/// A process's page table and the kernel's page flags: which of its pages are KSM pages.
pub struct KsmPages {
    pagemap: Pagemap,
    kpageflags: File,
}

impl KsmPages {
    /// `pid` = None: this process. Fails where /proc/kpageflags cannot be trusted to say
    /// which pages are KSM pages (see [`kpf_ksm_is_truthful`]).
    pub fn open(pid: Option<u32>) -> Result<Self> {
        static TRUTHFUL: std::sync::OnceLock<Result<(), String>> = std::sync::OnceLock::new();
        TRUTHFUL
            .get_or_init(|| kpf_ksm_is_truthful().map_err(|e| format!("{e:#}")))
            .clone()
            .map_err(anyhow::Error::msg)?;
        Ok(Self {
            pagemap: Pagemap::open(pid)?,
            kpageflags: File::open("/proc/kpageflags").context("opening /proc/kpageflags")?,
        })
    }

    /// The pfn of the KSM page that backs `addr`, if one does.
    pub fn ksm_pfn(&self, addr: u64) -> Option<u64> {
        self.pagemap.pfn(addr).filter(|&pfn| self.is_ksm(pfn))
    }

    /// The pfns of the KSM pages backing `[start, end)`.
    pub fn ksm_pfns(&self, start: u64, end: u64, out: &mut Vec<u64>) {
        self.pagemap.each_pfn(start, end, |pfn| {
            if self.is_ksm(pfn) {
                out.push(pfn);
            }
        });
    }

    /// Calls `f` with each page address of `[start, end)` and what backs it, one pagemap read
    /// per 512 pages and one page-flags read per present page.
    pub fn each_page(&self, start: u64, end: u64, mut f: impl FnMut(u64, PageState)) {
        const CHUNK: u64 = 512;
        let page = self.pagemap.page;
        let mut buf = vec![0u8; (CHUNK * 8) as usize];
        let mut first = start / page;
        let last = end.div_ceil(page);
        while first < last {
            let n = (last - first).min(CHUNK);
            let bytes = &mut buf[..(n * 8) as usize];
            if self.pagemap.file.read_exact_at(bytes, first * 8).is_err() {
                return;
            }
            for (i, e) in bytes.chunks_exact(8).enumerate() {
                let entry = u64::from_ne_bytes(e.try_into().expect("8 bytes"));
                let addr = (first + i as u64) * page;
                let state = if entry & PRESENT == 0 {
                    if entry & SWAPPED != 0 {
                        PageState::Swapped
                    } else {
                        PageState::NotPresent
                    }
                } else {
                    let pfn = entry & PFN_MASK;
                    let flags = self.flags(pfn);
                    PageState::Page {
                        pfn,
                        ksm: flags & KPF_KSM != 0,
                        thp: flags & KPF_THP != 0,
                    }
                };
                f(addr, state);
            }
            first += n;
        }
    }

    fn flags(&self, pfn: u64) -> u64 {
        let mut flags = [0u8; 8];
        match self.kpageflags.read_exact_at(&mut flags, pfn * 8) {
            Ok(()) => u64::from_ne_bytes(flags),
            Err(_) => 0,
        }
    }

    fn is_ksm(&self, pfn: u64) -> bool {
        let mut flags = [0u8; 8];
        self.kpageflags.read_exact_at(&mut flags, pfn * 8).is_ok()
            && u64::from_ne_bytes(flags) & KPF_KSM != 0
    }
}

/// `[start, end)` of each private mapping (KSM merges only private anonymous memory).
pub fn private_ranges(pid: u32) -> Vec<(u64, u64)> {
    let maps = std::fs::read_to_string(format!("/proc/{pid}/maps")).unwrap_or_default();
    maps.lines()
        .filter_map(|line| {
            let mut fields = line.split_whitespace();
            let range = fields.next()?;
            let perms = fields.next()?;
            if !perms.ends_with('p') {
                return None;
            }
            let (a, b) = range.split_once('-')?;
            Some((
                u64::from_str_radix(a, 16).ok()?,
                u64::from_str_radix(b, 16).ok()?,
            ))
        })
        .collect()
}

/// Whether KPF_KSM means a KSM page here: some kernels (Debian 12's 6.12.118 among them) set it
/// on every anonymous page, because they test the page's mapping for either of the two bits
/// that make up KSM's tag. A fresh page of our own, never mergeable, must not carry it; its
/// flags are read while it is still mapped (a freed page has no mapping, so no tag at all).
pub fn kpf_ksm_is_truthful() -> Result<()> {
    let kpageflags = File::open("/proc/kpageflags").context("opening /proc/kpageflags")?;
    let flags = with_own_page(Some(0x6b73_6d2d_7472_6163), |pfn| {
        let mut flags = [0u8; 8];
        kpageflags.read_exact_at(&mut flags, pfn * 8)?;
        Ok(u64::from_ne_bytes(flags))
    })?;
    if flags & KPF_ANON == 0 {
        anyhow::bail!(
            "/proc/kpageflags does not show a fresh anonymous page as anonymous: KSM pages cannot be told apart there"
        );
    }
    if flags & KPF_KSM != 0 {
        anyhow::bail!(
            "this kernel's /proc/kpageflags marks every anonymous page KSM (KPF_KSM on a fresh page): KSM pages cannot be told apart there"
        );
    }
    Ok(())
}

/// The pfn of the kernel's zero page: a private anonymous page only read maps it. KSM's
/// zero-page merges (`use_zero_pages`) map this same page (one on x86).
pub fn zero_page_pfn() -> Result<u64> {
    with_own_page(None, Ok)
}

/// Calls `f` with the pfn behind a fresh private anonymous page of our own, with `magic`
/// written at its start (its own page) or only read (None: the zero page), as
/// /proc/self/pagemap shows it (root only), while the page is still mapped.
pub fn with_own_page<T>(magic: Option<u64>, f: impl FnOnce(u64) -> Result<T>) -> Result<T> {
    let page = super::page_size() as usize;
    // SAFETY: a private anonymous page of our own, touched, read through pagemap, unmapped.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        anyhow::bail!("mapping a test page: {}", std::io::Error::last_os_error());
    }
    if let Some(magic) = magic {
        unsafe { std::ptr::write_volatile(addr as *mut u64, magic) };
    } else {
        unsafe { std::ptr::read_volatile(addr as *const u64) };
    }
    let result = Pagemap::open(None)
        .and_then(|pagemap| {
            pagemap
                .pfn(addr as u64)
                .ok_or_else(|| anyhow::anyhow!("/proc/self/pagemap shows no pfns (not root?)"))
        })
        .and_then(f);
    unsafe { libc::munmap(addr, page) };
    result
}

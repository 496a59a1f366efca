//! Where the kernel keeps its direct map (`page_offset_base`) and its struct pages
//! (`vmemmap_base`), measured at start-up for the page-table walk of the COW fault tracepoints:
//! kernels without CONFIG_KALLSYMS_ALL do not list them, and KASLR moves them. A page of our own
//! with a random value in it and its pfn (from pagemap) let the kernel-side program find the
//! direct-map base that reads that value back (one syscall of ours); a page allocated for us
//! gives a struct page pointer whose pfn we know, hence vmemmap's base. Both programs are
//! attached for that moment only. Each result is checked (both regions start on a 1 GiB
//! boundary) before it is used.
use anyhow::{Context as _, Result, anyhow, bail};
use aya::{
    Ebpf,
    maps::Array,
    programs::{RawTracePoint, raw_trace_point::RawTracePointLinkId},
};
use ksm_trace_common::{
    calibration::{DIRECT_MAP, DIRECT_MAP_TRIES, FROM_STEP, MAGIC, PAGE_COUNT, PAGES, PFN, TID},
    names,
    programs::{self, RawTracepoint},
};

use super::load::{Loader, program};
use crate::kernel::{page_size, pagemap};

const GIB: u64 = 1 << 30;

/// Measures both bases and writes them where the walk reads them (the DIRECT_MAP and VMEMMAP
/// maps).
pub(super) fn measure(l: &mut Loader) -> Result<()> {
    for tp in [&programs::CALIBRATE_DIRECT_MAP, &programs::CALIBRATE_PAGES] {
        l.load_raw(tp)?;
    }
    let tid = nix::unistd::gettid().as_raw() as u64;
    set(&mut l.ebpf, TID, tid)?;
    let direct_map = direct_map(&mut l.ebpf)?;
    let page_struct = l
        .caps
        .page_struct_size
        .ok_or_else(|| anyhow!("struct page is not in BTF"))? as u64;
    let vmemmap = vmemmap(&mut l.ebpf, page_struct)?;
    set(&mut l.ebpf, TID, 0)?;
    for (map, value) in [(names::DIRECT_MAP, direct_map), (names::VMEMMAP, vmemmap)] {
        array(&mut l.ebpf, map)?.set(0, value, 0)?;
    }
    log::debug!("direct map at {direct_map:#x}, vmemmap at {vmemmap:#x}");
    Ok(())
}

/// The base at which the kernel program read back the value we wrote into a page of ours.
fn direct_map(ebpf: &mut Ebpf) -> Result<u64> {
    let magic = fastrand::u64(1..);
    let base = pagemap::with_own_page(Some(magic), |pfn| {
        set(ebpf, PFN, pfn)?;
        set(ebpf, MAGIC, magic)?;
        set(ebpf, DIRECT_MAP, 0)?;
        // Up to 1 TiB below the current task, a few steps per syscall.
        for from in (0..1024).step_by(DIRECT_MAP_TRIES as usize) {
            set(ebpf, FROM_STEP, from)?;
            during(ebpf, &programs::CALIBRATE_DIRECT_MAP, || {
                // Any syscall of this thread runs the program: one that cannot be cached.
                unsafe { libc::syscall(libc::SYS_getpid) };
            })?;
            let base = get(ebpf, DIRECT_MAP)?;
            if base != 0 {
                return Ok(base);
            }
        }
        Ok(0)
    })?;
    if base == 0 || base % GIB != 0 {
        bail!(
            "the kernel's direct map was not found (no base below the current task reads our page back)"
        );
    }
    Ok(base)
}

/// vmemmap's base from the struct page of a page allocated for us: of the pages our thread
/// allocated while the program ran, the one that gives a 1 GiB-aligned base with our page's pfn.
fn vmemmap(ebpf: &mut Ebpf, page_struct: u64) -> Result<u64> {
    let page = page_size() as usize;
    // SAFETY: two private anonymous pages of our own: the first is touched before the program
    // runs (so its page table exists), the second while it runs, then both are unmapped.
    let addr = unsafe {
        libc::mmap(
            std::ptr::null_mut(),
            2 * page,
            libc::PROT_READ | libc::PROT_WRITE,
            libc::MAP_PRIVATE | libc::MAP_ANONYMOUS,
            -1,
            0,
        )
    };
    if addr == libc::MAP_FAILED {
        bail!("mapping a test page: {}", std::io::Error::last_os_error());
    }
    let second = addr as u64 + page as u64;
    let result = (|| {
        unsafe { std::ptr::write_volatile(addr as *mut u8, 1) };
        set(ebpf, PAGE_COUNT, 0)?;
        during(ebpf, &programs::CALIBRATE_PAGES, || unsafe {
            std::ptr::write_volatile(second as *mut u8, 1)
        })?;
        let pfn = pagemap::Pagemap::open(None)?
            .pfn(second)
            .ok_or_else(|| anyhow!("/proc/self/pagemap shows no pfns (not root?)"))?;
        let count = get(ebpf, PAGE_COUNT)?;
        (0..count)
            .map(|i| get(ebpf, PAGES + i as u32))
            .collect::<Result<Vec<_>>>()?
            .into_iter()
            .filter_map(|ptr| ptr.checked_sub(pfn * page_struct))
            .find(|base| *base != 0 && base % GIB == 0)
            .ok_or_else(|| {
                anyhow!("vmemmap was not found: none of the {count} pages allocated for us gives a 1 GiB-aligned base")
            })
    })();
    unsafe { libc::munmap(addr, 2 * page) };
    result
}

/// Runs `f` with `tp`'s program attached.
fn during(ebpf: &mut Ebpf, tp: &RawTracepoint, f: impl FnOnce()) -> Result<()> {
    let link: RawTracePointLinkId = program::<RawTracePoint>(ebpf, tp.program)?
        .attach(tp.tracepoint)
        .with_context(|| format!("attaching {} to {}", tp.program, tp.tracepoint))?;
    f();
    program::<RawTracePoint>(ebpf, tp.program)?.detach(link)?;
    Ok(())
}

fn array<'a>(ebpf: &'a mut Ebpf, name: &str) -> Result<Array<&'a mut aya::maps::MapData, u64>> {
    let map = ebpf
        .map_mut(name)
        .ok_or_else(|| anyhow!("map {name} missing from the eBPF object"))?;
    Ok(Array::try_from(map)?)
}

fn set(ebpf: &mut Ebpf, slot: u32, value: u64) -> Result<()> {
    Ok(array(ebpf, names::CALIBRATION)?.set(slot, value, 0)?)
}

fn get(ebpf: &mut Ebpf, slot: u32) -> Result<u64> {
    Ok(array(ebpf, names::CALIBRATION)?.get(&slot, 0)?)
}

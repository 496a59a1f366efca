//! ksm-trace's kernel side: small programs on KSM's tracepoints and on ksmd's scheduling and
//! locking, grouped by what they measure. They stream [`ksm_trace_common::Event`]s through one
//! ring buffer without wake-ups (the collector drains it on a timer) and keep per-CPU state only.
#![no_std]
#![no_main]

mod calibrate;
mod cow;
mod functions;
mod maps;
mod membership;
mod merge;
mod owner;
mod pagetable;
mod profile;
mod scan;
mod tlb;
mod unmerge;

#[cfg(not(test))]
#[panic_handler]
fn panic(_info: &core::panic::PanicInfo) -> ! {
    loop {}
}

#[unsafe(link_section = "license")]
#[unsafe(no_mangle)]
static LICENSE: [u8; 13] = *b"Dual MIT/GPL\0";

//! ksm-trace: an eBPF tracing profiler for Linux Kernel Samepage Merging.
//!
//! Data path: [`probes`] (kernel side, loaded and attached) → [`collect`] (events → per-process
//! aggregates) → [`recording`] (one self-describing file) → [`report`]. Beside it:
//! [`workload`] drives ksmd, [`knobs`] sets and restores KSM's settings, [`kernel`] reads the
//! kernel's own counters that every figure is checked against.
pub mod bench;
pub mod child;
pub mod cli;
pub mod collect;
pub mod doctor;
pub mod flame;
pub mod guest;
pub mod histogram;
pub mod interrupts;
pub mod kernel;
pub mod knobs;
pub mod lab;
pub mod live;
pub mod lock;
pub mod parse;
pub mod plot;
pub mod probes;
pub mod record;
pub mod recording;
pub mod recovery;
pub mod report;
pub mod run_dir;
pub mod sample;
pub mod serve;
pub mod session;
pub mod sharing;
pub mod standalone;
pub mod sweep;
pub mod timeseries;
pub mod top;
pub mod workload;

//! ksm-trace: an eBPF tracing profiler for Linux Kernel Samepage Merging.
//!
//! Data path: [`probes`] (kernel side, loaded and attached) → [`collect`] (events → per-process
//! aggregates) → [`recording`] (one self-describing file) → [`report`]. Beside it:
//! [`workload`] drives ksmd, [`run`] sets and restores KSM's knobs and everything else a run
//! changes, [`kernel`] reads the kernel's own counters that every figure is checked against,
//! and [`commands`] holds one file per subcommand.
pub mod bench;
pub mod cli;
pub mod collect;
pub mod commands;
pub mod compare;
pub mod explain;
pub mod flame;
pub mod guest;
pub mod histogram;
pub mod kernel;
pub mod lab;
pub mod live;
pub mod parse;
pub mod plot;
pub mod probes;
pub mod recorder;
pub mod recording;
pub mod report;
pub mod run;
pub mod sample;
pub mod serve;
pub mod sharing;
pub mod stats;
pub mod sweep;
pub mod timeseries;
pub mod top;
pub mod workload;

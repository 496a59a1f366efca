//! `ksm-trace bench`: the kernel selftest's merge and unmerge times, and what tracing costs
//! ksmd (against bpftrace doing the same).
pub mod bpftrace;
pub mod merge;
pub mod overhead;
pub mod unmerge;

pub use merge::{MergeBench, Owner, merge};
pub use overhead::{OverheadBench, overhead};
pub use unmerge::{UnmergeBench, unmerge};

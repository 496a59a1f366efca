//! The plumbing of a run that changes the system, and puts it back on every exit path: the
//! [`session`] shared by record, bench and workload (checks first, then knobs, ksmd and the
//! workload), the [`knobs`] and their guard, the recorder [`lock`], a run's scratch [`dir`],
//! [`child`] processes that die with ksm-trace, [`interrupts`] (Ctrl-C, SIGTERM), what it
//! [`mounts`], the crash-[`recovery`] state that lets a later run undo what a killed one
//! left, and the [`workload`] interface the session drives (`workload/` implements it).
pub mod child;
pub mod dir;
pub mod interrupts;
pub mod knobs;
pub mod lock;
pub mod mounts;
pub mod recovery;
pub mod session;
pub mod workload;

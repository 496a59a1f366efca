//! Loading and attaching the programs of the one eBPF object, shared by every measurement's
//! module: a [`Loader`] holds the object, what the kernel allows, aya's own parse of the
//! kernel's BTF (made once, only when a function probe is wanted) and the fallbacks noted so
//! far. A failure comes back as a typed [`Reason`]; the words are the report's.
use std::cell::OnceCell;

use anyhow::{Context as _, Result, anyhow};
use aya::{
    Ebpf,
    programs::{FEntry, FExit, KProbe, ProgramError, RawTracePoint},
};
use ksm_trace_common::programs::RawTracepoint;

use super::Capabilities;
use crate::recording::schema::{Fallback, Reason, Refusal};

pub(super) struct Loader<'a> {
    pub ebpf: Ebpf,
    pub caps: &'a Capabilities,
    btf: OnceCell<aya::Btf>,
    pub fallbacks: Vec<Fallback>,
}

impl<'a> Loader<'a> {
    pub fn new(ebpf: Ebpf, caps: &'a Capabilities) -> Self {
        Self {
            ebpf,
            caps,
            btf: OnceCell::new(),
            fallbacks: Vec::new(),
        }
    }

    pub fn fallback(&mut self, f: Fallback) {
        self.fallbacks.push(f);
    }

    /// Whether the function is out of line here (in BTF), or why not.
    pub fn function_in_btf(&self, function: &str) -> Result<(), Reason> {
        match self.caps.functions.get(function).copied().unwrap_or(false) {
            true => Ok(()),
            false => Err(Reason::NotInBtf {
                function: function.to_owned(),
            }),
        }
    }

    /// Whether every member is in BTF, or the first that is not.
    pub fn offsets_in_btf(&self, members: &[&str]) -> Result<(), Reason> {
        match members
            .iter()
            .find(|m| self.caps.offset(m) == ksm_trace_common::NO_OFFSET)
        {
            Some(m) => Err(Reason::OffsetMissing {
                member: (*m).to_owned(),
            }),
            None => Ok(()),
        }
    }

    /// Whether `tp`'s program can attach here, or why not.
    pub fn tracepoint_usable(&self, tp: &RawTracepoint) -> Result<(), Reason> {
        self.caps.raw_tracepoint(tp)
    }

    /// Loads and attaches a raw tracepoint program.
    pub fn attach_raw(&mut self, tp: &RawTracepoint) -> Result<()> {
        let p = program::<RawTracePoint>(&mut self.ebpf, tp.program)?;
        p.load().map_err(|e| load_error(tp.program, e))?;
        p.attach(tp.tracepoint).with_context(|| {
            format!(
                "attaching {} to raw tracepoint {}",
                tp.program, tp.tracepoint
            )
        })?;
        Ok(())
    }

    /// Loads a raw tracepoint program without attaching it (the bracket attaches on demand).
    pub fn load_raw(&mut self, tp: &RawTracepoint) -> Result<()> {
        program::<RawTracePoint>(&mut self.ebpf, tp.program)?
            .load()
            .map_err(|e| load_error(tp.program, e))
    }

    /// Loads an fentry/fexit pair on `function`, then attaches both (neither is attached when
    /// either is refused).
    pub fn attach_fentry_pair(
        &mut self,
        entry: &str,
        exit: &str,
        function: &str,
    ) -> Result<(), Reason> {
        self.with_btf(|ebpf, caps, btf| {
            let why = |program: &str, e| refused(caps, program, function, e);
            program::<FEntry>(ebpf, entry)
                .map_err(error)?
                .load(function, btf)
                .map_err(|e| why(entry, e))?;
            program::<FExit>(ebpf, exit)
                .map_err(error)?
                .load(function, btf)
                .map_err(|e| why(exit, e))?;
            program::<FEntry>(ebpf, entry)
                .map_err(error)?
                .attach()
                .map_err(|e| error(e.into()))?;
            program::<FExit>(ebpf, exit)
                .map_err(error)?
                .attach()
                .map_err(|e| error(e.into()))?;
            Ok(())
        })
    }

    /// Runs `f` with the object, the capabilities and aya's parse of the kernel's BTF (parsed
    /// on first use).
    pub fn with_btf<R>(
        &mut self,
        f: impl FnOnce(&mut Ebpf, &Capabilities, &aya::Btf) -> Result<R, Reason>,
    ) -> Result<R, Reason> {
        if self.btf.get().is_none() {
            let parsed = aya::Btf::from_sys_fs()
                .context("reading kernel BTF")
                .map_err(error)?;
            let _ = self.btf.set(parsed);
        }
        let btf = self.btf.get().expect("just set");
        f(&mut self.ebpf, self.caps, btf)
    }

    /// Loads every `(program, function)` kprobe before attaching any, so a refusal leaves
    /// nothing attached.
    pub fn attach_kprobes(&mut self, probes: &[(&str, &str)]) -> Result<()> {
        for &(name, _) in probes {
            program::<KProbe>(&mut self.ebpf, name)?
                .load()
                .map_err(|e| load_error(name, e))?;
        }
        for &(name, function) in probes {
            program::<KProbe>(&mut self.ebpf, name)?
                .attach(function, 0)
                .with_context(|| format!("attaching {name} to {function}"))?;
        }
        Ok(())
    }
}

/// The program `name` of the object, as its type.
pub(super) fn program<'a, T>(ebpf: &'a mut Ebpf, name: &str) -> Result<&'a mut T>
where
    &'a mut T: TryFrom<&'a mut aya::programs::Program, Error = ProgramError>,
{
    let prog = ebpf
        .program_mut(name)
        .ok_or_else(|| anyhow!("program {name} missing from the eBPF object"))?;
    Ok(prog.try_into()?)
}

/// Any other failure, as a reason in the loader's words.
pub(super) fn error(e: anyhow::Error) -> Reason {
    Reason::Error {
        message: format!("{e:#}"),
    }
}

/// A load failure in one line: aya puts the verifier's whole log into the error, which belongs
/// in `-vv` output, not in a one-line error or a recording's fallbacks.
pub(super) fn load_error(prog: &str, e: ProgramError) -> anyhow::Error {
    if let ProgramError::LoadError { verifier_log, .. } = &e {
        log::debug!("verifier log for {prog}:\n{verifier_log}");
    }
    anyhow!("loading {prog}: {}", one_line(&e.to_string()))
}

/// The first line of a multi-line message, saying that more is shown with -vv.
pub(super) fn one_line(text: &str) -> String {
    let mut lines = text.lines().filter(|l| !l.trim().is_empty());
    let first = lines.next().unwrap_or_default().trim().to_owned();
    if lines.next().is_some() {
        format!("{first} (the verifier's log is shown with -vv)")
    } else {
        first
    }
}

/// A tracing program the kernel would not load: what it returned, and what is known about why
/// (the lockdown mode and the LSMs, read at start-up).
pub(super) fn refused(
    caps: &Capabilities,
    program: &str,
    function: &str,
    e: ProgramError,
) -> Reason {
    let errno = match &e {
        ProgramError::LoadError { io_error, .. } => io_error.raw_os_error(),
        _ => None,
    };
    let message = one_line(&e.to_string());
    if let ProgramError::LoadError { verifier_log, .. } = &e {
        log::debug!("verifier log for {program}:\n{verifier_log}");
    }
    Reason::Refused(Box::new(Refusal {
        program: program.to_owned(),
        function: function.to_owned(),
        errno,
        message,
        lockdown: caps.lockdown.clone(),
        lsms: caps.lsms.clone(),
    }))
}

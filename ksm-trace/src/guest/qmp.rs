//! Asks a QEMU to quit over its QMP socket: the clean way to end a guest (< 0.15 s here).
use std::{
    io::{BufRead as _, BufReader, Write as _},
    os::unix::net::UnixStream,
    path::Path,
    time::Duration,
};

use anyhow::{Context as _, Result, bail};

/// Greeting → `qmp_capabilities` → `quit`. QEMU may close the socket before it answers the
/// quit, so only the handshake must succeed.
pub fn quit(socket: &Path, timeout: Duration) -> Result<()> {
    let stream = UnixStream::connect(socket)
        .with_context(|| format!("connecting to QMP at {}", socket.display()))?;
    stream.set_read_timeout(Some(timeout))?;
    stream.set_write_timeout(Some(timeout))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut writer = stream;
    let greeting = read_message(&mut reader)?;
    if greeting.get("QMP").is_none() {
        bail!("QMP greeting expected, got {greeting}");
    }
    writer.write_all(b"{\"execute\":\"qmp_capabilities\"}\n")?;
    read_return(&mut reader)?;
    writer.write_all(b"{\"execute\":\"quit\"}\n")?;
    let _ = read_return(&mut reader);
    Ok(())
}

fn read_message(reader: &mut BufReader<UnixStream>) -> Result<serde_json::Value> {
    let mut line = String::new();
    if reader.read_line(&mut line).context("reading from QMP")? == 0 {
        bail!("QMP closed the connection");
    }
    serde_json::from_str(&line).with_context(|| format!("QMP sent {line:?}"))
}

/// Skips asynchronous events until the command's answer.
fn read_return(reader: &mut BufReader<UnixStream>) -> Result<()> {
    loop {
        let message = read_message(reader)?;
        if message.get("return").is_some() {
            return Ok(());
        }
        if let Some(error) = message.get("error") {
            bail!("QMP error: {error}");
        }
    }
}

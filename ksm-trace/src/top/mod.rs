//! `ksm-trace top`: a live view of what KSM is doing now, per process, refreshed every
//! interval — like biotop or htop. It changes no knob, starts nothing and writes nothing. In a
//! terminal it takes the screen (ratatui) and gives it back on `q`, Ctrl-C, SIGTERM or a
//! panic; `--batch N` (or output that is not a terminal) prints N frames as text.
pub mod table;

use std::{io::IsTerminal as _, time::Duration};

use anyhow::Result;
use ratatui::{
    crossterm::event::{self, Event, KeyCode, KeyEventKind, KeyModifiers},
    layout::{Constraint, Layout},
    style::{Modifier, Style},
    text::Line,
    widgets::{Paragraph, Row, Table},
};

use crate::{
    live::{DRAIN_EVERY, Frame, LiveTracer},
    probes::ProbeOptions,
    run::interrupts::Interrupts,
};
use table::{COLUMNS, SortKey};

pub struct TopOptions {
    pub pids: Vec<u32>,
    pub interval: Duration,
    /// Print this many frames as text instead of taking the terminal.
    pub batch: Option<u64>,
    /// Rows shown in batch mode.
    pub limit: usize,
    pub probes: ProbeOptions,
}

pub async fn run(opts: &TopOptions) -> Result<()> {
    let mut interrupts = Interrupts::install()?;
    let mut tracer = LiveTracer::start(&opts.pids, opts.probes)?;
    let batch = opts
        .batch
        .or_else(|| (!std::io::stdout().is_terminal()).then_some(u64::MAX));
    match batch {
        Some(frames) => batch_mode(&mut tracer, opts, frames, &mut interrupts).await,
        None => screen(&mut tracer, opts, &mut interrupts).await,
    }
}

/// What the loop does next.
enum Step {
    Drain,
    Frame,
    Quit,
}

/// Waits for the next drain or frame, or an interrupt.
async fn next_step(
    drain: &mut tokio::time::Interval,
    frame: &mut tokio::time::Interval,
    interrupts: &mut Interrupts,
) -> Step {
    tokio::select! {
        _ = frame.tick() => Step::Frame,
        _ = drain.tick() => Step::Drain,
        _ = interrupts.recv() => Step::Quit,
    }
}

async fn batch_mode(
    tracer: &mut LiveTracer,
    opts: &TopOptions,
    frames: u64,
    interrupts: &mut Interrupts,
) -> Result<()> {
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    let mut every = tokio::time::interval(opts.interval);
    every.tick().await;
    let mut previous: Option<Frame> = Some(tracer.frame()?);
    let mut shown = 0;
    while shown < frames {
        match next_step(&mut drain, &mut every, interrupts).await {
            Step::Drain => tracer.drain()?,
            Step::Quit => break,
            Step::Frame => {
                let frame = tracer.frame()?;
                let t = table::table(&frame, previous.as_ref(), SortKey::default(), opts.limit);
                println!("{}", t.to_text());
                previous = Some(frame);
                shown += 1;
            }
        }
    }
    Ok(())
}

async fn screen(
    tracer: &mut LiveTracer,
    opts: &TopOptions,
    interrupts: &mut Interrupts,
) -> Result<()> {
    // ratatui::init also installs a panic hook that gives the terminal back first.
    let mut terminal = ratatui::init();
    let result = screen_loop(&mut terminal, tracer, opts, interrupts).await;
    ratatui::restore();
    // After leaving the alternate screen: terminals (tmux among them) keep the cursor's
    // visibility per screen.
    let _ = ratatui::crossterm::execute!(std::io::stdout(), ratatui::crossterm::cursor::Show);
    drop(terminal);
    result
}

async fn screen_loop(
    terminal: &mut ratatui::DefaultTerminal,
    tracer: &mut LiveTracer,
    opts: &TopOptions,
    interrupts: &mut Interrupts,
) -> Result<()> {
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    let mut every = tokio::time::interval(opts.interval);
    every.tick().await;
    let mut sort = SortKey::default();
    let mut paused = false;
    let mut previous: Option<Frame> = None;
    let mut current = tracer.frame()?;
    loop {
        let t = table::table(&current, previous.as_ref(), sort, usize::MAX);
        terminal.draw(|f| draw(f, &t, paused))?;
        match next_step(&mut drain, &mut every, interrupts).await {
            Step::Quit => return Ok(()),
            Step::Drain => tracer.drain()?,
            Step::Frame if paused => tracer.drain()?,
            Step::Frame => {
                let next = tracer.frame()?;
                previous = Some(std::mem::replace(&mut current, next));
            }
        }
        // Keys waiting (the terminal is in raw mode: Ctrl-C arrives as a key).
        while event::poll(Duration::ZERO)? {
            let Event::Key(key) = event::read()? else {
                continue;
            };
            if key.kind != KeyEventKind::Press {
                continue;
            }
            match key.code {
                KeyCode::Char('q') | KeyCode::Esc => return Ok(()),
                KeyCode::Char('c') if key.modifiers.contains(KeyModifiers::CONTROL) => {
                    return Ok(());
                }
                KeyCode::Char('s') => sort = sort.next(),
                KeyCode::Char('p') | KeyCode::Char(' ') => paused = !paused,
                _ => {}
            }
        }
    }
}

fn draw(f: &mut ratatui::Frame, t: &table::Table, paused: bool) {
    let [head, body] = Layout::vertical([
        Constraint::Length(t.header.len() as u16 + 1),
        Constraint::Min(0),
    ])
    .areas(f.area());
    let mut lines: Vec<Line> = t.header.iter().map(|l| Line::raw(l.as_str())).collect();
    if paused {
        lines.push(Line::styled(
            "PAUSED (p to resume)",
            Style::default().add_modifier(Modifier::REVERSED),
        ));
    }
    f.render_widget(Paragraph::new(lines), head);
    let widths = [
        Constraint::Length(8),
        Constraint::Length(16),
        Constraint::Length(12),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(9),
        Constraint::Length(7),
        Constraint::Length(8),
        Constraint::Length(8),
    ];
    let header = Row::new(COLUMNS).style(Style::default().add_modifier(Modifier::REVERSED));
    let rows = t
        .rows
        .iter()
        .map(|r| Row::new(r.iter().map(String::as_str)));
    f.render_widget(Table::new(rows, widths).header(header), body);
}

//! `ksm-trace serve`: a Prometheus/OpenMetrics endpoint for fleets. It traces as `top` does
//! (no knob changed, ksmd neither started nor paused, merge latency sampled), refreshes one
//! [`Frame`](crate::live::Frame) every interval, and encodes it at each scrape of `/metrics`.
//! Memory is bounded: exited processes are forgotten and the series are the top processes by
//! merged pages plus one `other`.
pub mod metrics;

use std::{
    convert::Infallible,
    net::SocketAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use anyhow::{Result, anyhow};
use http_body_util::Full;
use hyper::{
    Method, Request, Response, StatusCode,
    body::{Bytes, Incoming},
    header::CONTENT_TYPE,
};
use prometheus_client::registry::Registry;

use crate::{
    live::{DRAIN_EVERY, LiveTracer},
    probes::ProbeOptions,
    run::interrupts::Interrupts,
};

pub const DEFAULT_LISTEN: &str = "127.0.0.1:9669";
const OPENMETRICS: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

pub struct ServeOptions {
    pub listen: SocketAddr,
    pub interval: Duration,
    /// Processes with series of their own; the rest are summed into `other`.
    pub top: usize,
    pub probes: ProbeOptions,
}

pub async fn run(opts: &ServeOptions) -> Result<()> {
    let mut interrupts = Interrupts::install()?;
    // The address first: a busy port must fail before any probe is attached.
    let listener = tokio::net::TcpListener::bind(opts.listen)
        .await
        .map_err(|e| {
            anyhow!(
                "cannot listen on {} ({e}): give a free address with --listen",
                opts.listen
            )
        })?;
    let mut tracer = LiveTracer::start(&[], opts.probes)?;
    let latest: metrics::Latest = Arc::new(Mutex::new(Some(tracer.frame()?)));
    let registry = Arc::new(metrics::registry(latest.clone(), opts.top));
    eprintln!(
        "ksm-trace: serving OpenMetrics on http://{}/metrics (refreshed every {})",
        listener.local_addr()?,
        humantime::format_duration(opts.interval)
    );
    let mut drain = tokio::time::interval(DRAIN_EVERY);
    let mut every = tokio::time::interval(opts.interval);
    every.tick().await;
    let why = loop {
        tokio::select! {
            _ = drain.tick() => tracer.drain()?,
            _ = every.tick() => {
                let frame = tracer.frame()?;
                *latest.lock().unwrap_or_else(|e| e.into_inner()) = Some(frame);
            }
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => serve_connection(stream, registry.clone()),
                Err(e) => log::warn!("accepting a connection: {e}"),
            },
            why = interrupts.recv() => break why,
        }
    };
    eprintln!("ksm-trace: stopped ({why}); probes detached");
    Ok(())
}

fn serve_connection(stream: tokio::net::TcpStream, registry: Arc<Registry>) {
    let io = hyper_util::rt::TokioIo::new(stream);
    tokio::spawn(async move {
        let service = hyper::service::service_fn(move |req: Request<Incoming>| {
            let registry = registry.clone();
            async move { Ok::<_, Infallible>(respond(&req, &registry)) }
        });
        if let Err(e) = hyper::server::conn::http1::Builder::new()
            .serve_connection(io, service)
            .await
        {
            log::debug!("connection: {e}");
        }
    });
}

fn respond(req: &Request<Incoming>, registry: &Registry) -> Response<Full<Bytes>> {
    let (status, content_type, body) = match (req.method(), req.uri().path()) {
        (&Method::GET, "/metrics") => (StatusCode::OK, OPENMETRICS, metrics::text(registry)),
        (&Method::GET, "/") => (
            StatusCode::OK,
            "text/plain; charset=utf-8",
            "ksm-trace exporter: metrics at /metrics\n".to_owned(),
        ),
        _ => (
            StatusCode::NOT_FOUND,
            "text/plain; charset=utf-8",
            "not found: metrics are at /metrics\n".to_owned(),
        ),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    if let Ok(value) = content_type.parse() {
        response.headers_mut().insert(CONTENT_TYPE, value);
    }
    response
}

//! The operations listener: `GET /metrics` (Prometheus text format), `/healthz` (the process
//! answers) and `/readyz` (200 when ready, else 503 with a JSON reason). It runs on its own
//! thread and runtime, so it answers even while the pipeline is saturated.

use crate::{Error, Result};
use http_body_util::Full;
use hyper::body::Bytes;
use hyper::{Method, Request, Response, StatusCode};
use std::net::SocketAddr;

/// Content type of the Prometheus text exposition format.
const PROMETHEUS_TEXT: &str = "text/plain; version=0.0.4; charset=utf-8";

/// Binds `listen` (`metrics.listen`) and serves on a thread of its own; returns the bound
/// address (a `:0` port is chosen by the system).
pub fn start(listen: &str, ready_max_lag_secs: u64) -> Result<SocketAddr> {
    let bad = |e: String| {
        Error::config(format!("metrics.listen = {listen:?}: {e}"))
            .with_hint("give host:port, e.g. \"0.0.0.0:9187\", on a free port")
    };
    let listener = std::net::TcpListener::bind(listen).map_err(|e| bad(e.to_string()))?;
    listener
        .set_nonblocking(true)
        .map_err(|e| bad(e.to_string()))?;
    let addr = listener.local_addr().map_err(|e| bad(e.to_string()))?;
    super::install();
    std::thread::Builder::new()
        .name("metrics".into())
        .spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("metrics runtime");
            rt.block_on(serve(listener, ready_max_lag_secs));
        })
        .map_err(|e| bad(e.to_string()))?;
    tracing::info!(address = %addr, "serving /metrics, /healthz and /readyz");
    Ok(addr)
}

async fn serve(listener: std::net::TcpListener, max_lag: u64) {
    let listener = match tokio::net::TcpListener::from_std(listener) {
        Ok(l) => l,
        Err(e) => {
            tracing::error!("metrics listener: {e}");
            return;
        }
    };
    loop {
        let (stream, _) = match listener.accept().await {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!("metrics listener: accept: {e}");
                tokio::time::sleep(std::time::Duration::from_millis(100)).await;
                continue;
            }
        };
        let io = hyper_util::rt::TokioIo::new(stream);
        tokio::spawn(async move {
            let svc = hyper::service::service_fn(move |req| async move {
                Ok::<_, std::convert::Infallible>(answer(&req, max_lag))
            });
            let _ = hyper::server::conn::http1::Builder::new()
                .serve_connection(io, svc)
                .await;
        });
    }
}

/// The answer to one request.
fn answer<B>(req: &Request<B>, max_lag: u64) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return reply(
            StatusCode::METHOD_NOT_ALLOWED,
            "text/plain",
            "GET only\n".into(),
        );
    }
    match req.uri().path() {
        "/metrics" => reply(StatusCode::OK, PROMETHEUS_TEXT, super::render()),
        "/healthz" => reply(
            StatusCode::OK,
            "application/json",
            "{\"status\":\"alive\"}\n".into(),
        ),
        "/readyz" => {
            let (ready, body) = super::health::readiness(max_lag);
            let status = if ready {
                StatusCode::OK
            } else {
                StatusCode::SERVICE_UNAVAILABLE
            };
            reply(status, "application/json", format!("{body}\n"))
        }
        _ => reply(
            StatusCode::NOT_FOUND,
            "text/plain",
            "not found: try /metrics, /healthz or /readyz\n".into(),
        ),
    }
}

fn reply(status: StatusCode, content_type: &str, body: String) -> Response<Full<Bytes>> {
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    if let Ok(v) = content_type.parse() {
        r.headers_mut().insert(hyper::header::CONTENT_TYPE, v);
    }
    r
}

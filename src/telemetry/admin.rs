//! The admin listener: `/live`, `/ready`, `/status`, `/metrics`.

use std::convert::Infallible;
use std::sync::Arc;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Method, Request, Response, StatusCode};
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::TokioIo;
use tokio::net::TcpStream;

use crate::drain::Drain;
use crate::telemetry::state::{Phase, State};

/// Serves one admin connection (HTTP/1.1). Not counted as proxy traffic and not waited for by the drain.
pub async fn serve(stream: TcpStream, state: Arc<State>, drain: Arc<Drain>) {
    let svc = service_fn(move |req| {
        let state = state.clone();
        let draining = drain.is_graceful();
        async move { Ok::<_, Infallible>(route(&req, &state, draining)) }
    });
    let _ = hyper::server::conn::http1::Builder::new()
        .serve_connection(TokioIo::new(stream), svc)
        .await;
}

fn route(req: &Request<Incoming>, state: &State, draining: bool) -> Response<Full<Bytes>> {
    if req.method() != Method::GET && req.method() != Method::HEAD {
        return text(StatusCode::METHOD_NOT_ALLOWED, "method not allowed\n", draining);
    }
    match req.uri().path() {
        "/live" => text(StatusCode::OK, "ok\n", draining),
        "/ready" => match state.phase() {
            Phase::Serving | Phase::HandingOff => text(StatusCode::OK, "ready\n", draining),
            other => text(
                StatusCode::SERVICE_UNAVAILABLE,
                &format!("{}\n", other.as_str()),
                draining,
            ),
        },
        "/metrics" => {
            let mut resp = text(StatusCode::OK, "", draining);
            *resp.body_mut() = Full::new(Bytes::from(state.metrics()));
            resp.headers_mut().insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
            );
            resp
        }
        "/status" => match serde_json::to_vec_pretty(&state.status()) {
            Ok(mut body) => {
                body.push(b'\n');
                let mut resp = text(StatusCode::OK, "", draining);
                *resp.body_mut() = Full::new(Bytes::from(body));
                resp.headers_mut()
                    .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
                resp
            }
            Err(_) => text(StatusCode::INTERNAL_SERVER_ERROR, "status unavailable\n", draining),
        },
        _ => text(
            StatusCode::NOT_FOUND,
            "not found: try /live, /ready, /status, /metrics\n",
            draining,
        ),
    }
}

fn text(status: StatusCode, body: &str, draining: bool) -> Response<Full<Bytes>> {
    let mut resp = Response::new(Full::new(Bytes::from(body.to_string())));
    *resp.status_mut() = status;
    resp.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    if draining {
        resp.headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
    }
    resp
}

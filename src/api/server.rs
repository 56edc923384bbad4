//! The HTTP/1 server under the router, with the limits axum's own `serve`
//! does not set: a client must send its request head within
//! `request_timeout` (one byte a second holds nothing for long) and its body
//! within the same time, and a head larger than [`MAX_HEAD_BYTES`] is
//! answered 431; an answer given before a body was read to its end closes the
//! connection. Nothing names the server (no `Server` header).

use std::time::Duration;

use axum::Router;
use axum::http::{HeaderValue, StatusCode, header::CONNECTION};
use axum::response::Response;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tower_http::timeout::RequestBodyTimeoutLayer;

/// The largest request head (request line and headers) read.
pub const MAX_HEAD_BYTES: usize = 16 * 1024;

/// An answer given before the request's body was read to its end (too large: 413, too slow:
/// 408) says `Connection: close`, and the connection is closed after it: the rest of that body
/// may still be on its way, so the connection cannot carry another request. Without the header a
/// client keeps the connection for its next request, which is then lost.
async fn close_after_unread_body(mut response: Response) -> Response {
    if matches!(response.status(), StatusCode::PAYLOAD_TOO_LARGE | StatusCode::REQUEST_TIMEOUT) {
        response.headers_mut().insert(CONNECTION, HeaderValue::from_static("close"));
    }
    response
}

/// Serve `router` on `listener` until the process ends.
pub async fn serve(listener: TcpListener, router: Router, request_timeout: Duration) {
    let router = router
        .layer(RequestBodyTimeoutLayer::new(request_timeout))
        .layer(axum::middleware::map_response(close_after_unread_body));
    loop {
        let stream = match listener.accept().await {
            Ok((stream, _)) => stream,
            Err(e) => {
                // Out of file descriptors, say: wait rather than spin.
                tracing::warn!("cannot accept a connection: {e}");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let service = TowerToHyperService::new(router.clone());
        tokio::spawn(async move {
            let connection = http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(request_timeout)
                .max_buf_size(MAX_HEAD_BYTES)
                .serve_connection(TokioIo::new(stream), service);
            if let Err(e) = connection.await {
                tracing::debug!("connection ended: {e}");
            }
        });
    }
}

//! `nanny mcp`: the stdio transport, as a client of a running daemon. Each
//! JSON-RPC line read from stdin is POSTed to the daemon's `/mcp` (with the
//! session id, the protocol-version and method headers, and the token); each
//! answer, JSON or Server-Sent Events, becomes lines on stdout. A session
//! that has a GET stream has its server notifications forwarded too. Nothing
//! but protocol goes to stdout; this bridge's own log goes to stderr.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures_util::StreamExt;
use reqwest::header::{ACCEPT, CONTENT_TYPE, HeaderMap};
use serde_json::{Value, json};
use tokio::io::{AsyncBufReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use tokio::task::AbortHandle;

use crate::cli::Failure;

const SESSION: &str = "mcp-session-id";
const VERSION: &str = "mcp-protocol-version";
const VERSION_META: &str = "io.modelcontextprotocol/protocolVersion";

/// The session as the daemon set it up: its id (sessions before
/// 2026-07-28), the negotiated version, whether the GET stream is open.
#[derive(Default)]
struct Session {
    id: Option<String>,
    version: Option<String>,
    listening: bool,
}

struct Bridge {
    endpoint: String,
    http: reqwest::Client,
    token: Option<String>,
    session: Mutex<Session>,
    out: mpsc::UnboundedSender<String>,
    /// Requests in flight by JSON-RPC id, so a cancellation closes the stream.
    inflight: Mutex<HashMap<String, AbortHandle>>,
    /// Every task still running (requests, the GET stream), ended with stdin.
    tasks: Mutex<Vec<AbortHandle>>,
}

pub async fn run(url: &str) -> Result<(), Failure> {
    let http = reqwest::Client::builder()
        .no_proxy()
        .connect_timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| Failure::new(1, format!("error: {e}")))?;
    let (out, mut lines) = mpsc::unbounded_channel::<String>();
    let bridge = Arc::new(Bridge {
        endpoint: format!("{}/mcp", url.trim_end_matches('/')),
        http,
        token: crate::client::token_from_env(),
        session: Mutex::default(),
        out,
        inflight: Mutex::default(),
        tasks: Mutex::default(),
    });
    eprintln!("nanny mcp: bridging stdio to {}", bridge.endpoint);
    let writer = tokio::spawn(async move {
        let mut stdout = tokio::io::stdout();
        while let Some(line) = lines.recv().await {
            let written = stdout.write_all(format!("{line}\n").as_bytes()).await;
            if written.is_err() || stdout.flush().await.is_err() {
                return;
            }
        }
    });
    let mut stdin = tokio::io::BufReader::new(tokio::io::stdin()).lines();
    loop {
        let line = match stdin.next_line().await {
            Ok(Some(line)) => line,
            Ok(None) => break,
            Err(e) => {
                eprintln!("nanny mcp: cannot read stdin: {e}");
                break;
            }
        };
        if line.trim().is_empty() {
            continue;
        }
        let message: Value = match serde_json::from_str(&line) {
            Ok(message) => message,
            Err(e) => {
                bridge.reply_error(&Value::Null, -32700, &format!("not JSON: {e}"));
                continue;
            }
        };
        let method = message["method"].as_str().unwrap_or_default().to_string();
        if method == "notifications/cancelled"
            && let Some(handle) = bridge.take_inflight(&message["params"]["requestId"])
        {
            handle.abort();
        }
        if method == "initialize" {
            // Everything after it needs the session it creates.
            bridge.post(message).await;
            continue;
        }
        let id = message.get("id").filter(|_| !method.is_empty()).cloned();
        let task = bridge.spawn({
            let bridge = bridge.clone();
            async move { bridge.post(message).await }
        });
        if let Some(id) = id {
            bridge.inflight.lock().unwrap_or_else(|e| e.into_inner()).insert(id.to_string(), task.abort_handle());
        }
        if method == "notifications/initialized" {
            let _ = task.await;
            bridge.clone().open_get_stream().await;
        }
    }
    // The client is done: what is still in flight is of no use to it.
    bridge.close().await;
    for task in bridge.tasks.lock().unwrap_or_else(|e| e.into_inner()).drain(..) {
        task.abort();
    }
    drop(bridge);
    let _ = tokio::time::timeout(Duration::from_secs(2), writer).await;
    Ok(())
}

impl Bridge {
    fn spawn(&self, task: impl Future<Output = ()> + Send + 'static) -> tokio::task::JoinHandle<()> {
        let task = tokio::spawn(task);
        let mut tasks = self.tasks.lock().unwrap_or_else(|e| e.into_inner());
        tasks.retain(|t| !t.is_finished());
        tasks.push(task.abort_handle());
        task
    }

    fn take_inflight(&self, id: &Value) -> Option<AbortHandle> {
        self.inflight.lock().unwrap_or_else(|e| e.into_inner()).remove(&id.to_string())
    }

    fn emit(&self, message: &Value) {
        let _ = self.out.send(message.to_string());
    }

    /// A message from the daemon to stdout; the version an `initialize`
    /// answer agreed on goes with every later request.
    fn deliver(&self, message: &Value) {
        if let Some(version) = message["result"]["protocolVersion"].as_str() {
            self.session.lock().unwrap_or_else(|e| e.into_inner()).version = Some(version.to_string());
        }
        self.emit(message);
    }

    fn reply_error(&self, id: &Value, code: i64, message: &str) {
        eprintln!("nanny mcp: {message}");
        self.emit(&json!({ "jsonrpc": "2.0", "id": id, "error": { "code": code, "message": message } }));
    }

    fn request(&self, method: reqwest::Method) -> reqwest::RequestBuilder {
        let mut request =
            self.http.request(method, &self.endpoint).header(ACCEPT, "application/json, text/event-stream");
        let session = self.session.lock().unwrap_or_else(|e| e.into_inner());
        if let Some(id) = &session.id {
            request = request.header(SESSION, id);
        }
        if let Some(version) = &session.version {
            request = request.header(VERSION, version);
        }
        drop(session);
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    /// POST one message and forward what comes back.
    async fn post(&self, message: Value) {
        let mut request = self.request(reqwest::Method::POST).header(CONTENT_TYPE, "application/json");
        // A 2026-07-28 request names its version, method and target itself.
        if let Some(version) = message["params"]["_meta"][VERSION_META].as_str() {
            request = request.header(VERSION, version);
        }
        if let Some(method) = message["method"].as_str() {
            request = request.header("mcp-method", method);
        }
        let params = &message["params"];
        if let Some(name) = params["name"].as_str().or(params["uri"].as_str()).or(params["taskId"].as_str())
            && name.bytes().all(|b| b.is_ascii_graphic() || b == b' ')
            && name.trim() == name
        {
            request = request.header("mcp-name", name);
        }
        let id = message.get("id").cloned().unwrap_or(Value::Null);
        let response = match request.body(message.to_string()).send().await {
            Ok(response) => response,
            Err(e) => {
                let cause = crate::health::error_chain(&e);
                if !id.is_null() {
                    self.reply_error(
                        &id,
                        -32000,
                        &format!("cannot reach the nanny daemon at {}: {cause}", self.endpoint),
                    );
                }
                return;
            }
        };
        if message["method"] == "initialize" {
            self.remember_session(response.headers());
        }
        let status = response.status();
        let is_sse = content_type(response.headers()).starts_with("text/event-stream");
        if is_sse {
            self.forward_sse(response).await;
        } else {
            let body = response.bytes().await.unwrap_or_default();
            let parsed = serde_json::from_slice::<Value>(&body).ok();
            match parsed {
                Some(answer) if answer.get("jsonrpc").is_some() => self.deliver(&answer),
                // The daemon's own refusal (401, 403): an error the client can show.
                _ if !status.is_success() && !id.is_null() => {
                    let detail = parsed.as_ref().and_then(|b| b["detail"].as_str().map(str::to_string));
                    let detail = detail.unwrap_or_else(|| String::from_utf8_lossy(&body).trim().to_string());
                    self.reply_error(&id, -32000, &format!("the daemon answered HTTP {status}: {detail}"));
                }
                _ => {}
            }
        }
        if !id.is_null() {
            self.take_inflight(&id);
        }
    }

    fn remember_session(&self, headers: &HeaderMap) {
        let id = headers.get(SESSION).and_then(|v| v.to_str().ok()).map(str::to_string);
        self.session.lock().unwrap_or_else(|e| e.into_inner()).id = id;
    }

    /// Forward each event's data as a line.
    async fn forward_sse(&self, response: reqwest::Response) {
        let mut body = response.bytes_stream();
        let mut buffer = Vec::new();
        while let Some(Ok(chunk)) = body.next().await {
            buffer.extend_from_slice(&chunk);
            while let Some(end) = event_end(&buffer) {
                let event: Vec<u8> = buffer.drain(..end).collect();
                if let Some(data) = sse_data(&String::from_utf8_lossy(&event)) {
                    match serde_json::from_str::<Value>(&data) {
                        Ok(message) => {
                            if let Some(version) = message["result"]["protocolVersion"].as_str() {
                                self.session.lock().unwrap_or_else(|e| e.into_inner()).version =
                                    Some(version.to_string());
                            }
                            self.emit(&message);
                        }
                        Err(e) => eprintln!("nanny mcp: skipped an event that is not JSON: {e}"),
                    }
                }
            }
        }
    }

    /// Open the session's GET stream (server notifications), if it has one,
    /// before reading on: no notification is sent before it is there.
    async fn open_get_stream(self: Arc<Self>) {
        let first = {
            let mut session = self.session.lock().unwrap_or_else(|e| e.into_inner());
            session.id.is_some() && !std::mem::replace(&mut session.listening, true)
        };
        if !first {
            return;
        }
        match self.request(reqwest::Method::GET).header(ACCEPT, "text/event-stream").send().await {
            Ok(r) if r.status().is_success() => {
                let bridge = self.clone();
                self.spawn(async move { bridge.forward_sse(r).await });
            }
            Ok(r) => eprintln!("nanny mcp: no notification stream (HTTP {})", r.status()),
            Err(e) => eprintln!("nanny mcp: no notification stream: {e}"),
        }
    }

    /// End the session on the daemon (best effort).
    async fn close(&self) {
        if self.session.lock().unwrap_or_else(|e| e.into_inner()).id.is_some() {
            let _ = self.request(reqwest::Method::DELETE).timeout(Duration::from_secs(2)).send().await;
        }
    }
}

fn content_type(headers: &HeaderMap) -> String {
    headers.get(CONTENT_TYPE).and_then(|v| v.to_str().ok()).unwrap_or_default().to_ascii_lowercase()
}

/// Where the first complete event ends (after its blank line), if any.
fn event_end(buffer: &[u8]) -> Option<usize> {
    let lf = buffer.windows(2).position(|w| w == b"\n\n").map(|i| i + 2);
    let crlf = buffer.windows(4).position(|w| w == b"\r\n\r\n").map(|i| i + 4);
    match (lf, crlf) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    }
}

/// The `data:` lines of one event, joined; `None` when it has none (a
/// priming event, a keep-alive comment).
fn sse_data(event: &str) -> Option<String> {
    let data: Vec<&str> =
        event.lines().filter_map(|line| line.strip_prefix("data:")).map(|d| d.strip_prefix(' ').unwrap_or(d)).collect();
    Some(data.join("\n")).filter(|d| !d.trim().is_empty())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_sent_events_are_split_and_their_data_joined() {
        let stream = b"id: 0\nretry: 3000\ndata:\n\n: keep-alive\r\n\r\ndata: {\"a\":\ndata: 1}\n\npartial";
        let first = event_end(stream).unwrap();
        assert_eq!(sse_data(&String::from_utf8_lossy(&stream[..first])), None, "priming event");
        let rest = &stream[first..];
        let second = event_end(rest).unwrap();
        assert_eq!(sse_data(&String::from_utf8_lossy(&rest[..second])), None, "comment");
        let rest = &rest[second..];
        let third = event_end(rest).unwrap();
        assert_eq!(sse_data(&String::from_utf8_lossy(&rest[..third])).as_deref(), Some("{\"a\":\n1}"));
        assert_eq!(event_end(&rest[third..]), None, "an incomplete event waits for more");
    }
}

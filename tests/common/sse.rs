//! A reader for the Server-Sent Events of `GET /events/stream`.

use std::time::Duration;

use serde_json::Value;

#[derive(Debug, Clone)]
pub struct SseFrame {
    pub id: Option<u64>,
    pub event: Option<String>,
    pub data: Value,
}

pub struct SseStream {
    resp: reqwest::Response,
    buf: String,
}

impl SseStream {
    /// Opens `URL` (a full `.../events/stream?...` address), sending `Last-Event-ID` if given.
    pub async fn connect(url: &str, last_event_id: Option<&str>) -> SseStream {
        let client = reqwest::Client::builder().no_proxy().build().unwrap();
        let mut rb = client.get(url).header("accept", "text/event-stream");
        if let Some(id) = last_event_id {
            rb = rb.header("last-event-id", id);
        }
        let resp = rb.send().await.unwrap_or_else(|e| panic!("GET {url}: {e}"));
        assert_eq!(resp.status().as_u16(), 200, "GET {url}");
        let ct = resp.headers().get("content-type").and_then(|v| v.to_str().ok()).unwrap_or("").to_string();
        assert!(ct.starts_with("text/event-stream"), "content-type of {url}: {ct:?}");
        SseStream { resp, buf: String::new() }
    }

    /// The next event with data (comments / keep-alives skipped); None when `timeout` passes
    /// first or the stream ends.
    pub async fn next(&mut self, timeout: Duration) -> Option<SseFrame> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            while let Some(frame) = self.take_frame() {
                if let Some(f) = frame {
                    return Some(f);
                }
            }
            let chunk = tokio::time::timeout_at(deadline, self.resp.chunk()).await.ok()?;
            match chunk {
                Ok(Some(bytes)) => self.buf.push_str(&String::from_utf8_lossy(&bytes).replace("\r\n", "\n")),
                _ => return None,
            }
        }
    }

    /// Pops one complete frame from the buffer: Some(None) for a frame without data.
    fn take_frame(&mut self) -> Option<Option<SseFrame>> {
        let end = self.buf.find("\n\n")?;
        let raw: String = self.buf.drain(..end + 2).collect();
        let (mut id, mut event, mut data) = (None, None, Vec::new());
        for line in raw.lines() {
            if line.starts_with(':') {
                continue;
            }
            let (field, value) = line.split_once(':').unwrap_or((line, ""));
            let value = value.strip_prefix(' ').unwrap_or(value);
            match field {
                "id" => id = Some(value.parse::<u64>().unwrap_or_else(|_| panic!("SSE id {value:?} is not a number"))),
                "event" => event = Some(value.to_string()),
                "data" => data.push(value.to_string()),
                _ => {}
            }
        }
        if data.is_empty() {
            return Some(None);
        }
        let text = data.join("\n");
        let data = serde_json::from_str(&text).unwrap_or_else(|e| panic!("SSE data is not JSON ({e}): {text}"));
        Some(Some(SseFrame { id, event, data }))
    }
}

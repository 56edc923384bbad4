//! The CLI's HTTP client of the daemon's API. Its errors are in words: a
//! transport failure says what happened ("connection refused"), an API
//! error carries the daemon's `detail` and its whole body.

use std::time::Duration;

use serde::de::DeserializeOwned;
use serde_json::Value;

#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("cannot connect to the daemon at {url}: {cause}. Is `nanny serve` running? Set --url or NANNY_URL.")]
    Unreachable { url: String, cause: String },
    #[error("{detail}")]
    Api { status: u16, detail: String, body: Value },
    #[error("unexpected answer from the daemon: {0}")]
    Protocol(String),
}

pub struct Client {
    base: String,
    /// `NANNY_TOKEN`, sent as `Authorization: Bearer` on every request.
    token: Option<String>,
    http: reqwest::Client,
}

impl Client {
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a client without TLS always builds");
        let token = std::env::var("NANNY_TOKEN").ok().filter(|t| !t.is_empty());
        Client { base: base.trim_end_matches('/').to_string(), token, http }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.http.get(self.url(path))).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let mut request = self.http.post(self.url(path));
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// A streaming GET (log follow, event stream): the response, once its status is OK.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let response = self.authorized(self.http.get(self.url(path))).send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response.status().as_u16(), response.json().await.unwrap_or(Value::Null)))
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn authorized(&self, request: reqwest::RequestBuilder) -> reqwest::RequestBuilder {
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), cause: crate::health::error_chain(e) }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = self.authorized(request).send().await.map_err(|e| self.unreachable(&e))?;
        let status = response.status();
        let body: Value = response.json().await.map_err(|e| ClientError::Protocol(crate::health::error_chain(&e)))?;
        if status.is_success() { Ok(body) } else { Err(api_error(status.as_u16(), body)) }
    }
}

/// An answer read as the type the CLI expects of it.
pub fn typed<T: DeserializeOwned>(answer: Value) -> Result<T, ClientError> {
    serde_json::from_value(answer).map_err(|e| ClientError::Protocol(e.to_string()))
}

fn api_error(status: u16, body: Value) -> ClientError {
    let detail = body["detail"].as_str().map(str::to_string).unwrap_or_else(|| format!("HTTP {status}"));
    ClientError::Api { status, detail, body }
}

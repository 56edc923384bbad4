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
    http: reqwest::Client,
    /// `NANNY_TOKEN` (or `NANNY_TOKEN_FILE`'s), sent as `Authorization: Bearer`.
    token: Option<String>,
}

/// The daemon's token as the CLI finds it: `NANNY_TOKEN`, else the first
/// line of the file `NANNY_TOKEN_FILE` names.
pub(crate) fn token_from_env() -> Option<String> {
    let token = std::env::var("NANNY_TOKEN").ok().or_else(|| {
        let path = std::env::var_os("NANNY_TOKEN_FILE")?;
        Some(std::fs::read_to_string(path).ok()?.lines().next()?.to_string())
    })?;
    Some(token.trim().to_string()).filter(|t| !t.is_empty())
}

impl Client {
    pub fn new(base: &str) -> Client {
        let http = reqwest::Client::builder()
            .no_proxy()
            .connect_timeout(Duration::from_secs(5))
            .build()
            .expect("a client without TLS always builds");
        Client { base: base.trim_end_matches('/').to_string(), http, token: token_from_env() }
    }

    pub async fn get(&self, path: &str) -> Result<Value, ClientError> {
        self.send(self.request(reqwest::Method::GET, path)).await
    }

    pub async fn post(&self, path: &str, body: Option<Value>) -> Result<Value, ClientError> {
        let mut request = self.request(reqwest::Method::POST, path);
        if let Some(body) = body {
            request = request.json(&body);
        }
        self.send(request).await
    }

    /// A streaming GET (log follow, event stream): the response, once its status is OK.
    pub async fn stream(&self, path: &str) -> Result<reqwest::Response, ClientError> {
        let response = self.request(reqwest::Method::GET, path).send().await.map_err(|e| self.unreachable(&e))?;
        if response.status().is_success() {
            return Ok(response);
        }
        Err(api_error(response.status().as_u16(), response.json().await.unwrap_or(Value::Null)))
    }

    fn request(&self, method: reqwest::Method, path: &str) -> reqwest::RequestBuilder {
        let request = self.http.request(method, format!("{}{path}", self.base));
        match &self.token {
            Some(token) => request.bearer_auth(token),
            None => request,
        }
    }

    fn unreachable(&self, e: &reqwest::Error) -> ClientError {
        ClientError::Unreachable { url: self.base.clone(), cause: crate::health::error_chain(e) }
    }

    async fn send(&self, request: reqwest::RequestBuilder) -> Result<Value, ClientError> {
        let response = request.send().await.map_err(|e| self.unreachable(&e))?;
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

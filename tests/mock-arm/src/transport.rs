//! An azure_core HTTP client that sends every request to a loopback mock.
//!
//! azure_identity insists on an `https` authority host for client-secret and workload-identity
//! credentials, so tests keep the real authority (`https://login.microsoftonline.com`) and plug
//! this in as `ClientOptions.transport`: it rewrites scheme, host and port to the mock's and keeps
//! path, query, headers and body.

use std::sync::Arc;

use azure_core::http::{AsyncRawResponse, HttpClient, Request, Transport};

/// Rewrites each request's origin to `target` and sends it with a plain reqwest client.
#[derive(Debug)]
pub struct RedirectTransport {
    target: url::Url,
    client: reqwest::Client,
}

impl RedirectTransport {
    /// `target` is the mock's base URL, e.g. `http://127.0.0.1:PORT`. Needs a rustls crypto
    /// provider installed (as every test binary here does), like any reqwest client.
    pub fn new(target: &str) -> Result<Self, url::ParseError> {
        Ok(Self { target: url::Url::parse(target)?, client: reqwest::Client::new() })
    }

    /// The `Transport` for `ClientOptions.transport`.
    pub fn transport(target: &str) -> Result<Transport, url::ParseError> {
        Ok(Transport::new(Arc::new(Self::new(target)?)))
    }
}

#[async_trait::async_trait]
impl HttpClient for RedirectTransport {
    async fn execute_request(&self, request: &Request) -> azure_core::Result<AsyncRawResponse> {
        let mut request = request.clone();
        let url = request.url_mut();
        let rewrite = url
            .set_scheme(self.target.scheme())
            .and_then(|()| url.set_host(self.target.host_str()).map_err(|_| ()))
            .and_then(|()| url.set_port(self.target.port()));
        if rewrite.is_err() {
            return Err(azure_core::Error::with_message(
                azure_core::error::ErrorKind::Other,
                "RedirectTransport could not rewrite the request URL",
            ));
        }
        self.client.execute_request(&request).await
    }
}

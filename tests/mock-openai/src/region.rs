//! [`Region`]: one mock Azure OpenAI region as a test sees it, wherever the mock runs — in the
//! test's own process ([`Region::start`]) or in another one, such as `modelgw mock-azure`, driven
//! through the control API ([`Region::process`]). Both are scripted with the same typed
//! [`Fault`]s and counted the same way, so in-process proxy tests and process-level scenarios
//! share one harness.

#![allow(
    clippy::expect_used,
    reason = "the test harness's side: a control call that fails stops the test, saying why"
)]

use std::io::{Read as _, Write as _};
use std::net::{SocketAddr, TcpStream};
use std::time::Duration;

use crate::{Fault, MockAzure, MockConfig, Quota, QuotaCounts, RecordedRequest};

/// Model the mock reports unless told otherwise (`modelgw mock-azure`'s default too).
pub const DEFAULT_MODEL: &str = "gpt-4o-mini-2024-07-18";

/// How long a call to a mock process's control API may take (it answers in microseconds).
const CONTROL_TIMEOUT: Duration = Duration::from_secs(10);

/// One region serving one deployment.
pub struct Region {
    /// What the configuration under test calls this region's endpoint, e.g. `eus`.
    pub name: String,
    /// The Azure region the mock reports in `x-ms-region`, e.g. "East US".
    pub display: String,
    /// The deployment the region serves.
    pub deployment: String,
    /// The only `api-key` the region accepts.
    pub key: String,
    /// A unique id, for the configuration under test to name the region by.
    pub id: uuid::Uuid,
    base_url: String,
    driver: Driver,
}

enum Driver {
    /// The mock runs in this process.
    InProcess(MockAzure),
    /// The mock runs in another process; its control API is at the base URL.
    Process,
    /// Nothing of ours serves the URL (a closed port, another server): no faults, no calls.
    Elsewhere,
}

impl Region {
    /// Starts a mock in this process on 127.0.0.1 (a free port) reporting `display`, serving
    /// `deployment` to `key`.
    pub async fn start(
        name: &str,
        display: &str,
        deployment: &str,
        key: &str,
    ) -> std::io::Result<Region> {
        let mock = MockAzure::start(
            SocketAddr::from(([127, 0, 0, 1], 0)),
            MockConfig {
                region: display.to_owned(),
                api_key: key.to_owned(),
                deployments: vec![deployment.to_owned()],
                model: DEFAULT_MODEL.to_owned(),
            },
        )
        .await?;
        let base_url = mock.base_url();
        Ok(Region::new(name, display, deployment, key, base_url, Driver::InProcess(mock)))
    }

    /// The mock process listening at `base_url` (e.g. a `modelgw mock-azure` the caller
    /// started), serving `deployment` to `key` as `display`.
    pub fn process(
        name: &str,
        display: &str,
        deployment: &str,
        key: &str,
        base_url: &str,
    ) -> Region {
        Region::new(name, display, deployment, key, base_url.to_owned(), Driver::Process)
    }

    /// A region at `base_url` that no mock of ours serves (a closed port, another server):
    /// [`Region::calls`] is always 0 and it cannot be scripted.
    pub fn elsewhere(
        name: &str,
        display: &str,
        deployment: &str,
        key: &str,
        base_url: &str,
    ) -> Region {
        Region::new(name, display, deployment, key, base_url.to_owned(), Driver::Elsewhere)
    }

    fn new(
        name: &str,
        display: &str,
        deployment: &str,
        key: &str,
        base_url: String,
        driver: Driver,
    ) -> Region {
        Region {
            name: name.to_owned(),
            display: display.to_owned(),
            deployment: deployment.to_owned(),
            key: key.to_owned(),
            id: uuid::Uuid::new_v4(),
            base_url,
            driver,
        }
    }

    /// `http://127.0.0.1:PORT`, the region's Azure OpenAI endpoint.
    pub fn url(&self) -> &str {
        &self.base_url
    }

    /// Appends `fault` to the deployment's queue.
    ///
    /// # Panics
    /// For a region served [`Region::elsewhere`], or when a mock process cannot be reached.
    pub fn script(&self, fault: Fault) {
        match &self.driver {
            Driver::InProcess(mock) => mock.script(&self.deployment, fault),
            Driver::Process => {
                let body = serde_json::to_vec(&fault).expect("a fault serializes");
                let path = format!("/_mock/faults/{}", self.deployment);
                let (status, answer) = self.control("POST", &path, &body);
                assert!((200..300).contains(&status), "scripting {fault:?}: {status} {answer}");
            }
            Driver::Elsewhere => panic!("region {} is not served by a mock", self.name),
        }
    }

    /// Clears the region's faults, counts and rate-limit windows (settings stay).
    ///
    /// # Panics
    /// For a region served [`Region::elsewhere`], or when a mock process cannot be reached.
    pub fn reset(&self) {
        match &self.driver {
            Driver::InProcess(mock) => mock.reset(),
            Driver::Process => {
                let (status, answer) = self.control("POST", "/_mock/reset", b"");
                assert!((200..300).contains(&status), "resetting: {status} {answer}");
            }
            Driver::Elsewhere => panic!("region {} is not served by a mock", self.name),
        }
    }

    /// The pause between two SSE frames of a streamed answer (a slow stream shows tokens
    /// arriving one by one).
    ///
    /// # Panics
    /// For a region served [`Region::elsewhere`], or when a mock process cannot be reached.
    pub fn set_stream_gap(&self, gap: Duration) {
        match &self.driver {
            Driver::InProcess(mock) => mock.set_stream_gap(gap),
            Driver::Process => {
                let ms = u64::try_from(gap.as_millis()).unwrap_or(u64::MAX);
                let body = format!(r#"{{"stream_gap_ms":{ms}}}"#);
                let (status, answer) = self.control("POST", "/_mock/settings", body.as_bytes());
                assert!((200..300).contains(&status), "setting the stream gap: {status} {answer}");
            }
            Driver::Elsewhere => panic!("region {} is not served by a mock", self.name),
        }
    }

    /// Sets the region's token-bucket quota (`None` removes it): buckets full, counts zero
    /// ([`MockAzure::set_quota`]).
    ///
    /// # Panics
    /// For an invalid quota, a region served [`Region::elsewhere`], or when a mock process
    /// cannot be reached.
    pub fn set_quota(&self, quota: Option<Quota>) {
        match &self.driver {
            Driver::InProcess(mock) => {
                mock.set_quota(quota).unwrap_or_else(|e| panic!("region {}: {e}", self.name));
            }
            Driver::Process => {
                let body = serde_json::to_vec(&quota).expect("a quota serializes");
                let (status, answer) = self.control("POST", "/_mock/quota", &body);
                assert!((200..300).contains(&status), "setting {quota:?}: {status} {answer}");
            }
            Driver::Elsewhere => panic!("region {} is not served by a mock", self.name),
        }
    }

    /// Inference requests admitted, served (2xx) and throttled since the quota was set (zero
    /// for a region served [`Region::elsewhere`]).
    ///
    /// # Panics
    /// When a mock process cannot be reached.
    pub fn quota_counts(&self) -> QuotaCounts {
        match &self.driver {
            Driver::InProcess(mock) => mock.quota_counts(),
            Driver::Process => {
                let (status, answer) = self.control("GET", "/_mock/quota", b"");
                assert_eq!(status, 200, "reading quota counts: {answer}");
                serde_json::from_str(&answer).expect("quota counts are JSON")
            }
            Driver::Elsewhere => QuotaCounts::default(),
        }
    }

    /// Requests the deployment received, whatever their outcome (0 for a region served
    /// [`Region::elsewhere`]).
    ///
    /// # Panics
    /// When a mock process cannot be reached.
    pub fn calls(&self) -> u64 {
        match &self.driver {
            Driver::InProcess(mock) => mock.calls(&self.deployment),
            Driver::Process => {
                let (status, answer) = self.control("GET", "/_mock/calls", b"");
                assert_eq!(status, 200, "reading calls: {answer}");
                let calls: serde_json::Value =
                    serde_json::from_str(&answer).expect("calls are JSON");
                calls.get(&self.deployment).and_then(serde_json::Value::as_u64).unwrap_or(0)
            }
            Driver::Elsewhere => 0,
        }
    }

    /// The requests the region received, oldest first, credential headers redacted (empty for
    /// a region served [`Region::elsewhere`]).
    ///
    /// # Panics
    /// When a mock process cannot be reached.
    pub fn requests(&self) -> Vec<RecordedRequest> {
        match &self.driver {
            Driver::InProcess(mock) => {
                mock.requests().iter().map(RecordedRequest::redacted).collect()
            }
            Driver::Process => {
                let (status, answer) = self.control("GET", "/_mock/requests", b"");
                assert_eq!(status, 200, "reading requests: {answer}");
                serde_json::from_str(&answer).expect("recorded requests are JSON")
            }
            Driver::Elsewhere => Vec::new(),
        }
    }

    /// Whether the region holds the stored response `id` (Responses API): where a follow-up
    /// naming it was created (false for a region served [`Region::elsewhere`]).
    ///
    /// # Panics
    /// When a mock process cannot be reached.
    pub fn holds_response(&self, id: &str) -> bool {
        match &self.driver {
            Driver::InProcess(mock) => mock.holds_response(id),
            Driver::Process => {
                let (status, answer) = self.control("GET", &format!("/_mock/responses/{id}"), b"");
                assert!(
                    status == 200 || status == 404,
                    "asking for response {id}: {status} {answer}"
                );
                status == 200
            }
            Driver::Elsewhere => false,
        }
    }

    /// The in-process mock, for what only it offers (recorded credentials, latency…).
    ///
    /// # Panics
    /// When the mock runs in another process or there is none.
    pub fn mock(&self) -> &MockAzure {
        match &self.driver {
            Driver::InProcess(mock) => mock,
            _ => panic!("region {} has no in-process mock", self.name),
        }
    }

    /// One request to a mock process's control API, over a plain blocking HTTP/1.1 connection
    /// (it is local, answers at once, and lives in another process, so blocking the caller's
    /// thread for it cannot hold up the mock): status and body.
    fn control(&self, method: &str, path: &str, body: &[u8]) -> (u16, String) {
        let authority = self.base_url.strip_prefix("http://").expect("an http:// mock URL");
        let mut stream = TcpStream::connect(authority)
            .unwrap_or_else(|e| panic!("mock process of {} at {authority}: {e}", self.name));
        stream.set_read_timeout(Some(CONTROL_TIMEOUT)).expect("read timeout");
        stream.set_write_timeout(Some(CONTROL_TIMEOUT)).expect("write timeout");
        let head = format!(
            "{method} {path} HTTP/1.1\r\nhost: {authority}\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
            body.len()
        );
        stream.write_all(head.as_bytes()).and_then(|()| stream.write_all(body)).expect("send");
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).expect("the mock's answer");
        let answer = String::from_utf8_lossy(&answer);
        let (head, body) = answer.split_once("\r\n\r\n").unwrap_or((&answer, ""));
        let status = head.split(' ').nth(1).and_then(|s| s.parse().ok()).unwrap_or(0);
        (status, body.to_owned())
    }
}

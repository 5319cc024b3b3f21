//! Client load for the process-level scenarios: open-loop paced clients (requests leave on a
//! schedule whatever the answers do, as independent users would send them) and closed-loop
//! clients (each sends its next request when the previous one is answered, as a batch job's
//! workers do). Each request goes to the next gateway URL in turn, as Azure Front Door spreads
//! clients over data planes. Counts answers, never panics on one: a client error is a figure
//! of the scenario.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::Value;
use tokio::task::JoinSet;

use crate::API_VERSION;

/// How long one client request may take before it counts as an error: beyond any gateway
/// deadline a scenario sets (at most 60 s), so the gateway's own answer is what is counted.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(90);

/// Client errors whose text is kept for the report (the rest are only counted).
const ERROR_SAMPLES: usize = 5;

/// How clients send.
#[derive(Clone, Copy, Debug)]
pub enum Load {
    /// Open loop: `per_sec` requests a second, each at its scheduled instant.
    Paced { per_sec: f64 },
    /// Closed loop: `clients` clients, each waiting for its answer before the next request.
    ClosedLoop { clients: usize },
}

/// One chat-completions request sent again and again to a gateway.
#[derive(Clone, Debug)]
pub struct Target {
    /// Gateway base URLs (one per data plane), used in turn.
    pub gateways: Vec<String>,
    /// The gateway key.
    pub key: String,
    /// The deployment name in the path: the gateway's name.
    pub deployment: String,
    /// The JSON body.
    pub body: Value,
}

/// What the clients saw.
#[derive(Clone, Debug, Default)]
pub struct Tally {
    /// Requests sent (answered or not).
    pub requests: u64,
    /// Answers other than 2xx, and transport errors (timeouts included).
    pub errors: u64,
    /// The first few errors, as `status body` or the transport error.
    pub error_samples: Vec<String>,
}

impl Tally {
    fn add(&mut self, outcome: Result<(), String>) {
        self.requests += 1;
        if let Err(e) = outcome {
            self.errors += 1;
            if self.error_samples.len() < ERROR_SAMPLES {
                self.error_samples.push(e);
            }
        }
    }

    fn merge(&mut self, other: Tally) {
        self.requests += other.requests;
        self.errors += other.errors;
        let room = ERROR_SAMPLES.saturating_sub(self.error_samples.len());
        self.error_samples.extend(other.error_samples.into_iter().take(room));
    }
}

/// Clients sending to one target until `stop`, then waiting for every outstanding answer.
/// Requests are sent only before `stop`; those still in flight then are counted when they
/// end.
pub async fn run(http: reqwest::Client, target: Target, load: Load, stop: Instant) -> Tally {
    let target = Arc::new(target);
    let turn = Arc::new(AtomicUsize::new(0));
    let mut tasks = JoinSet::new();
    match load {
        Load::Paced { per_sec } => {
            let gap = Duration::from_secs_f64(1.0 / per_sec.max(f64::MIN_POSITIVE));
            let start = tokio::time::Instant::now();
            for i in 0u32.. {
                let at = start + gap * i;
                if at.into_std() >= stop {
                    break;
                }
                tokio::time::sleep_until(at).await;
                let (http, target, turn) = (http.clone(), target.clone(), turn.clone());
                tasks.spawn(async move {
                    let mut tally = Tally::default();
                    tally.add(send(&http, &target, &turn).await);
                    tally
                });
            }
        }
        Load::ClosedLoop { clients } => {
            for _ in 0..clients {
                let (http, target, turn) = (http.clone(), target.clone(), turn.clone());
                tasks.spawn(async move {
                    let mut tally = Tally::default();
                    while Instant::now() < stop {
                        tally.add(send(&http, &target, &turn).await);
                    }
                    tally
                });
            }
        }
    }
    let mut total = Tally::default();
    while let Some(done) = tasks.join_next().await {
        match done {
            Ok(tally) => total.merge(tally),
            Err(e) => total.add(Err(format!("client task failed: {e}"))),
        }
    }
    total
}

/// One request to the next gateway in turn: `Ok` for a 2xx answer read to its end.
async fn send(http: &reqwest::Client, target: &Target, turn: &AtomicUsize) -> Result<(), String> {
    let i = turn.fetch_add(1, Ordering::Relaxed) % target.gateways.len().max(1);
    let gateway = target.gateways.get(i).map_or("", String::as_str);
    let url = format!(
        "{gateway}/openai/deployments/{}/chat/completions?api-version={API_VERSION}",
        target.deployment
    );
    let res = http
        .post(url)
        .header("api-key", &target.key)
        .json(&target.body)
        .timeout(CLIENT_TIMEOUT)
        .send()
        .await
        .map_err(|e| format!("transport: {e}"))?;
    let status = res.status();
    let text = res.text().await.map_err(|e| format!("{status}, body cut: {e}"))?;
    if status.is_success() {
        Ok(())
    } else {
        let short: String = text.chars().take(300).collect();
        Err(format!("{status} {short}"))
    }
}

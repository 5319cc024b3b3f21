//! Stateful Responses calls pinned to the endpoint that created the response, across data
//! planes, as real processes: one control plane, two data planes, three mock regions (each
//! stores the responses it created and knows no other region's).
//!
//! A response is created through data plane 0; its follow-ups (`previous_response_id`) and
//! retrievals go through data plane 1, which has never seen it: each reaches the creating
//! region, while plain requests on the same data plane are spread over all three. With the
//! creating region's process stopped, the follow-up gets the gateway's own 503 naming the
//! endpoint — never another region's 404 — and nothing reaches the other regions.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

use std::collections::BTreeMap;

use modelgw_e2e::{Cluster, Region};
use serde_json::{Value, json};

const BIN: &str = env!("CARGO_BIN_EXE_modelgw");
const GATEWAY: &str = "pinned-gateway";
const DATED_API_VERSION: &str = "2025-04-01-preview";
const FOLLOW_UPS: usize = 20;
/// Plain creates on the follow-ups' data plane. Members are picked at random by weight (equal
/// here): 30 leave one of three regions out with odds 3·(2/3)^30 ≈ 1 in 60,000.
const PLAIN: usize = 30;

/// One answer of the gateway: status, who served it (`x-modelgw-endpoint`) and the JSON body.
#[derive(Debug)]
struct Answer {
    status: u16,
    endpoint: Option<String>,
    body: Value,
}

/// The two surfaces a Responses call comes in on: `(path suffix → URL)`.
#[derive(Clone, Copy, Debug)]
enum Surface {
    V1,
    Dated,
}

impl Surface {
    fn url(self, gateway: &str, path: &str) -> String {
        match self {
            Surface::V1 => format!("{gateway}/openai/v1/{path}"),
            Surface::Dated => format!("{gateway}/openai/{path}?api-version={DATED_API_VERSION}"),
        }
    }
}

struct Client {
    http: reqwest::Client,
    key: String,
}

impl Client {
    async fn send(&self, method: reqwest::Method, url: &str, body: Option<&Value>) -> Answer {
        let mut req = self.http.request(method, url).header("api-key", &self.key);
        if let Some(body) = body {
            req = req.json(body);
        }
        let res = req.send().await.unwrap_or_else(|e| panic!("{url}: {e}"));
        let status = res.status().as_u16();
        let endpoint = res
            .headers()
            .get("x-modelgw-endpoint")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned);
        let text = res.text().await.unwrap();
        let body = serde_json::from_str(&text).unwrap_or(Value::String(text));
        Answer { status, endpoint, body }
    }

    async fn create(&self, gateway: &str, surface: Surface, previous: Option<&str>) -> Answer {
        let mut body = json!({"model": GATEWAY, "input": "Hello"});
        if let Some(id) = previous {
            body["previous_response_id"] = json!(id);
        }
        self.send(reqwest::Method::POST, &surface.url(gateway, "responses"), Some(&body)).await
    }

    async fn retrieve(&self, gateway: &str, surface: Surface, id: &str) -> Answer {
        self.send(reqwest::Method::GET, &surface.url(gateway, &format!("responses/{id}")), None)
            .await
    }
}

/// The `previous_response_id`s each region received in creates, and how many by-id calls
/// (`/responses/{id}…`) reached it.
fn stateful_calls(region: &Region) -> (Vec<String>, usize) {
    let mut previous = Vec::new();
    let mut by_id = 0;
    for r in region.requests() {
        if r.path.contains("/responses/") {
            by_id += 1;
        } else if r.path.ends_with("/responses")
            && let Ok(body) = serde_json::from_slice::<Value>(&r.body)
            && let Some(id) = body["previous_response_id"].as_str()
        {
            previous.push(id.to_owned());
        }
    }
    (previous, by_id)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_ups_reach_the_creating_region_from_any_data_plane() -> anyhow::Result<()> {
    let mut cluster = Cluster::new(BIN)?;
    let key = cluster.with_gateway(GATEWAY, 2).await?;
    let (dp0, dp1) = (cluster.gateway_url(0).to_owned(), cluster.gateway_url(1).to_owned());
    let client = Client { http: reqwest::Client::new(), key };

    // Created through data plane 0.
    let created = client.create(&dp0, Surface::V1, None).await;
    assert_eq!(created.status, 200, "{created:?}");
    let id = created.body["id"].as_str().expect("a response id").to_owned();
    let creator = created.endpoint.clone().expect("x-modelgw-endpoint");
    let creator_index =
        cluster.regions.iter().position(|r| r.name == creator).expect("a region's endpoint");
    let others: Vec<usize> = (0..cluster.regions.len()).filter(|&i| i != creator_index).collect();

    // Follow-ups through data plane 1 (both surfaces), interleaved with plain creates there.
    let mut plain_by_endpoint: BTreeMap<String, usize> = BTreeMap::new();
    let mut last_follow_up = String::new();
    for i in 0..PLAIN {
        let plain = client.create(&dp1, Surface::V1, None).await;
        assert_eq!(plain.status, 200, "plain create {i}: {plain:?}");
        *plain_by_endpoint.entry(plain.endpoint.expect("x-modelgw-endpoint")).or_default() += 1;
        if i < FOLLOW_UPS {
            let surface = if i % 2 == 0 { Surface::V1 } else { Surface::Dated };
            let follow = client.create(&dp1, surface, Some(&id)).await;
            assert_eq!(follow.status, 200, "follow-up {i} ({surface:?}): {follow:?}");
            assert_eq!(follow.endpoint.as_deref(), Some(creator.as_str()), "follow-up {i}");
            assert_eq!(follow.body["previous_response_id"], json!(id), "follow-up {i}");
            last_follow_up = follow.body["id"].as_str().expect("the follow-up's id").to_owned();
        }
    }
    let names: Vec<&str> = cluster.regions.iter().map(|r| r.name.as_str()).collect();
    assert!(
        names.iter().all(|n| plain_by_endpoint.contains_key(*n)),
        "{PLAIN} plain creates were not spread over {names:?}: {plain_by_endpoint:?}"
    );

    // The regions' own journals agree: all follow-ups reached the creator, with the id it
    // issued (not the gateway's), and none reached another region.
    let (previous, _) = stateful_calls(&cluster.regions[creator_index]);
    let previous_id = previous.first().cloned().unwrap_or_default();
    assert_eq!(previous.len(), FOLLOW_UPS, "follow-ups the creator received: {previous:?}");
    assert!(previous.iter().all(|p| p == &previous[0]), "{previous:?}");
    assert!(previous[0].starts_with("resp_") && previous[0] != id, "{previous:?}");
    assert!(cluster.regions[creator_index].holds_response(&previous[0]), "{creator}");
    for &o in &others {
        let (previous, by_id) = stateful_calls(&cluster.regions[o]);
        assert!(previous.is_empty() && by_id == 0, "{} got {previous:?}, {by_id}", names[o]);
        assert!(!cluster.regions[o].holds_response(&previous_id), "{} holds it too", names[o]);
    }

    // Retrieval through data plane 1, both surfaces; the follow-up's own response through
    // data plane 0.
    for surface in [Surface::V1, Surface::Dated] {
        let got = client.retrieve(&dp1, surface, &id).await;
        assert_eq!(got.status, 200, "{surface:?}: {got:?}");
        assert_eq!(got.body["id"], json!(id), "{surface:?}");
        assert_eq!(got.endpoint.as_deref(), Some(creator.as_str()), "{surface:?}");
    }
    let got = client.retrieve(&dp0, Surface::V1, &last_follow_up).await;
    assert_eq!(got.status, 200, "{got:?}");
    assert_eq!(got.endpoint.as_deref(), Some(creator.as_str()));

    // The creating region goes away: the follow-up and the retrieval get the gateway's clear
    // 503 naming the endpoint, and nothing reaches another region.
    cluster.region_procs[creator_index].stop().await;
    for surface in [Surface::V1, Surface::Dated] {
        for answer in [
            client.create(&dp1, surface, Some(&id)).await,
            client.retrieve(&dp1, surface, &id).await,
        ] {
            assert_eq!(answer.status, 503, "{surface:?}: {answer:?}");
            let message = answer.body["error"]["message"].as_str().unwrap_or_default();
            assert!(
                message.contains(&creator),
                "{surface:?}: the 503 does not name {creator}: {answer:?}"
            );
            assert!(answer.body["error"]["code"].is_string(), "{answer:?}");
        }
    }
    for &o in &others {
        let (previous, by_id) = stateful_calls(&cluster.regions[o]);
        assert!(previous.is_empty() && by_id == 0, "{} got {previous:?}, {by_id}", names[o]);
    }
    // Plain creates still work, on the two regions left.
    for _ in 0..3 {
        let plain = client.create(&dp1, Surface::V1, None).await;
        assert_eq!(plain.status, 200, "{plain:?}");
        assert_ne!(plain.endpoint.as_deref(), Some(creator.as_str()));
    }

    assert!(!cluster.all_logs().contains(&client.key), "the gateway key is in a log");
    Ok(())
}

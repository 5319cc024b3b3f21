//! Images, audio (multipart in, binary out) and the model lists.

#![allow(clippy::unwrap_used, clippy::expect_used)] // a test stops where its setup fails

mod common;

use base64::Engine as _;
use common::*;
use modelgw_mock_openai::{Fault, MockAzure, media};
use serde_json::{Value, json};

const BOUNDARY: &str = "mock-boundary-7MA4YWxkTrZu0gW";
const AUDIO_DEP: &str = "whisper";
const IMAGE_DEP: &str = "gpt-image-1";
const DALLE_DEP: &str = "dall-e-3";

async fn start_media() -> MockAzure {
    MockAzure::start(
        "127.0.0.1:0".parse().expect("addr"),
        modelgw_mock_openai::MockConfig {
            region: REGION.into(),
            api_key: KEY.into(),
            deployments: vec![DEP.into(), AUDIO_DEP.into(), IMAGE_DEP.into(), DALLE_DEP.into()],
            model: MODEL.into(),
        },
    )
    .await
    .expect("mock starts")
}

/// A `multipart/form-data` body: `(name, filename, bytes)` parts.
fn form(parts: &[(&str, Option<&str>, &[u8])]) -> Vec<u8> {
    let mut out = Vec::new();
    for (name, filename, data) in parts {
        out.extend_from_slice(format!("--{BOUNDARY}\r\n").as_bytes());
        match filename {
            Some(f) => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"; filename=\"{f}\"\r\nContent-Type: application/octet-stream\r\n\r\n").as_bytes(),
            ),
            None => out.extend_from_slice(
                format!("Content-Disposition: form-data; name=\"{name}\"\r\n\r\n").as_bytes(),
            ),
        }
        out.extend_from_slice(data);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("--{BOUNDARY}--\r\n").as_bytes());
    out
}

async fn post_form(url: &str, body: Vec<u8>) -> reqwest::Response {
    client()
        .post(url)
        .header("api-key", KEY)
        .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
        .body(body)
        .send()
        .await
        .expect("response")
}

/// Audio-like bytes that contain CRLFs and a near-boundary, so a sloppy parser would cut them.
fn audio() -> Vec<u8> {
    let mut a = b"RIFF\x00\x00WAVE\r\n\r\n--mock-boundary\r\n".to_vec();
    a.extend((0..3000u32).map(|i| (i * 7 % 256) as u8));
    a
}

#[tokio::test]
async fn a_transcription_reads_the_whole_upload_and_is_recorded_byte_for_byte() {
    let mock = start_media().await;
    let audio = audio();
    let body = form(&[("file", Some("hello.wav"), &audio), ("model", None, b"whisper")]);
    let url = dated_url(&mock, AUDIO_DEP, "audio/transcriptions");
    let resp = post_form(&url, body.clone()).await;
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "application/json");
    assert_eq!(header(&resp, "x-ms-deployment-name"), AUDIO_DEP);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(
        got,
        json!({"text": format!("Hello from {REGION}. Transcribed {} bytes of hello.wav.", audio.len())})
    );
    let recorded = mock.requests();
    assert_eq!(recorded[0].body, body, "the raw upload is kept");
    assert_eq!(recorded[0].deployment.as_deref(), Some(AUDIO_DEP));

    // v1: the deployment is the form's model.
    let v1 = format!("{}/openai/v1/audio/translations", mock.base_url());
    let resp = post_form(&v1, body).await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.expect("json");
    assert!(got["text"].as_str().expect("text").contains("Translated"));
    assert_eq!(mock.calls(AUDIO_DEP), 2);
}

#[tokio::test]
async fn transcription_formats() {
    let mock = start_media().await;
    let url = dated_url(&mock, AUDIO_DEP, "audio/transcriptions");
    let audio = audio();
    let with = |format: &str| {
        form(&[("file", Some("a.mp3"), &audio), ("response_format", None, format.as_bytes())])
    };
    let resp = post_form(&url, with("text")).await;
    assert_eq!(header(&resp, "content-type"), "text/plain; charset=utf-8");
    let text = resp.text().await.expect("text");
    assert!(text.starts_with(&format!("Hello from {REGION}.")), "{text}");

    let verbose: Value = post_form(&url, with("verbose_json")).await.json().await.expect("json");
    assert_eq!(verbose["task"], "transcribe");
    assert_eq!(verbose["language"], "english");
    assert!(verbose["duration"].as_f64().expect("duration") > 0.0);
    assert_eq!(verbose["segments"][0]["text"], verbose["text"]);

    let srt = post_form(&url, with("srt")).await.text().await.expect("srt");
    assert!(srt.starts_with("1\n00:00:00,000 --> 00:00:0"), "{srt}");
    let vtt = post_form(&url, with("vtt")).await.text().await.expect("vtt");
    assert!(vtt.starts_with("WEBVTT\n\n"), "{vtt}");

    let resp = post_form(&url, with("mp4")).await;
    assert_eq!(resp.status(), 400);
}

#[tokio::test]
async fn malformed_or_incomplete_forms_are_400() {
    let mock = start_media().await;
    let url = dated_url(&mock, AUDIO_DEP, "audio/transcriptions");
    let audio = audio();
    let whole = form(&[("file", Some("a.wav"), &audio)]);
    // Truncated before the closing boundary (what a gateway cutting an upload would send).
    let resp = post_form(&url, whole[..whole.len() / 2].to_vec()).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.expect("body"), media::MALFORMED_FORM);
    // Not multipart at all.
    let resp = client()
        .post(&url)
        .header("api-key", KEY)
        .json(&json!({"file": "x"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.expect("body"), media::MALFORMED_FORM);
    // Well-formed, but no file.
    let resp = post_form(&url, form(&[("model", None, b"whisper")])).await;
    assert_eq!(resp.status(), 400);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["message"], "'file' is a required property");
    // v1 without a model in the form.
    let v1 = format!("{}/openai/v1/audio/transcriptions", mock.base_url());
    let resp = post_form(&v1, whole).await;
    assert_eq!(resp.status(), 400);
    assert_eq!(resp.text().await.expect("body"), modelgw_mock_openai::wire::MISSING_MODEL);
}

#[tokio::test]
async fn faults_apply_to_uploads() {
    let mock = start_media().await;
    let url = dated_url(&mock, AUDIO_DEP, "audio/transcriptions");
    let body = form(&[("file", Some("a.wav"), &audio())]);
    mock.script(
        AUDIO_DEP,
        Fault::Status { status: 503, retry_after: None, retry_after_ms: None, times: 1 },
    );
    let resp = post_form(&url, body.clone()).await;
    assert_eq!(resp.status(), 503);
    let err: Value = resp.json().await.expect("json");
    assert_eq!(err["error"]["type"], "server_error");
    mock.script(AUDIO_DEP, Fault::Reset { times: 1 });
    assert!(
        client()
            .post(&url)
            .header("api-key", KEY)
            .header("content-type", format!("multipart/form-data; boundary={BOUNDARY}"))
            .body(body.clone())
            .send()
            .await
            .is_err(),
        "reset"
    );
    assert_eq!(post_form(&url, body.clone()).await.status(), 200);
    // Both the refused and the served upload arrived whole.
    let recorded = mock.requests();
    assert_eq!(recorded.len(), 3);
    assert!(recorded.iter().all(|r| r.body == body));
}

#[tokio::test]
async fn speech_is_binary_audio_in_several_chunks() {
    let mock = start_media().await;
    let url = format!("{}/openai/v1/audio/speech", mock.base_url());
    let resp = client()
        .post(&url)
        .bearer_auth(KEY)
        .json(&json!({"model": AUDIO_DEP, "input": "hello", "voice": "alloy"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 200);
    assert_eq!(header(&resp, "content-type"), "audio/mpeg");
    assert!(resp.headers().get("content-length").is_none(), "streamed");
    let mut resp = resp;
    let mut bytes = Vec::new();
    let mut reads = 0;
    while let Some(chunk) = resp.chunk().await.expect("chunk") {
        bytes.extend_from_slice(&chunk);
        reads += 1;
    }
    assert_eq!(bytes.len(), media::SPEECH_BYTES);
    assert!(bytes.starts_with(b"ID3"));
    assert!(String::from_utf8_lossy(&bytes).contains(&format!("Spoken in {REGION}.")));
    assert!(reads >= 2, "{reads} reads");

    let wav = client()
        .post(dated_url(&mock, AUDIO_DEP, "audio/speech"))
        .header("api-key", KEY)
        .json(&json!({"input": "hello", "voice": "alloy", "response_format": "wav"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(header(&wav, "content-type"), "audio/wav");
    assert!(wav.bytes().await.expect("body").starts_with(b"RIFF"));

    let missing = client()
        .post(dated_url(&mock, AUDIO_DEP, "audio/speech"))
        .header("api-key", KEY)
        .json(&json!({"input": "hello"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(missing.status(), 400);

    // A cut speech stream ends in an error after the first chunk.
    mock.script(AUDIO_DEP, Fault::StreamCut { after_chunks: 1, times: 1 });
    let mut resp = client()
        .post(&url)
        .bearer_auth(KEY)
        .json(&json!({"model": AUDIO_DEP, "input": "hello", "voice": "alloy"}))
        .send()
        .await
        .expect("resp");
    let mut got = 0;
    let outcome = loop {
        match resp.chunk().await {
            Ok(Some(c)) => got += c.len(),
            Ok(None) => break Ok(()),
            Err(e) => break Err(e),
        }
    };
    assert!(outcome.is_err());
    assert_eq!(got, media::SPEECH_BYTES / media::SPEECH_CHUNKS);
}

#[tokio::test]
async fn image_generations_b64_by_default_and_url_on_request() {
    let mock = start_media().await;
    let url = dated_url(&mock, IMAGE_DEP, "images/generations");
    let resp = client()
        .post(&url)
        .header("api-key", KEY)
        .json(&json!({"prompt": "a cat", "n": 2, "size": "1024x1024"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 200);
    let body: Value = resp.json().await.expect("json");
    assert!(body["created"].as_i64().expect("created") > 1_700_000_000);
    let data = body["data"].as_array().expect("data");
    assert_eq!(data.len(), 2);
    let png = base64::engine::general_purpose::STANDARD
        .decode(data[0]["b64_json"].as_str().expect("b64_json"))
        .expect("base64");
    assert!(png.starts_with(b"\x89PNG\r\n\x1a\n"));
    assert_eq!(data[0]["revised_prompt"], format!("a cat (drawn in {REGION})"));

    let v1 = format!("{}/openai/v1/images/generations", mock.base_url());
    for (dep, format) in [(IMAGE_DEP, Some("url")), (DALLE_DEP, None)] {
        let mut req = json!({"model": dep, "prompt": "a dog"});
        if let Some(f) = format {
            req["response_format"] = json!(f);
        }
        let body: Value = client()
            .post(&v1)
            .header("api-key", KEY)
            .json(&req)
            .send()
            .await
            .expect("resp")
            .json()
            .await
            .expect("json");
        let url = body["data"][0]["url"].as_str().expect("url");
        assert!(url.starts_with("https://mockeastus.blob.core.windows.net/"), "{url}");
        assert!(body["data"][0].get("b64_json").is_none());
    }

    let resp = client()
        .post(&url)
        .header("api-key", KEY)
        .json(&json!({"n": 1}))
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 400);
    mock.script(IMAGE_DEP, Fault::throttled(2, 1));
    let resp = client()
        .post(&url)
        .header("api-key", KEY)
        .json(&json!({"prompt": "a cat"}))
        .send()
        .await
        .expect("resp");
    assert_eq!(resp.status(), 429);
    assert!(resp.text().await.expect("body").contains("ImageGenerations_Create"));
}

#[tokio::test]
async fn image_edits_take_a_multipart_form() {
    let mock = start_media().await;
    let png =
        base64::engine::general_purpose::STANDARD.decode(media::TINY_PNG_BASE64).expect("png");
    let url = format!("{}/openai/v1/images/edits", mock.base_url());
    let body = form(&[
        ("image[]", Some("a.png"), &png),
        ("image[]", Some("b.png"), &png),
        ("prompt", None, b"add a hat"),
        ("model", None, IMAGE_DEP.as_bytes()),
    ]);
    let resp = post_form(&url, body).await;
    assert_eq!(resp.status(), 200);
    let got: Value = resp.json().await.expect("json");
    assert_eq!(got["data"][0]["revised_prompt"], format!("add a hat (drawn in {REGION})"));
    assert_eq!(got["data"][0]["b64_json"], media::TINY_PNG_BASE64);

    let no_image = form(&[("prompt", None, b"x"), ("model", None, IMAGE_DEP.as_bytes())]);
    assert_eq!(post_form(&url, no_image).await.status(), 400);
}

#[tokio::test]
async fn models_are_listed_in_azure_and_openai_shapes() {
    let mock = start_media().await;
    let dated = format!("{}/openai/models?api-version={API_VERSION}", mock.base_url());
    let resp = client().get(&dated).header("api-key", KEY).send().await.expect("resp");
    assert_eq!(resp.status(), 200);
    let azure: Value = resp.json().await.expect("json");
    assert_eq!(azure["object"], "list");
    let ids: Vec<&str> = azure["data"]
        .as_array()
        .expect("data")
        .iter()
        .map(|m| m["id"].as_str().expect("id"))
        .collect();
    assert_eq!(ids, [DEP, AUDIO_DEP, IMAGE_DEP, DALLE_DEP, MODEL]);
    let first = &azure["data"][0];
    assert_eq!(first["object"], "model");
    assert_eq!(first["status"], "succeeded");
    assert_eq!(first["capabilities"]["chat_completion"], true);
    assert!(first["created_at"].is_i64());
    assert!(first.get("lifecycle_status").is_some());

    let v1 = format!("{}/openai/v1/models", mock.base_url());
    let openai: Value =
        client().get(&v1).bearer_auth(KEY).send().await.expect("resp").json().await.expect("json");
    assert_eq!(openai["object"], "list");
    assert_eq!(
        openai["data"][0],
        json!({"id": DEP, "object": "model", "created": openai["data"][0]["created"], "owned_by": "system"})
    );
    assert_eq!(openai["data"].as_array().expect("data").len(), 5);

    let wrong = client().get(&dated).header("api-key", "nope").send().await.expect("resp");
    assert_eq!(wrong.status(), 401);
    let no_version = format!("{}/openai/models", mock.base_url());
    let resp = client().get(&no_version).header("api-key", KEY).send().await.expect("resp");
    assert_eq!(resp.status(), 404);
}

// Multi-threaded: the control API is called with blocking I/O on this test's runtime.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_binary_upload_reads_back_exactly_over_the_control_api() {
    let mock = start_media().await;
    let region =
        modelgw_mock_openai::Region::process("eus", REGION, AUDIO_DEP, KEY, &mock.base_url());
    let audio: Vec<u8> = (0..=255u8).cycle().take(4096).collect();
    let body = form(&[("file", Some("a.wav"), &audio), ("model", None, AUDIO_DEP.as_bytes())]);
    let url = format!("{}/openai/v1/audio/transcriptions", mock.base_url());
    assert_eq!(post_form(&url, body.clone()).await.status(), 200);
    let recorded = region.requests();
    assert_eq!(recorded.len(), 1);
    assert_eq!(recorded[0].body, body, "not UTF-8, still byte for byte");
    assert_eq!(recorded[0].deployment.as_deref(), Some(AUDIO_DEP));
}

//! Images, audio and model-list wire shapes (OpenAI's, as Azure serves them, checked against the
//! `openai` SDK's `types/images_response.py`, `types/audio/*` and `types/model.py`). Pure: no
//! state, no I/O. Every answer names the region, so a test can tell which region served it.

use serde_json::{Value, json};

use crate::multipart::Form;

/// A valid 1×1 transparent PNG, base64: what every generated or edited image is.
pub const TINY_PNG_BASE64: &str = "iVBORw0KGgoAAAANSUhEUgAAAAEAAAABCAYAAAAfFcSJAAAADUlEQVR42mNkYPhfDwAChwGA60e6kgAAAABJRU5ErkJggg==";

/// Most images one request may ask for (`n`), as OpenAI allows.
pub const MAX_IMAGES: u64 = 10;

/// Bytes of a synthesized speech answer: a few KiB, sent in [`SPEECH_CHUNKS`] chunks.
pub const SPEECH_BYTES: usize = 4096;

/// Chunks a speech answer is streamed in.
pub const SPEECH_CHUNKS: usize = 4;

/// The 400 for a body that is not a valid `multipart/form-data` form (OpenAI's wording).
pub const MALFORMED_FORM: &str = r#"{"error":{"message":"Could not parse multipart form","type":"invalid_request_error","param":null,"code":null}}"#;

/// What an image request asked for.
pub struct ImageRequest<'a> {
    pub prompt: &'a str,
    pub n: u64,
    /// `url` (a blob URL) or `b64_json`.
    pub url: bool,
    pub size: Option<&'a str>,
}

impl<'a> ImageRequest<'a> {
    /// Reads a generations body; `Err` is the 400 body. `response_format` defaults to `url` for
    /// DALL·E deployments and `b64_json` for the others (gpt-image-1 only returns base64).
    pub fn from_json(request: &'a Value, deployment: &str) -> Result<ImageRequest<'a>, String> {
        let prompt = request.get("prompt").and_then(Value::as_str);
        let format = request.get("response_format").and_then(Value::as_str);
        let n = request.get("n").and_then(Value::as_u64);
        let size = request.get("size").and_then(Value::as_str);
        ImageRequest::new(prompt, n, format, size, deployment)
    }

    /// Reads an edits form: at least one `image` (or `image[]`) file part and a `prompt`.
    pub fn from_form(form: &'a Form, deployment: &str) -> Result<ImageRequest<'a>, String> {
        if !form.parts.iter().any(|p| p.name == "image" || p.name == "image[]") {
            return Err(crate::wire::invalid_request("'image' is a required property"));
        }
        let n = form.text("n").and_then(|n| n.trim().parse().ok());
        ImageRequest::new(
            form.text("prompt"),
            n,
            form.text("response_format"),
            form.text("size"),
            deployment,
        )
    }

    fn new(
        prompt: Option<&'a str>,
        n: Option<u64>,
        format: Option<&str>,
        size: Option<&'a str>,
        deployment: &str,
    ) -> Result<ImageRequest<'a>, String> {
        let prompt = prompt
            .filter(|p| !p.is_empty())
            .ok_or_else(|| crate::wire::invalid_request("'prompt' is a required property"))?;
        let n = n.unwrap_or(1);
        if !(1..=MAX_IMAGES).contains(&n) {
            return Err(crate::wire::invalid_request(&format!(
                "{n} is not a valid value for 'n': it must be between 1 and {MAX_IMAGES}."
            )));
        }
        let url = match format {
            Some("url") => true,
            Some("b64_json") => false,
            Some(other) => {
                return Err(crate::wire::invalid_request(&format!(
                    "'{other}' is not one of ['url', 'b64_json'] - 'response_format'"
                )));
            }
            None => deployment.contains("dall-e"),
        };
        Ok(ImageRequest { prompt, n, url, size })
    }

    /// The images answer: `n` items, each a base64 PNG or a blob URL, with the prompt as revised
    /// by "the region".
    pub fn answer(&self, region: &str, created: i64, id: &mut dyn FnMut() -> String) -> String {
        let slug: String =
            region.chars().filter(char::is_ascii_alphanumeric).collect::<String>().to_lowercase();
        let data: Vec<Value> = (0..self.n)
            .map(|i| {
                let revised = format!("{} (drawn in {region})", self.prompt);
                let mut item = json!({
                    "revised_prompt": revised,
                    "content_filter_results": {
                        "hate": {"filtered": false, "severity": "safe"},
                        "self_harm": {"filtered": false, "severity": "safe"},
                        "sexual": {"filtered": false, "severity": "safe"},
                        "violence": {"filtered": false, "severity": "safe"},
                    },
                    "prompt_filter_results": {
                        "hate": {"filtered": false, "severity": "safe"},
                        "jailbreak": {"filtered": false, "detected": false},
                        "self_harm": {"filtered": false, "severity": "safe"},
                        "sexual": {"filtered": false, "severity": "safe"},
                        "violence": {"filtered": false, "severity": "safe"},
                    },
                });
                if self.url {
                    item["url"] = json!(format!(
                        "https://mock{slug}.blob.core.windows.net/private/images/{}/generated_{i:02}.png?se=2099-01-01T00%3A00%3A00Z&sig=mock",
                        id()
                    ));
                } else {
                    item["b64_json"] = json!(TINY_PNG_BASE64);
                }
                item
            })
            .collect();
        let mut body = json!({"created": created, "data": data});
        if let Some(size) = self.size {
            body["size"] = json!(size);
        }
        body.to_string()
    }
}

/// Transcription or translation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum AudioTask {
    Transcribe,
    Translate,
}

/// An audio answer: its content type and body.
pub struct AudioAnswer {
    pub content_type: &'static str,
    pub body: String,
}

/// Answers a transcription/translation form (`file` required; `response_format` `json`
/// (default), `text`, `verbose_json`, `srt` or `vtt`); `Err` is the 400 body. The text names the
/// region, the file and how many bytes arrived, so a test sees the upload was whole.
pub fn audio_text(form: &Form, task: AudioTask, region: &str) -> Result<AudioAnswer, String> {
    let file = form
        .part("file")
        .filter(|p| p.filename.is_some())
        .ok_or_else(|| crate::wire::invalid_request("'file' is a required property"))?;
    let filename = file.filename.as_deref().unwrap_or("audio");
    let verb = match task {
        AudioTask::Transcribe => "Transcribed",
        AudioTask::Translate => "Translated",
    };
    let text = format!("Hello from {region}. {verb} {} bytes of {filename}.", file.data.len());
    let duration = 1.0 + file.data.len() as f64 / 16_000.0;
    let language = match task {
        AudioTask::Transcribe => form.text("language").unwrap_or("english"),
        AudioTask::Translate => "english",
    };
    let end = format!("00:00:{:06.3}", duration.min(59.0));
    match form.text("response_format").unwrap_or("json") {
        "json" => Ok(AudioAnswer {
            content_type: "application/json",
            body: json!({"text": text}).to_string(),
        }),
        "text" => Ok(AudioAnswer { content_type: "text/plain; charset=utf-8", body: text }),
        "verbose_json" => {
            let task = match task {
                AudioTask::Transcribe => "transcribe",
                AudioTask::Translate => "translate",
            };
            Ok(AudioAnswer {
                content_type: "application/json",
                body: json!({
                    "task": task,
                    "language": language,
                    "duration": duration,
                    "text": text,
                    "segments": [{
                        "id": 0, "seek": 0, "start": 0.0, "end": duration, "text": text,
                        "tokens": [50364, 2425, 490], "temperature": 0.0, "avg_logprob": -0.2,
                        "compression_ratio": 1.0, "no_speech_prob": 0.01,
                    }],
                })
                .to_string(),
            })
        }
        "srt" => Ok(AudioAnswer {
            content_type: "text/plain; charset=utf-8",
            body: format!("1\n00:00:00,000 --> {}\n{text}\n\n", end.replace('.', ",")),
        }),
        "vtt" => Ok(AudioAnswer {
            content_type: "text/plain; charset=utf-8",
            body: format!("WEBVTT\n\n00:00:00.000 --> {end}\n{text}\n\n"),
        }),
        other => Err(crate::wire::invalid_request(&format!(
            "'{other}' is not one of ['json', 'text', 'srt', 'verbose_json', 'vtt'] - 'response_format'"
        ))),
    }
}

/// Reads a speech request (`input` and `voice` required, `response_format` `mp3` default):
/// the content type, or the 400 body.
pub fn speech_format(request: &Value) -> Result<&'static str, String> {
    for field in ["input", "voice"] {
        if request.get(field).and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(crate::wire::invalid_request(&format!("'{field}' is a required property")));
        }
    }
    match request.get("response_format").and_then(Value::as_str).unwrap_or("mp3") {
        "mp3" => Ok("audio/mpeg"),
        "opus" => Ok("audio/opus"),
        "aac" => Ok("audio/aac"),
        "flac" => Ok("audio/flac"),
        "wav" => Ok("audio/wav"),
        "pcm" => Ok("audio/pcm"),
        other => Err(crate::wire::invalid_request(&format!(
            "'{other}' is not one of ['mp3', 'opus', 'aac', 'flac', 'wav', 'pcm'] - 'response_format'"
        ))),
    }
}

/// [`SPEECH_BYTES`] of "audio" in [`SPEECH_CHUNKS`] chunks: the format's magic bytes, then a
/// text naming the region, then a deterministic filler. Not playable; byte-exact across runs.
pub fn speech_chunks(content_type: &str, region: &str) -> Vec<Vec<u8>> {
    let magic: &[u8] = match content_type {
        "audio/mpeg" => b"ID3\x04\x00\x00\x00\x00\x00\x00",
        "audio/opus" => b"OggS\x00\x02",
        "audio/flac" => b"fLaC",
        "audio/wav" => b"RIFF\xf8\x0f\x00\x00WAVEfmt ",
        "audio/aac" => b"\xff\xf1",
        _ => b"",
    };
    let mut bytes = magic.to_vec();
    bytes.extend_from_slice(format!("Spoken in {region}. ").as_bytes());
    let mut x: u32 = 0x2545_f491;
    while bytes.len() < SPEECH_BYTES {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        bytes.push(x.to_le_bytes()[0]);
    }
    bytes.chunks(SPEECH_BYTES / SPEECH_CHUNKS).map(<[u8]>::to_vec).collect()
}

/// `GET /openai/models?api-version=…` in Azure's shape: the region's model and deployments as
/// models it can serve, with Azure's `capabilities`, `lifecycle_status` and `deprecation`.
pub fn azure_models(model: &str, deployments: &[String], created: i64) -> String {
    let data: Vec<Value> = model_ids(model, deployments)
        .into_iter()
        .map(|id| {
            let embeddings = id.contains("embedding");
            let chat = !embeddings
                && !["dall-e", "whisper", "tts", "image"].iter().any(|k| id.contains(k));
            json!({
                "status": "succeeded",
                "capabilities": {
                    "fine_tune": false,
                    "inference": true,
                    "completion": false,
                    "chat_completion": chat,
                    "embeddings": embeddings,
                },
                "lifecycle_status": "generally-available",
                "deprecation": {"inference": 4_102_444_800_i64},
                "id": id,
                "created_at": created,
                "object": "model",
            })
        })
        .collect();
    json!({"data": data, "object": "list"}).to_string()
}

/// `GET /openai/v1/models` in OpenAI's shape (`id`, `object`, `created`, `owned_by`).
pub fn openai_models(model: &str, deployments: &[String], created: i64) -> String {
    let data: Vec<Value> = model_ids(model, deployments)
        .into_iter()
        .map(|id| json!({"id": id, "object": "model", "created": created, "owned_by": "system"}))
        .collect();
    json!({"object": "list", "data": data}).to_string()
}

/// The deployments (what clients name as `model` on this region), then the model they report.
fn model_ids<'a>(model: &'a str, deployments: &'a [String]) -> Vec<&'a str> {
    let mut ids: Vec<&str> = deployments.iter().map(String::as_str).collect();
    if !ids.contains(&model) {
        ids.push(model);
    }
    ids
}

#[cfg(test)]
mod tests {
    use base64::Engine as _;

    use super::*;

    #[test]
    fn the_png_is_a_png() {
        let bytes = base64::engine::general_purpose::STANDARD.decode(TINY_PNG_BASE64).expect("b64");
        assert_eq!(&bytes[..8], b"\x89PNG\r\n\x1a\n");
        assert_eq!(&bytes[bytes.len() - 8..bytes.len() - 4], b"IEND");
    }

    #[test]
    fn speech_is_a_few_kib_in_several_chunks() {
        let chunks = speech_chunks("audio/mpeg", "East US");
        assert_eq!(chunks.len(), SPEECH_CHUNKS);
        assert_eq!(chunks.iter().map(Vec::len).sum::<usize>(), SPEECH_BYTES);
        assert!(chunks[0].starts_with(b"ID3"));
        assert_eq!(chunks, speech_chunks("audio/mpeg", "East US"));
    }
}

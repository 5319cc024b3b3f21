//! What a request reserves at admission: its prompt estimated as body bytes / 4 (rounded up)
//! and the most completion tokens it may cause (`max_completion_tokens`, else `max_tokens`,
//! else `max_output_tokens`, else the gateway's default; times `n` choices).
//!
//! Why bytes / 4 and not a tokenizer: it costs nothing on the request path and needs no
//! per-model vocabulary, and for the bodies that reach a chat endpoint it errs on the safe
//! side — the JSON around the text (keys, quotes, escapes) adds bytes the prompt does not
//! count. `tests/estimate.rs` measures it against o200k_base (GPT-4o's tokenizer) on English,
//! code, JSON and CJK; ARCHITECTURE.md ("Key limits") has the numbers.

use modelgw_model::keys::{KeyLimitPolicy, Usage};

use crate::proxy::operations::Operation;

/// Largest `n` believed for a reservation: Azure accepts at most 128 choices.
const MAX_CHOICES: u64 = 128;

/// The completion caps a request body sets (each `None` when absent or not a whole number).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(crate) struct OutputCap {
    pub max_completion_tokens: Option<u64>,
    pub max_tokens: Option<u64>,
    /// The Responses API's cap.
    pub max_output_tokens: Option<u64>,
    /// Choices per request (chat, completions).
    pub n: Option<u64>,
}

impl OutputCap {
    /// The completion tokens the body allows, when it says.
    fn completion(&self) -> Option<u64> {
        self.max_completion_tokens.or(self.max_tokens).or(self.max_output_tokens)
    }
}

/// The reservation of a request for `operation` with a `body_len`-byte body.
pub(crate) fn reservation(
    operation: Operation,
    body_len: usize,
    cap: &OutputCap,
    policy: &KeyLimitPolicy,
) -> Usage {
    let prompt = (body_len as u64).div_ceil(4);
    match operation {
        Operation::ChatCompletions | Operation::Completions | Operation::Responses => {
            let each = cap.completion().unwrap_or_else(|| policy.completion_reservation());
            let choices = cap.n.unwrap_or(1).clamp(1, MAX_CHOICES);
            Usage::request(prompt, each.saturating_mul(choices))
        }
        Operation::Embeddings => Usage::request(prompt, 0),
        // Images, audio (multipart bodies: bytes are not text), the model list and the calls
        // on stored responses (they generate nothing) are counted as requests; tokens only
        // when their answer reports usage.
        Operation::ImageGenerations
        | Operation::ImageEdits
        | Operation::AudioTranscriptions
        | Operation::AudioTranslations
        | Operation::AudioSpeech
        | Operation::Models
        | Operation::ResponsesRetrieve
        | Operation::ResponsesDelete
        | Operation::ResponsesCancel
        | Operation::ResponsesInputItems => Usage::request(0, 0),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chat_reserves_its_prompt_estimate_and_its_completion_cap() {
        let policy = KeyLimitPolicy::default();
        let chat = |cap: OutputCap| reservation(Operation::ChatCompletions, 401, &cap, &policy);
        assert_eq!(chat(OutputCap::default()), Usage::request(101, 1_024));
        let cap = OutputCap {
            max_tokens: Some(50),
            max_completion_tokens: Some(70),
            ..OutputCap::default()
        };
        assert_eq!(chat(cap), Usage::request(101, 70), "max_completion_tokens first");
        let cap = OutputCap { max_tokens: Some(50), n: Some(3), ..OutputCap::default() };
        assert_eq!(chat(cap), Usage::request(101, 150), "n choices");
        let custom = KeyLimitPolicy { default_completion_tokens: Some(256), fail_closed: false };
        let none = OutputCap::default();
        assert_eq!(reservation(Operation::Responses, 8, &none, &custom), Usage::request(2, 256));
        assert_eq!(reservation(Operation::Embeddings, 8, &none, &policy), Usage::request(2, 0));
        assert_eq!(
            reservation(Operation::AudioTranscriptions, 1 << 20, &none, &policy),
            Usage::request(0, 0)
        );
        assert_eq!(
            reservation(Operation::ResponsesRetrieve, 0, &none, &policy),
            Usage::request(0, 0),
            "a stored response's calls generate nothing"
        );
    }
}

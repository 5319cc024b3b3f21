#![allow(clippy::unwrap_used, clippy::expect_used, clippy::print_stdout)]
//! The key limits reserve a request's prompt as its body's bytes / 4 (rounded up). How far
//! is that from what the model counts? Measured here against o200k_base (the tokenizer of
//! GPT-4o, GPT-4.1, o-series) on a small corpus of English prose, source code, JSON data,
//! Chinese and Japanese: for the text alone, and for the chat request body a client sends
//! with that text as its one message (what the gateway actually estimates from), against the
//! prompt tokens the model bills for it (text + 7: OpenAI's per-message framing).
//!
//! The test prints the ratios (estimate / real; below 1 the estimate is short and a request
//! may use more than it reserved) and asserts the bounds ARCHITECTURE.md states ("Key
//! limits"), per chat body: estimate ≥ 1.2 × real for English prose, ≥ 0.9 × for code,
//! ≥ 0.85 × for Chinese and Japanese, ≥ 0.75 × for JSON data (ids, numbers and dates are
//! dense in tokens) — so never below 0.75 × on this corpus.

use tiktoken_rs::o200k_base;

const ENGLISH: &str = "The committee met on a grey Tuesday morning to review the quarterly figures, and the mood in the room was cautious rather than gloomy. Sales in the northern region had fallen for the second quarter in a row, largely because two large customers had delayed their orders until the new warehouse opened. The finance director pointed out that the delay was a matter of timing, not of demand, and that the order book for the next six months was the strongest it had been in three years. Several members asked whether the company should hire more staff before the warehouse opened, or wait until the new orders actually arrived. After a long discussion they agreed to hire a small team now, train them during the summer, and review the decision again in September. The chair closed the meeting by thanking everyone for their patience and reminding them that the annual report was due at the printers by the end of the month, which left very little time for further changes.";

const CODE: &str = r#"use std::collections::HashMap;

/// Counts how often each word occurs in `text`, ignoring case and punctuation.
pub fn word_counts(text: &str) -> HashMap<String, usize> {
    let mut counts = HashMap::new();
    for word in text
        .split(|c: char| !c.is_alphanumeric())
        .filter(|w| !w.is_empty())
        .map(str::to_lowercase)
    {
        *counts.entry(word).or_insert(0) += 1;
    }
    counts
}

def top_words(counts: dict[str, int], n: int = 10) -> list[tuple[str, int]]:
    """Return the n most frequent words, most frequent first."""
    return sorted(counts.items(), key=lambda kv: (-kv[1], kv[0]))[:n]

if __name__ == "__main__":
    import sys
    text = open(sys.argv[1], encoding="utf-8").read()
    for word, count in top_words(dict(word_counts(text))):
        print(f"{word:>20} {count:6d}")
"#;

const JSON_DATA: &str = r#"{"orders":[{"id":"ord_8f3a2c","customer":{"id":48213,"name":"Acme Logistics GmbH","country":"DE"},"created_at":"2026-11-28T09:14:53Z","status":"shipped","items":[{"sku":"WX-1042","qty":12,"unit_price":19.95},{"sku":"WX-2210","qty":3,"unit_price":149.0}],"total":686.4,"currency":"EUR"},{"id":"ord_91bd07","customer":{"id":50877,"name":"Blue Harbor Foods","country":"US"},"created_at":"2026-11-29T16:02:11Z","status":"pending","items":[{"sku":"FD-0007","qty":40,"unit_price":4.25}],"total":170.0,"currency":"USD"},{"id":"ord_a0c415","customer":{"id":12094,"name":"Kestrel Outdoor","country":"GB"},"created_at":"2026-11-30T11:47:38Z","status":"cancelled","items":[{"sku":"KT-5531","qty":1,"unit_price":899.99},{"sku":"KT-5532","qty":2,"unit_price":59.5}],"total":1018.99,"currency":"GBP"}],"page":{"next":"eyJvZmZzZXQiOjMwfQ==","size":3}}"#;

const CHINESE: &str = "委员会在一个阴沉的星期二早上开会，审查季度数据，会议室里的气氛与其说是悲观，不如说是谨慎。北方地区的销售额连续第二个季度下降，主要原因是两个大客户推迟了订单，要等新仓库开业后再下单。财务总监指出，这种推迟只是时间问题，而不是需求问题，未来六个月的订单是三年来最强劲的。几位成员问公司是否应该在仓库开业前招聘更多员工，还是等新订单真正到来后再说。经过长时间讨论，他们同意现在招聘一个小团队，在夏季进行培训，并在九月再次审查这一决定。";

const JAPANESE: &str = "委員会は灰色の火曜日の朝に集まり、四半期の数字を検討した。部屋の雰囲気は悲観的というより慎重だった。北部地域の売上は二四半期連続で減少したが、その主な理由は二つの大口顧客が新しい倉庫の開業まで注文を延期したことだった。財務責任者は、この遅れは需要の問題ではなくタイミングの問題であり、今後六か月の受注残はこの三年間で最も強いと指摘した。長い議論の末、彼らは今すぐ小さなチームを採用し、夏の間に訓練し、九月にもう一度判断を見直すことに合意した。";

/// One sample's numbers.
struct Measured {
    name: &'static str,
    text_ratio: f64,
    body_ratio: f64,
}

fn estimate(bytes: usize) -> usize {
    bytes.div_ceil(4)
}

#[test]
fn the_bytes_over_four_estimate_against_o200k_base() {
    let bpe = o200k_base().expect("o200k_base ships with the crate");
    let tokens = |text: &str| bpe.encode_with_special_tokens(text).len();
    let samples = [
        ("English prose", ENGLISH),
        ("Rust + Python code", CODE),
        ("JSON data", JSON_DATA),
        ("Chinese", CHINESE),
        ("Japanese", JAPANESE),
    ];
    println!(
        "{:<20} {:>6} {:>7} {:>8} {:>10} | {:>9} {:>8} {:>8} {:>10}",
        "sample", "bytes", "tokens", "bytes/4", "est/real", "body", "billed", "bytes/4", "est/real"
    );
    let mut measured = Vec::new();
    for (name, text) in samples {
        let real = tokens(text);
        let text_ratio = estimate(text.len()) as f64 / real as f64;
        // The request a client sends with the text as its one message (serde_json, like the
        // SDKs, writes non-ASCII as UTF-8 and escapes quotes, backslashes and line ends).
        let body = serde_json::json!({
            "model": "auto",
            "messages": [{"role": "user", "content": text}],
        })
        .to_string();
        // What the model bills: 3 per message, 1 for the role, the content, 3 to prime the
        // reply.
        let billed = real + 7;
        let body_ratio = estimate(body.len()) as f64 / billed as f64;
        println!(
            "{name:<20} {:>6} {real:>7} {:>8} {text_ratio:>10.2} | {:>9} {billed:>8} {:>8} {body_ratio:>10.2}",
            text.len(),
            estimate(text.len()),
            body.len(),
            estimate(body.len()),
        );
        measured.push(Measured { name, text_ratio, body_ratio });
    }
    let floor = |name: &str| match name {
        "English prose" => 1.2,
        "Rust + Python code" => 0.9,
        "JSON data" => 0.75,
        _ => 0.85,
    };
    for m in &measured {
        assert!(
            m.body_ratio >= floor(m.name),
            "{}: the estimate of a chat body is {:.2} × the billed prompt, the documented floor {:.2}",
            m.name,
            m.body_ratio,
            floor(m.name)
        );
        assert!(m.text_ratio > 0.0);
    }
}

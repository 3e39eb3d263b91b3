//! A fuzz target of everything a try's output goes through before it is stored: the line
//! splitter (chunks of arbitrary bytes), the protocol parser and the masker
//! ([`stevedore_domain::protocol::read_line`]), driven by proptest for a bounded time
//! (`STEVEDORE_FUZZ_SECONDS`, 5 s by default; `scripts/test.sh` gives it 60).
//!
//! The output mixes random bytes with connection values in every form a program prints
//! them: raw, in a JSON `log` message, as an output or state value, JSON-escaped (also
//! ASCII-only, as Python writes it), URL-encoded, base64 (both alphabets, at any alignment
//! inside a longer base64 text), and a multi-line value line by line. Checked: nothing
//! panics; no stored text, output or state holds a value in any of those forms, each
//! checked by decoding what was stored (every base64 run at every alignment, every percent
//! escape) rather than by the masker's own list; no stored line is longer than the limit.

use std::time::{Duration, Instant};

use base64::Engine;
use chrono::Utc;
use proptest::prelude::*;
use proptest::test_runner::{Config, TestCaseError, TestRunner};
use serde_json::json;
use stevedore_domain::mask::{Masker, MIN_ENCODED_LEN};
use stevedore_domain::protocol::{read_line, Message, TryLimits};

use crate::lines::LineSplitter;
use crate::Stream;

/// A secret: 6 to 24 characters, quotes, backslashes, spaces, `%`, `+`, `/` and non-ASCII
/// ones included; sometimes several lines.
fn secret() -> impl Strategy<Value = String> {
    let single = || proptest::string::string_regex(r#"[A-Za-z0-9 "\\%+/=:@é€😀_-]{6,24}"#).unwrap();
    prop_oneof![
        4 => single(),
        1 => proptest::collection::vec(single(), 2..4).prop_map(|lines| lines.join("\n")),
    ]
}

/// One piece of a try's output.
#[derive(Clone, Debug)]
enum Piece {
    Bytes(Vec<u8>),
    Raw(usize),
    LogMessage(usize),
    Output(usize),
    State(usize),
    JsonEscaped(usize, bool),
    UrlEncoded(usize, bool),
    Base64 {
        secret: usize,
        prefix: Vec<u8>,
        url_safe: bool,
    },
    LineByLine(usize),
}

fn piece() -> impl Strategy<Value = Piece> {
    let index = 0usize..4;
    prop_oneof![
        3 => proptest::collection::vec(any::<u8>(), 0..200).prop_map(Piece::Bytes),
        1 => index.clone().prop_map(Piece::Raw),
        1 => index.clone().prop_map(Piece::LogMessage),
        1 => index.clone().prop_map(Piece::Output),
        1 => index.clone().prop_map(Piece::State),
        1 => (index.clone(), any::<bool>()).prop_map(|(i, a)| Piece::JsonEscaped(i, a)),
        1 => (index.clone(), any::<bool>()).prop_map(|(i, f)| Piece::UrlEncoded(i, f)),
        1 => (index.clone(), proptest::collection::vec(any::<u8>(), 0..7), any::<bool>())
            .prop_map(|(secret, prefix, url_safe)| Piece::Base64 { secret, prefix, url_safe }),
        1 => index.prop_map(Piece::LineByLine),
    ]
}

fn percent(value: &str, form: bool) -> String {
    value
        .bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            b' ' if form => "+".to_owned(),
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn ascii_json(value: &str) -> String {
    serde_json::to_string(value)
        .unwrap()
        .chars()
        .map(|c| {
            if c.is_ascii() {
                c.to_string()
            } else {
                let mut units = [0u16; 2];
                c.encode_utf16(&mut units)
                    .iter()
                    .map(|u| format!("\\u{u:04x}"))
                    .collect()
            }
        })
        .collect()
}

/// The bytes a piece prints (each protocol message on a line of its own).
fn render(piece: &Piece, secrets: &[String]) -> Vec<u8> {
    let of = |i: &usize| secrets[i % secrets.len()].as_str();
    let text = match piece {
        Piece::Bytes(bytes) => return bytes.clone(),
        Piece::Raw(i) => format!(" {} ", of(i)),
        Piece::LogMessage(i) => format!(
            "\n{}\n",
            json!({"type": "log", "level": "info", "message": format!("m {}", of(i))})
        ),
        Piece::Output(i) => format!(
            "\n{}\n",
            json!({"type": "output", "key": format!("k{i}"), "value": {"v": [of(i)]}})
        ),
        Piece::State(i) => format!("\n{}\n", json!({"type": "state", "value": of(i)})),
        Piece::JsonEscaped(i, ascii) => {
            if *ascii {
                ascii_json(of(i))
            } else {
                serde_json::to_string(of(i)).unwrap()
            }
        }
        Piece::UrlEncoded(i, form) => format!("?q={}&", percent(of(i), *form)),
        Piece::Base64 {
            secret,
            prefix,
            url_safe,
        } => {
            let mut bytes = prefix.clone();
            bytes.extend_from_slice(of(secret).as_bytes());
            bytes.extend_from_slice(b"tail");
            let engine = if *url_safe {
                &base64::engine::general_purpose::URL_SAFE
            } else {
                &base64::engine::general_purpose::STANDARD
            };
            format!(" {} ", engine.encode(bytes))
        }
        Piece::LineByLine(i) => format!("\n{}\n", of(i).replace('\n', "\n> ")),
    };
    text.into_bytes()
}

/// Everything that is kept of the output: stored texts, and outputs and state as JSON.
fn kept(
    secrets: &[String],
    chunks: &[Vec<u8>],
    limits: &TryLimits,
) -> Result<Vec<String>, TestCaseError> {
    let masker = Masker::new(secrets);
    let mut splitter = LineSplitter::new(limits.line_buffer_bytes());
    let mut lines = Vec::new();
    let now = Utc::now();
    for chunk in chunks {
        splitter.push(Stream::Stdout, now, chunk, &mut |_, _, text, dropped| {
            lines.push((text, dropped))
        });
    }
    splitter.finish(&mut |_, _, text, dropped| lines.push((text, dropped)));
    let mut kept = Vec::new();
    for (text, dropped) in lines {
        let read = read_line(true, &text, dropped, &masker, limits);
        prop_assert!(
            read.text.len() <= limits.max_line_bytes + 100,
            "a stored line of {} bytes",
            read.text.len()
        );
        kept.push(read.text);
        match read.message {
            Some(Message::Output { key, value }) => kept.push(json!({key: value}).to_string()),
            Some(Message::State { value }) => kept.push(value.to_string()),
            _ => {}
        }
    }
    Ok(kept)
}

/// Every string `text` decodes to: itself, its percent escapes decoded (with and without
/// `+` for space), and each run of base64 characters decoded at each alignment.
fn decodings(text: &str) -> Vec<String> {
    let mut out = vec![text.to_owned()];
    for form in [false, true] {
        let mut bytes = Vec::new();
        let raw = text.as_bytes();
        let mut i = 0;
        while i < raw.len() {
            match raw[i] {
                b'%' if i + 2 < raw.len()
                    && raw[i + 1].is_ascii_hexdigit()
                    && raw[i + 2].is_ascii_hexdigit() =>
                {
                    let hex = std::str::from_utf8(&raw[i + 1..i + 3]).unwrap_or("00");
                    bytes.push(u8::from_str_radix(hex, 16).unwrap_or(0));
                    i += 3;
                    continue;
                }
                b'+' if form => bytes.push(b' '),
                other => bytes.push(other),
            }
            i += 1;
        }
        out.push(String::from_utf8_lossy(&bytes).into_owned());
    }
    for url_safe in [false, true] {
        let is_char = |c: char| {
            c.is_ascii_alphanumeric()
                || if url_safe {
                    c == '-' || c == '_'
                } else {
                    c == '+' || c == '/'
                }
        };
        for run in text.split(|c: char| !is_char(c)).filter(|r| r.len() >= 4) {
            for start in 0..4.min(run.len()) {
                let part = &run[start..];
                let usable = part.len() - part.len() % 4;
                for end in [usable, usable.saturating_sub(4)] {
                    let engine = if url_safe {
                        &base64::engine::general_purpose::URL_SAFE_NO_PAD
                    } else {
                        &base64::engine::general_purpose::STANDARD_NO_PAD
                    };
                    if let Ok(bytes) = engine.decode(&part[..end]) {
                        out.push(String::from_utf8_lossy(&bytes).into_owned());
                    }
                }
            }
        }
    }
    out
}

/// The forms of `secret` that must never be kept, each as a test of what was kept.
fn leaks(secret: &str, kept: &str) -> Option<String> {
    let mut forms = vec![secret.to_owned()];
    if secret.chars().count() >= MIN_ENCODED_LEN {
        forms.push(
            serde_json::to_string(secret)
                .unwrap()
                .trim_matches('"')
                .to_owned(),
        );
        forms.push(ascii_json(secret).trim_matches('"').to_owned());
        forms.extend(
            secret
                .lines()
                .filter(|l| l.chars().count() >= MIN_ENCODED_LEN)
                .map(str::to_owned),
        );
    }
    for decoded in decodings(kept) {
        for form in &forms {
            if decoded.contains(form.as_str()) && (decoded == kept || form == secret) {
                return Some(format!("{form:?} in {decoded:?} (from {kept:?})"));
            }
        }
    }
    None
}

#[test]
fn output_through_splitter_parser_and_masker_never_keeps_a_secret() {
    let seconds: u64 = std::env::var("STEVEDORE_FUZZ_SECONDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(5);
    let strategy = (
        proptest::collection::vec(secret(), 1..4),
        proptest::collection::vec(piece(), 1..24),
        proptest::collection::vec(1usize..64, 1..8),
        any::<bool>(),
    );
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut cases = 0u64;
    while Instant::now() < deadline {
        // A runner runs its cases once: a new one (a new random seed) each round.
        let mut runner = TestRunner::new(Config {
            cases: 64,
            failure_persistence: None,
            ..Config::default()
        });
        let result = runner.run(&strategy, |(secrets, pieces, cuts, small)| {
            // Small limits make cut lines and oversized values common.
            let limits = if small {
                TryLimits {
                    max_line_bytes: 256,
                    max_output_bytes: 128,
                    max_outputs: 1000,
                }
            } else {
                TryLimits::default()
            };
            let bytes: Vec<u8> = pieces.iter().flat_map(|p| render(p, &secrets)).collect();
            // Chunks of varying sizes, as an engine or a pipe delivers them.
            let mut chunks = Vec::new();
            let mut at = 0;
            for size in cuts.iter().cycle() {
                if at >= bytes.len() {
                    break;
                }
                let end = (at + size * 7).min(bytes.len());
                chunks.push(bytes[at..end].to_vec());
                at = end;
            }
            for text in kept(&secrets, &chunks, &limits)? {
                for secret in &secrets {
                    if let Some(leak) = leaks(secret, &text) {
                        return Err(TestCaseError::fail(leak));
                    }
                }
            }
            Ok(())
        });
        if let Err(error) = result {
            panic!("{error}");
        }
        cases += 64;
    }
    eprintln!("fuzzed {cases} cases in {seconds} s");
}

#[test]
fn a_value_split_across_chunks_is_masked_whole() {
    let secret = "p@ss\"w0rd-é".to_owned();
    let line =
        json!({"type": "log", "level": "info", "message": secret.clone()}).to_string() + "\n";
    let chunks: Vec<Vec<u8>> = line.as_bytes().chunks(3).map(<[u8]>::to_vec).collect();
    let kept = kept(&[secret.clone()], &chunks, &TryLimits::default()).unwrap();
    assert_eq!(kept, vec!["info: ***".to_owned()]);
}

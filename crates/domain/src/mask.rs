//! Masking secret values out of everything a try prints: log lines, protocol messages,
//! outputs and state.
//!
//! A try knows its connection values, so it can print them in any form. [`Masker`] hides
//! each value of [`MIN_MASKED_LEN`] characters or more (shorter ones would hide more than
//! they protect) as `***`, and for each value of [`MIN_ENCODED_LEN`] or more also the forms a
//! program commonly prints it in, as GitHub Actions' runner masks its secrets' encodings
//! (`src/Runner.Common/SecretMasker` and `ValueEncoders.cs` in actions/runner):
//!
//! - each line of a multi-line value (a PEM key printed line by line);
//! - JSON string escaping (`\"`, `\\`, `\n`, and `\uXXXX` for every non-ASCII character, as
//!   Python's `json.dumps` writes by default);
//! - URL encoding (`%XX`, and `+` for spaces as in forms);
//! - base64, standard and URL-safe alphabets, at each of the three alignments a value can
//!   have inside a longer base64 text (`user:password` in a Basic auth header): only the
//!   characters that depend on the value's bytes alone are matched, so the value is found
//!   wherever it sits.
//!
//! A value that is a JSON object or list (a wrapped connector's `CONFIG_JSON`) is masked
//! whole, and each string in it under a key that names a secret (ending in `password`,
//! `secret`, `token`, `_key`, `apikey`, `credentials`, `passphrase`, or `key` itself; and
//! everything below such a key) is masked on its own, so a connector that prints its token
//! alone does not print it.
//!
//! Matching is one pass of an Aho-Corasick automaton over all forms of all values; where
//! matches overlap, their union is masked. Masking is applied to the raw line and again to
//! the decoded text of a protocol message, so a value escaped in JSON is caught either way.

use aho_corasick::{AhoCorasick, AhoCorasickBuilder, MatchKind};
use base64::Engine;
use serde_json::Value;

/// Values shorter than this are not masked at all.
pub const MIN_MASKED_LEN: usize = 4;
/// Values shorter than this are masked as they are, not in their encodings (the encoded
/// forms of a short value are short and common).
pub const MIN_ENCODED_LEN: usize = 6;
/// What a masked value becomes.
pub const MASK: &str = "***";

/// Whether a config key names a secret (`bearer_token`, `client_secret`, `X-API-KEY`).
fn names_a_secret(key: &str) -> bool {
    let key = key.to_ascii_lowercase().replace('-', "_");
    key == "key"
        || [
            "password",
            "passwd",
            "secret",
            "token",
            "_key",
            "apikey",
            "credentials",
            "passphrase",
        ]
        .iter()
        .any(|end| key.ends_with(end))
}

/// The strings of `value` under a key that names a secret (`inside`: below one already).
fn secret_leaves(value: &Value, inside: bool, out: &mut Vec<String>) {
    match value {
        Value::String(text) if inside => out.push(text.clone()),
        Value::Object(map) => {
            for (key, child) in map {
                secret_leaves(child, inside || names_a_secret(key), out);
            }
        }
        Value::Array(items) => {
            for item in items {
                secret_leaves(item, inside, out);
            }
        }
        _ => {}
    }
}

/// Hides a set of secret values, in the forms listed in the module doc.
#[derive(Clone, Default)]
pub struct Masker {
    automaton: Option<AhoCorasick>,
    /// The forms matched, for tests and the fuzz target.
    forms: Vec<String>,
}

impl std::fmt::Debug for Masker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Masker({} forms)", self.forms.len())
    }
}

impl Masker {
    /// A masker of `values` (connection values, registry passwords).
    pub fn new<I, S>(values: I) -> Masker
    where
        I: IntoIterator<Item = S>,
        S: AsRef<str>,
    {
        let mut forms: Vec<String> = Vec::new();
        for value in values {
            let value = value.as_ref();
            add_forms(value, &mut forms);
            let trimmed = value.trim_start();
            if trimmed.starts_with('{') || trimmed.starts_with('[') {
                if let Ok(json) = serde_json::from_str::<Value>(trimmed) {
                    let mut leaves = Vec::new();
                    secret_leaves(&json, false, &mut leaves);
                    for leaf in leaves {
                        add_forms(&leaf, &mut forms);
                    }
                }
            }
        }
        forms.sort();
        forms.dedup();
        if forms.is_empty() {
            return Masker::default();
        }
        let automaton = AhoCorasickBuilder::new()
            .match_kind(MatchKind::Standard)
            .build(&forms)
            .expect("the forms are a few hundred short strings");
        Masker {
            automaton: Some(automaton),
            forms,
        }
    }

    /// Whether there is nothing to mask.
    pub fn is_empty(&self) -> bool {
        self.automaton.is_none()
    }

    /// Every form this masker hides.
    pub fn forms(&self) -> &[String] {
        &self.forms
    }

    /// `text` with every form of every value replaced by [`MASK`].
    pub fn mask(&self, text: &str) -> String {
        let Some(automaton) = &self.automaton else {
            return text.to_owned();
        };
        // Overlapping matches come ordered by their end, so each new one can only join
        // spans at the back: the spans stay sorted and disjoint, in one pass.
        let mut merged: Vec<(usize, usize)> = Vec::new();
        for found in automaton.find_overlapping_iter(text) {
            let (mut start, end) = (found.start(), found.end());
            while let Some(&(last_start, last_end)) = merged.last() {
                if last_end < start {
                    break;
                }
                start = start.min(last_start);
                merged.pop();
            }
            merged.push((start, end));
        }
        if merged.is_empty() {
            return text.to_owned();
        }
        let mut masked = String::with_capacity(text.len());
        let mut at = 0;
        for (start, end) in merged {
            // Forms are whole UTF-8 strings, so match bounds are character bounds.
            masked.push_str(&text[at..start]);
            masked.push_str(MASK);
            at = end;
        }
        masked.push_str(&text[at..]);
        masked
    }

    /// `value` with every string in it (object keys too) masked.
    pub fn mask_json(&self, value: &Value) -> Value {
        if self.is_empty() {
            return value.clone();
        }
        match value {
            Value::String(text) => Value::String(self.mask(text)),
            Value::Array(items) => Value::Array(items.iter().map(|v| self.mask_json(v)).collect()),
            Value::Object(map) => Value::Object(
                map.iter()
                    .map(|(key, v)| (self.mask(key), self.mask_json(v)))
                    .collect(),
            ),
            other => other.clone(),
        }
    }
}

/// Pushes the forms of one value.
fn add_forms(value: &str, forms: &mut Vec<String>) {
    let length = value.chars().count();
    if length < MIN_MASKED_LEN {
        return;
    }
    forms.push(value.to_owned());
    if length < MIN_ENCODED_LEN {
        return;
    }
    // Each line of a multi-line value, as it would be printed line by line.
    if value.contains('\n') {
        for line in value.lines() {
            let line = line.trim_end_matches('\r');
            if line.chars().count() >= MIN_ENCODED_LEN {
                forms.push(line.to_owned());
                add_encodings(line, forms);
            }
        }
    }
    add_encodings(value, forms);
}

fn add_encodings(value: &str, forms: &mut Vec<String>) {
    let mut push = |form: String| {
        if form != value && form.chars().count() >= MIN_ENCODED_LEN {
            forms.push(form);
        }
    };
    push(json_escaped(value, false));
    push(json_escaped(value, true));
    push(url_encoded(value, false));
    push(url_encoded(value, true));
    for engine in [
        &base64::engine::general_purpose::STANDARD_NO_PAD,
        &base64::engine::general_purpose::URL_SAFE_NO_PAD,
    ] {
        for offset in 0..3 {
            if let Some(core) = base64_core(engine, value.as_bytes(), offset) {
                push(core);
            }
        }
    }
}

/// The inside of a JSON string holding `value`; with `ascii`, every non-ASCII character
/// as `\uXXXX` (UTF-16 units, lowercase hex, as Python writes them).
pub fn json_escaped(value: &str, ascii: bool) -> String {
    let mut out = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '"' => out.push_str("\\\""),
            '\\' => out.push_str("\\\\"),
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            '\u{8}' => out.push_str("\\b"),
            '\u{c}' => out.push_str("\\f"),
            c if (c as u32) < 0x20 => out.push_str(&format!("\\u{:04x}", c as u32)),
            c if ascii && !c.is_ascii() => {
                let mut units = [0u16; 2];
                for unit in c.encode_utf16(&mut units) {
                    out.push_str(&format!("\\u{unit:04x}"));
                }
            }
            c => out.push(c),
        }
    }
    out
}

/// `value` percent-encoded as a URL component (every byte but `A-Z a-z 0-9 - . _ ~`);
/// with `form`, spaces as `+`.
pub fn url_encoded(value: &str, form: bool) -> String {
    let mut out = String::with_capacity(value.len() * 3);
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            b' ' if form => out.push('+'),
            other => out.push_str(&format!("%{other:02X}")),
        }
    }
    out
}

/// The base64 characters that depend on `bytes` alone when they start `offset` bytes
/// (mod 3) into a longer encoded text: encode with `offset` filler bytes before, then keep
/// only characters whose 6 bits all come from `bytes`.
pub fn base64_core(
    engine: &base64::engine::GeneralPurpose,
    bytes: &[u8],
    offset: usize,
) -> Option<String> {
    let mut padded = vec![0u8; offset];
    padded.extend_from_slice(bytes);
    let encoded = engine.encode(&padded);
    let end_bit = padded.len() * 8;
    let start_bit = offset * 8;
    // Character i holds bits [6i, 6i + 6): keep those inside [start_bit, end_bit).
    let first = start_bit.div_ceil(6);
    let last = end_bit / 6; // exclusive
    if last <= first {
        return None;
    }
    Some(encoded[first..last].to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;
    use base64::engine::general_purpose::{STANDARD, URL_SAFE};

    const SECRET: &str = "sk_live_4eC39HqLyjWDarjtT1zdp7dc";

    fn masker() -> Masker {
        Masker::new([SECRET, "abc1", "ab"])
    }

    #[test]
    fn raw_values_are_masked_longest_and_overlapping_whole() {
        let masker = Masker::new(["sk_live_abc123", "abc1", "123xyz"]);
        assert_eq!(
            masker.mask("token sk_live_abc123 and abc1 and sk_live_abc123xyz"),
            "token *** and *** and ***"
        );
        assert_eq!(masker.mask("nothing here"), "nothing here");
        assert_eq!(
            Masker::new(["ab"]).mask("ab ab"),
            "ab ab",
            "too short to mask"
        );
    }

    #[test]
    fn json_escaped_values_are_masked() {
        let secret = "pa\"ss\\wörd\n2";
        let masker = Masker::new([secret]);
        let line =
            serde_json::json!({"type": "log", "message": format!("got {secret}")}).to_string();
        assert!(
            !masker.mask(&line).contains("ss\\\\w"),
            "{}",
            masker.mask(&line)
        );
        let ascii = format!("\"{}\"", json_escaped(secret, true));
        assert_eq!(masker.mask(&ascii), "\"***\"");
    }

    #[test]
    fn the_secrets_inside_a_json_config_are_masked_on_their_own() {
        let config = r#"{"api_url": "http://api.example", "bearer_token": "tok_9f8e7d6c",
            "oauth": {"client_secret": "cs-1234567"}, "api_keys": {"X-API-KEY": "k-abcdef"},
            "credentials": {"user": "svc-loader", "extra": ["nested-secret"]},
            "next_page_token_path": "$.next_cursor", "user": "postgres"}"#;
        let masker = Masker::new([config]);
        for secret in [
            "tok_9f8e7d6c",
            "cs-1234567",
            "k-abcdef",
            "svc-loader",
            "nested-secret",
        ] {
            assert_eq!(
                masker.mask(&format!("using {secret} now")),
                "using *** now",
                "{secret}"
            );
        }
        // What does not name a secret stays readable.
        let line = "GET http://api.example as postgres, next page at $.next_cursor";
        assert_eq!(masker.mask(line), line);
        assert_eq!(masker.mask(config), "***", "the whole value, as before");
    }

    #[test]
    fn url_encoded_values_are_masked() {
        let secret = "p@ss w/rd&x=1";
        let masker = Masker::new([secret]);
        assert_eq!(
            masker.mask("GET /login?pw=p%40ss%20w%2Frd%26x%3D1&next=/"),
            "GET /login?pw=***&next=/"
        );
        assert_eq!(masker.mask("pw=p%40ss+w%2Frd%26x%3D1"), "pw=***");
    }

    #[test]
    fn base64_is_masked_at_every_alignment() {
        let masker = masker();
        for prefix in ["", "u", "us", "user:", "Authorization: x"] {
            let whole = format!("{prefix}{SECRET}-tail");
            for encoded in [STANDARD.encode(&whole), URL_SAFE.encode(&whole)] {
                let masked = masker.mask(&format!("header {encoded}"));
                assert!(masked.contains(MASK), "{prefix:?}: {masked}");
                // Whatever is left cannot be decoded back to the secret.
                for piece in masked.split(MASK) {
                    for engine in [&STANDARD, &URL_SAFE] {
                        if let Ok(bytes) = engine.decode(piece.trim_start_matches("header ")) {
                            assert!(!String::from_utf8_lossy(&bytes).contains(SECRET));
                        }
                    }
                }
            }
        }
    }

    #[test]
    fn every_line_of_a_multi_line_value_is_masked() {
        let key = "-----BEGIN PRIVATE KEY-----\nMIIEvQIBADANBgkqhkiG9w0BAQEFAASC\nBKcwggSjAgEAAoIBAQC7VJTUt9Us8cKj\n-----END PRIVATE KEY-----";
        let masker = Masker::new([key]);
        for line in key.lines() {
            assert_eq!(masker.mask(&format!("> {line}")), "> ***");
        }
    }

    #[test]
    fn json_values_are_masked_in_keys_and_strings() {
        let masker = masker();
        let value = serde_json::json!({"token": SECRET, SECRET: [1, format!("x{SECRET}")]});
        let masked = masker.mask_json(&value);
        assert!(!masked.to_string().contains(SECRET), "{masked}");
        assert_eq!(masked["token"], "***");
    }

    #[test]
    fn base64_core_keeps_only_characters_of_the_value() {
        // "abcdef" at offset 0 encodes to YWJjZGVm, every character the value's own.
        assert_eq!(
            base64_core(
                &base64::engine::general_purpose::STANDARD_NO_PAD,
                b"abcdef",
                0
            )
            .unwrap(),
            "YWJjZGVm"
        );
        // At offset 1 the first character mixes the filler byte in: it is left out.
        let core = base64_core(
            &base64::engine::general_purpose::STANDARD_NO_PAD,
            b"abcdef",
            1,
        )
        .unwrap();
        assert!(base64::engine::general_purpose::STANDARD
            .encode(b"Xabcdef")
            .contains(&core));
        assert!(base64::engine::general_purpose::STANDARD
            .encode(b"??abcdef??")
            .contains(
                &base64_core(
                    &base64::engine::general_purpose::STANDARD_NO_PAD,
                    b"abcdef",
                    2
                )
                .unwrap()
            ));
    }
}

//! Image references (`registry:5000/path/name:tag` or `name@sha256:...`), validated with the
//! grammar the Docker engine uses, so a typo fails when the job file loads and not when a
//! container is about to start.

use std::fmt;

/// A parsed image reference. `tag` and `digest` may both be absent, which means `latest`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ImageRef {
    /// Registry host (with port), when the reference names one.
    pub registry: Option<String>,
    /// Repository path without the registry, such as `integrations/http-extract`.
    pub repository: String,
    pub tag: Option<String>,
    /// `algorithm:hex`, such as `sha256:4f...`.
    pub digest: Option<String>,
}

impl ImageRef {
    pub fn parse(text: &str) -> Result<ImageRef, String> {
        if text.is_empty() {
            return Err("the image reference is empty".into());
        }
        if text.len() > 255 + 128 + 72 {
            return Err(format!("the image reference `{text}` is too long"));
        }
        let (rest, digest) = match text.split_once('@') {
            Some((name, digest)) => (name, Some(parse_digest(text, digest)?)),
            None => (text, None),
        };
        // A tag follows the last colon, unless that colon belongs to a `host:port` prefix.
        let (name, tag) = match rest.rfind(':') {
            Some(colon) if !rest[colon + 1..].contains('/') => {
                (&rest[..colon], Some(parse_tag(text, &rest[colon + 1..])?))
            }
            _ => (rest, None),
        };
        let (registry, repository) = split_registry(name);
        if let Some(registry) = registry {
            validate_registry(text, registry)?;
        }
        if repository.is_empty() {
            return Err(format!(
                "the image reference `{text}` has no repository name"
            ));
        }
        for component in repository.split('/') {
            validate_path_component(text, component)?;
        }
        Ok(ImageRef {
            registry: registry.map(str::to_owned),
            repository: repository.to_owned(),
            tag,
            digest,
        })
    }

    /// The name without tag or digest, as used by `docker pull`'s `fromImage`.
    pub fn name(&self) -> String {
        match &self.registry {
            Some(registry) => format!("{registry}/{}", self.repository),
            None => self.repository.clone(),
        }
    }

    /// The tag to pull: the explicit one, or `latest` when neither tag nor digest is given.
    pub fn tag_or_latest(&self) -> &str {
        self.tag.as_deref().unwrap_or("latest")
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.name())?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

fn split_registry(name: &str) -> (Option<&str>, &str) {
    match name.split_once('/') {
        Some((first, rest))
            if first.contains('.') || first.contains(':') || first == "localhost" =>
        {
            (Some(first), rest)
        }
        _ => (None, name),
    }
}

fn validate_registry(text: &str, registry: &str) -> Result<(), String> {
    let (host, port) = match registry.rsplit_once(':') {
        Some((host, port)) => (host, Some(port)),
        None => (registry, None),
    };
    if let Some(port) = port {
        if port.is_empty() || !port.chars().all(|c| c.is_ascii_digit()) || port.len() > 5 {
            return Err(format!("the registry port in `{text}` is not a number"));
        }
    }
    let valid_label = |label: &str| {
        !label.is_empty()
            && label.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
            && !label.starts_with('-')
            && !label.ends_with('-')
    };
    if host.is_empty() || !host.split('.').all(valid_label) {
        return Err(format!(
            "the registry host in `{text}` is not a valid host name"
        ));
    }
    Ok(())
}

fn validate_path_component(text: &str, component: &str) -> Result<(), String> {
    let is_alnum = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    let bad = || {
        format!(
            "`{component}` in the image reference `{text}` is not a valid repository name \
             (lowercase letters, digits and single separators . _ __ -)"
        )
    };
    let bytes: Vec<char> = component.chars().collect();
    if bytes.is_empty() || !is_alnum(bytes[0]) || !is_alnum(bytes[bytes.len() - 1]) {
        return Err(bad());
    }
    let mut index = 0;
    while index < bytes.len() {
        let c = bytes[index];
        if is_alnum(c) {
            index += 1;
            continue;
        }
        // A separator run: `.`, `_`, `__` or any number of `-`.
        let start = index;
        while index < bytes.len() && !is_alnum(bytes[index]) {
            index += 1;
        }
        let separator: String = bytes[start..index].iter().collect();
        let valid = separator == "."
            || separator == "_"
            || separator == "__"
            || separator.chars().all(|c| c == '-');
        if !valid {
            return Err(bad());
        }
    }
    Ok(())
}

fn parse_tag(text: &str, tag: &str) -> Result<String, String> {
    let valid = !tag.is_empty()
        && tag.len() <= 128
        && tag
            .chars()
            .next()
            .is_some_and(|c| c.is_ascii_alphanumeric() || c == '_')
        && tag
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_.-".contains(c));
    if valid {
        Ok(tag.to_owned())
    } else {
        Err(format!(
            "the tag `{tag}` in `{text}` is not valid (letters, digits, _ . -, at most 128)"
        ))
    }
}

fn parse_digest(text: &str, digest: &str) -> Result<String, String> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(format!(
            "the digest in `{text}` must look like sha256:<64 hex digits>"
        ));
    };
    let hex_ok = hex
        .chars()
        .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c));
    let valid = match algorithm {
        "sha256" => hex.len() == 64 && hex_ok,
        "sha512" => hex.len() == 128 && hex_ok,
        _ => false,
    };
    if valid {
        Ok(digest.to_owned())
    } else {
        Err(format!(
            "the digest in `{text}` must look like sha256:<64 hex digits>"
        ))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_registry_path_and_tag() {
        let image = ImageRef::parse("localhost:5000/integrations/http-extract:1.4.2").unwrap();
        assert_eq!(image.registry.as_deref(), Some("localhost:5000"));
        assert_eq!(image.repository, "integrations/http-extract");
        assert_eq!(image.tag.as_deref(), Some("1.4.2"));
        assert_eq!(
            image.to_string(),
            "localhost:5000/integrations/http-extract:1.4.2"
        );
    }

    #[test]
    fn parses_digest_and_defaults_to_latest() {
        let digest = format!("sha256:{}", "a".repeat(64));
        let image = ImageRef::parse(&format!("stevedore/synth@{digest}")).unwrap();
        assert_eq!(image.digest.as_deref(), Some(digest.as_str()));
        assert_eq!(image.registry, None);
        assert_eq!(
            ImageRef::parse("busybox").unwrap().tag_or_latest(),
            "latest"
        );
    }

    #[test]
    fn registry_port_is_not_mistaken_for_a_tag() {
        let image = ImageRef::parse("127.0.0.1:5000/synth").unwrap();
        assert_eq!(image.registry.as_deref(), Some("127.0.0.1:5000"));
        assert_eq!(image.tag, None);
    }

    #[test]
    fn rejects_bad_references_with_the_reason() {
        assert!(ImageRef::parse("Stevedore/Synth:1")
            .unwrap_err()
            .contains("repository name"));
        assert!(ImageRef::parse("synth:").unwrap_err().contains("tag"));
        assert!(ImageRef::parse("synth:1.0:2").is_err());
        assert!(ImageRef::parse("synth@sha256:abc")
            .unwrap_err()
            .contains("digest"));
        assert!(ImageRef::parse("a//b").is_err());
        assert!(ImageRef::parse("").is_err());
        assert!(ImageRef::parse("my image").is_err());
    }
}

//! Image references as users write them: `[registry/]name[:tag][@sha256:hex]`.

use std::fmt;

/// Default registry for references without one, as Docker tools assume.
pub const DEFAULT_REGISTRY: &str = "docker.io";

/// A parsed image reference.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct ImageRef {
    /// Registry host (with port), e.g. `192.0.2.1:5000`.
    pub registry: String,
    /// Repository path, e.g. `library/busybox`.
    pub repository: String,
    /// Tag, when given (`latest` is assumed when neither tag nor digest is).
    pub tag: Option<String>,
    /// Manifest digest (`sha256:<64 hex>`), when given.
    pub digest: Option<String>,
}

/// Why a reference was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("invalid image reference {reference:?}: {reason}")]
pub struct InvalidReference {
    /// The reference as given.
    pub reference: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

fn is_component(s: &str) -> bool {
    // Lowercase alphanumerics separated by '.', '_', '__' or '-'s (distribution spec).
    !s.is_empty()
        && s.bytes()
            .next()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .last()
            .is_some_and(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
        && s.bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b"._-".contains(&b))
}

/// Checks a `sha256:<64 lowercase hex>` digest.
#[must_use]
pub fn is_sha256_digest(d: &str) -> bool {
    d.strip_prefix("sha256:").is_some_and(|h| {
        h.len() == 64
            && h.bytes()
                .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
    })
}

impl ImageRef {
    /// Parses a reference.
    ///
    /// # Errors
    /// [`InvalidReference`] saying what is wrong.
    pub fn parse(s: &str) -> Result<Self, InvalidReference> {
        let bad = |reason| InvalidReference {
            reference: s.to_string(),
            reason,
        };
        if s.is_empty() {
            return Err(bad("empty"));
        }
        if s.len() > 512 {
            return Err(bad("longer than 512 characters"));
        }
        let (rest, digest) = match s.split_once('@') {
            Some((r, d)) => {
                if !is_sha256_digest(d) {
                    return Err(bad(
                        "a digest must be sha256: followed by 64 lowercase hex digits",
                    ));
                }
                (r, Some(d.to_string()))
            }
            None => (s, None),
        };
        // A tag follows the last ':' that comes after the last '/'.
        let last_slash = rest.rfind('/').map_or(0, |i| i + 1);
        let (name, tag) = match rest[last_slash..].rfind(':') {
            Some(i) => {
                let t = &rest[last_slash + i + 1..];
                let ok = !t.is_empty()
                    && t.len() <= 128
                    && t.bytes()
                        .next()
                        .is_some_and(|b| b.is_ascii_alphanumeric() || b == b'_')
                    && t.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b"._-".contains(&b));
                if !ok {
                    return Err(bad(
                        "a tag is 1-128 characters of [A-Za-z0-9_.-], not starting with . or -",
                    ));
                }
                (&rest[..last_slash + i], Some(t.to_string()))
            }
            None => (rest, None),
        };
        let mut parts: Vec<&str> = name.split('/').collect();
        let registry = if parts.len() > 1
            && (parts[0].contains('.') || parts[0].contains(':') || parts[0] == "localhost")
        {
            let r = parts.remove(0);
            let host_ok = r.split(':').next().is_some_and(|h| {
                !h.is_empty()
                    && h.bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b".-".contains(&b))
            }) && r.split(':').nth(1).is_none_or(|p| p.parse::<u16>().is_ok());
            if !host_ok {
                return Err(bad("the registry must be host[:port]"));
            }
            r.to_string()
        } else {
            DEFAULT_REGISTRY.to_string()
        };
        if parts.is_empty() || !parts.iter().all(|p| is_component(p)) {
            return Err(bad(
                "the name must be lowercase letters, digits and separators (. _ -), in /-separated parts",
            ));
        }
        let mut repository = parts.join("/");
        if registry == DEFAULT_REGISTRY && !repository.contains('/') {
            repository = format!("library/{repository}");
        }
        let tag = if tag.is_none() && digest.is_none() {
            Some("latest".to_string())
        } else {
            tag
        };
        Ok(Self {
            registry,
            repository,
            tag,
            digest,
        })
    }

    /// `registry/repository` without tag or digest.
    #[must_use]
    pub fn name(&self) -> String {
        format!("{}/{}", self.registry, self.repository)
    }
}

impl fmt::Display for ImageRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        if let Some(t) = &self.tag {
            write!(f, ":{t}")?;
        }
        if let Some(d) = &self.digest {
            write!(f, "@{d}")?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_ordinary_references() {
        let r = ImageRef::parse("busybox").unwrap();
        assert_eq!(r.to_string(), "docker.io/library/busybox:latest");
        let r = ImageRef::parse("192.0.2.1:5000/weft/busybox:1.36").unwrap();
        assert_eq!(r.registry, "192.0.2.1:5000");
        assert_eq!(r.repository, "weft/busybox");
        assert_eq!(r.tag.as_deref(), Some("1.36"));
        let d = format!("sha256:{}", "a".repeat(64));
        let r = ImageRef::parse(&format!("weft.local/busybox@{d}")).unwrap();
        assert_eq!(r.digest.as_deref(), Some(d.as_str()));
        assert_eq!(r.tag, None);
    }

    #[test]
    fn refuses_malformed_references() {
        for s in [
            "",
            "Busybox",
            "busybox:",
            "busybox:-x",
            "busybox@sha256:abc",
            "busybox@md5:0123",
            "a//b",
            "host:port/x",
            "weft.local/bad name:1",
        ] {
            assert!(ImageRef::parse(s).is_err(), "{s:?} should be refused");
        }
    }
}

//! Object metadata helpers: name rules and timestamps.

/// Why `name` is not a DNS-1123 label (lower-case alphanumerics and '-',
/// at most 63), or `None` when it is one.
pub fn dns_label_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a name must not be empty".into());
    }
    if name.len() > 63 {
        return Some("must be no more than 63 characters".into());
    }
    let ok = name
        .chars()
        .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
        && name.starts_with(|c: char| c.is_ascii_alphanumeric())
        && name.ends_with(|c: char| c.is_ascii_alphanumeric());
    (!ok).then(|| {
        "a lowercase RFC 1123 label must consist of lower case alphanumeric characters or '-', and must start and end with an alphanumeric character".into()
    })
}

/// Why `name` is not a DNS-1035 label (a DNS-1123 label that starts with
/// a letter: what Kubernetes asks of a Service's name), or `None`.
pub fn dns_1035_label_error(name: &str) -> Option<String> {
    let ok = dns_label_error(name).is_none() && name.starts_with(|c: char| c.is_ascii_lowercase());
    (!ok).then(|| {
        dns_label_error(name)
            .filter(|e| e.starts_with("must be no more"))
            .unwrap_or_else(|| {
                "a DNS-1035 label must consist of lower case alphanumeric characters or '-', start with an alphabetic character, and end with an alphanumeric character".into()
            })
    })
}

/// Why `name` is not a DNS-1123 subdomain (labels joined by '.', at most
/// 253), or `None` when it is one.
pub fn dns_subdomain_error(name: &str) -> Option<String> {
    if name.is_empty() {
        return Some("a name must not be empty".into());
    }
    if name.len() > 253 {
        return Some("must be no more than 253 characters".into());
    }
    let ok = name.split('.').all(|l| {
        !l.is_empty()
            && l.chars()
                .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-')
            && l.starts_with(|c: char| c.is_ascii_alphanumeric())
            && l.ends_with(|c: char| c.is_ascii_alphanumeric())
    });
    (!ok).then(|| {
        "a lowercase RFC 1123 subdomain must consist of lower case alphanumeric characters, '-' or '.', and must start and end with an alphanumeric character".into()
    })
}

/// An object's cache key: `namespace/name`, or `name` for cluster-scoped
/// objects (the form client-go's `MetaNamespaceKeyFunc` gives).
pub fn key_of<K: kube::Resource>(obj: &K) -> String {
    let meta = obj.meta();
    key(
        meta.namespace.as_deref(),
        meta.name.as_deref().unwrap_or_default(),
    )
}

/// The cache key of the object `name` in `namespace` (None: cluster-scoped).
pub fn key(namespace: Option<&str>, name: &str) -> String {
    match namespace {
        Some(ns) => format!("{ns}/{name}"),
        None => name.to_string(),
    }
}

/// Now as an RFC 3339 timestamp with seconds, as Kubernetes writes them.
pub fn now_rfc3339() -> String {
    format_rfc3339(std::time::SystemTime::now())
}

/// Now as an object timestamp (whole seconds, as they are stored).
pub fn now_time() -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    time_at(std::time::SystemTime::now())
}

/// An instant as an object timestamp (whole seconds, as they are stored).
pub fn time_at(t: std::time::SystemTime) -> k8s_openapi::apimachinery::pkg::apis::meta::v1::Time {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        k8s_openapi::jiff::Timestamp::from_second(secs)
            .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH),
    )
}

/// An instant as `2006-01-02T15:04:05Z`.
pub fn format_rfc3339(t: std::time::SystemTime) -> String {
    let secs = t
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let ts = k8s_openapi::jiff::Timestamp::from_second(secs)
        .unwrap_or(k8s_openapi::jiff::Timestamp::UNIX_EPOCH);
    ts.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
}

/// Parses an RFC 3339 timestamp into seconds since the epoch.
pub fn parse_rfc3339(s: &str) -> Option<i64> {
    s.parse::<k8s_openapi::jiff::Timestamp>()
        .ok()
        .map(|t| t.as_second())
}

/// How long ago `since` (RFC 3339) was, as kubectl prints ages;
/// `<unknown>` when it does not parse.
pub fn age(since: Option<&str>) -> String {
    let Some(t) = since.and_then(parse_rfc3339) else {
        return "<unknown>".into();
    };
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    human_duration((now - t).max(0))
}

/// A duration in seconds as Kubernetes' `HumanDuration` prints it: two
/// units while the second one still says something (`2m30s`, `3h2m`,
/// `2d2h`), one after that.
pub fn human_duration(secs: i64) -> String {
    let (m, h, d) = (secs / 60, secs / 3600, secs / 86400);
    let two = |big: i64, unit: &str, small: i64, small_unit: &str| {
        if small == 0 {
            format!("{big}{unit}")
        } else {
            format!("{big}{unit}{small}{small_unit}")
        }
    };
    if secs < 120 {
        format!("{secs}s")
    } else if m < 10 {
        two(m, "m", secs % 60, "s")
    } else if h < 3 {
        format!("{m}m")
    } else if h < 8 {
        two(h, "h", m % 60, "m")
    } else if h < 48 {
        format!("{h}h")
    } else if d < 8 {
        two(d, "d", h % 24, "h")
    } else if d < 365 * 2 {
        format!("{d}d")
    } else if d < 365 * 8 {
        two(d / 365, "y", d % 365, "d")
    } else {
        format!("{}y", d / 365)
    }
}

/// A fresh random UID in the UUID text form.
pub fn new_uid() -> String {
    uuid::Uuid::new_v4().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names() {
        assert!(dns_label_error("web-1").is_none());
        assert!(dns_label_error("Web").is_some());
        assert!(dns_label_error("a.b").is_some());
        assert!(dns_label_error("1abc").is_none());
        assert!(dns_1035_label_error("1abc").is_some());
        assert!(dns_1035_label_error("abc-1").is_none());
        assert!(dns_1035_label_error("").is_some());
        assert!(dns_1035_label_error(&"a".repeat(64)).is_some_and(|e| e.contains("63")));
        assert!(dns_subdomain_error("a.b-c").is_none());
        assert!(dns_subdomain_error("a..b").is_some());
        assert!(dns_subdomain_error(&"a".repeat(254)).is_some());
        assert!(
            dns_subdomain_error(&"a".repeat(70)).is_none(),
            "a part may exceed 63"
        );
        for bad in ["", "Bad", "a_b", "-a", "a-", "a..b", "a/b"] {
            assert!(dns_subdomain_error(bad).is_some(), "{bad:?}");
        }
        assert!(dns_label_error("team-a").is_none());
        assert!(dns_label_error(&"a".repeat(64)).is_some());
    }

    #[test]
    fn timestamps() {
        let t = std::time::UNIX_EPOCH + std::time::Duration::from_secs(1_700_000_000);
        assert_eq!(format_rfc3339(t), "2023-11-14T22:13:20Z");
        assert_eq!(parse_rfc3339("2023-11-14T22:13:20Z"), Some(1_700_000_000));
    }

    #[test]
    fn durations_print_like_kubectl() {
        assert_eq!(human_duration(5), "5s");
        assert_eq!(human_duration(150), "2m30s");
        assert_eq!(human_duration(300), "5m");
        assert_eq!(human_duration(3 * 3600 + 120), "3h2m");
        assert_eq!(human_duration(50 * 3600), "2d2h");
        assert_eq!(human_duration(400 * 86400), "400d");
        assert_eq!(human_duration(925 * 86400), "2y195d");
        assert_eq!(human_duration(730 * 86400), "2y");
        assert_eq!(human_duration(3000 * 86400), "8y");
        assert_eq!(age(Some("not a time")), "<unknown>");
    }
}

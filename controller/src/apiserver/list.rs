//! LIST: `limit` and `continue` over a consistent snapshot, and the
//! `resourceVersion` / `resourceVersionMatch` rules, as kube-apiserver reads
//! them.
//!
//! A continue token carries the revision the first page was read at and the
//! last key sent, so every page of one list is read at that revision (the
//! store keeps history back to its last compaction). A token whose revision
//! has been compacted gets 410 Expired with a fresh token that continues,
//! inconsistently, from the current revision.

use base64::Engine as _;
use serde_json::{Value, json};
use weft_api::ApiError;
use weft_api::resources::Resource;

use super::{ApiState, Query, Selectors, table};
use crate::registry::{decode_stored, parse_rv};
use crate::store::StoreError;

/// The version tag of a continue token (kube-apiserver's own).
const TOKEN_VERSION: &str = "meta.k8s.io/v1";
/// How long a list waits for the store to reach a resourceVersion asked for
/// (kube-apiserver waits as long for its watch cache).
const WAIT_FOR_REVISION: std::time::Duration = std::time::Duration::from_secs(3);
/// Keys read per store page when a selector filters them: a page may need
/// many reads when few objects match.
const MIN_CHUNK: usize = 500;

/// Where a list reads from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListFrom {
    /// The revision to read at; None is the newest.
    pub at: Option<i64>,
    /// Only keys after this one (relative to the resource's key prefix).
    pub after: Option<String>,
    /// At most this many objects; 0 is all.
    pub limit: usize,
    /// A continue token asked for the page (so an expired revision is the
    /// token's, answered with a fresh token).
    continued: bool,
    /// resourceVersion=N (not older than N): the newest, once the store has
    /// reached N.
    not_older_than: Option<i64>,
}

/// A continue token: the revision and the last key sent, as
/// kube-apiserver encodes them (base64 of a small JSON object).
pub fn encode_continue(rev: i64, after: &str) -> String {
    let raw = json!({"v": TOKEN_VERSION, "rv": rev, "start": format!("{after}\u{0}")});
    base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(raw.to_string())
}

/// The revision (-1: the newest) and the key to continue after.
pub fn decode_continue(token: &str) -> Result<(i64, String), ApiError> {
    let invalid = |why: &str| ApiError::bad_request(format!("continue key is not valid: {why}"));
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(token.trim_end_matches('='))
        .map_err(|_| invalid("not base64"))?;
    let v: Value = serde_json::from_slice(&bytes).map_err(|_| invalid("not a JSON object"))?;
    if v["v"].as_str() != Some(TOKEN_VERSION) {
        return Err(invalid(&format!(
            "incorrect encoded start resourceVersion (version {TOKEN_VERSION})"
        )));
    }
    let rev = v["rv"]
        .as_i64()
        .filter(|r| *r != 0 && *r >= -1)
        .ok_or_else(|| invalid("incorrect encoded start resourceVersion"))?;
    let start = v["start"]
        .as_str()
        .and_then(|s| s.strip_suffix('\u{0}'))
        .filter(|s| !s.is_empty())
        .ok_or_else(|| invalid("incorrect encoded start key"))?;
    // A key, not a path out of the resource's keys.
    if start.starts_with('/') || start.split('/').any(|seg| seg == ".." || seg == ".") {
        return Err(invalid("incorrect encoded start key"));
    }
    Ok((rev, start.to_string()))
}

/// Reads limit, continue, resourceVersion and resourceVersionMatch.
pub fn parse(query: &Query) -> Result<ListFrom, ApiError> {
    let limit = match query.get("limit") {
        None => 0,
        Some(l) => {
            let n: i64 = l.parse().map_err(|_| {
                ApiError::bad_request(format!("invalid limit \"{l}\": must be an integer"))
            })?;
            n.max(0) as usize
        }
    };
    let rv = query.get("resourceVersion");
    let matching = query.get("resourceVersionMatch");
    if let Some(token) = query.get("continue") {
        if rv.is_some_and(|rv| rv != "0") {
            return Err(ApiError::bad_request(
                "specifying resource version is not allowed when using continue",
            ));
        }
        if matching.is_some() {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden when continue is provided",
            ));
        }
        let (rev, after) = decode_continue(token)?;
        return Ok(ListFrom {
            at: (rev > 0).then_some(rev),
            after: Some(after),
            limit,
            continued: true,
            not_older_than: None,
        });
    }
    let parsed = match rv {
        None => None,
        Some(rv) => Some(parse_rv(rv)?),
    };
    let mut from = ListFrom {
        at: None,
        after: None,
        limit,
        continued: false,
        not_older_than: None,
    };
    match (matching, parsed) {
        (None, None) => {}
        (Some(_), None) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch is forbidden unless resourceVersion is provided",
            ));
        }
        (None | Some("NotOlderThan"), Some(rev)) => {
            from.not_older_than = (rev > 0).then_some(rev);
        }
        (Some("Exact"), Some(0)) => {
            return Err(ApiError::bad_request(
                "resourceVersionMatch \"Exact\" is forbidden for resourceVersion \"0\"",
            ));
        }
        (Some("Exact"), Some(rev)) => from.at = Some(rev),
        (Some(other), Some(_)) => {
            return Err(ApiError::bad_request(format!(
                "resourceVersionMatch: Unsupported value: \"{other}\": supported values: \"Exact\", \"NotOlderThan\""
            )));
        }
    }
    Ok(from)
}

/// One page of a list: the objects, the revision they were read at, and a
/// continue token when more follow.
pub struct Listed {
    pub items: Vec<Value>,
    pub revision: i64,
    pub continue_token: Option<String>,
}

/// Reads a page of `res` under `ns` as `from` says, keeping what `keep`
/// keeps.
pub async fn read(
    st: &ApiState,
    res: &Resource,
    ns: Option<&str>,
    from: &ListFrom,
    keep: impl Fn(&Value) -> bool,
) -> Result<Listed, ApiError> {
    let store = &st.registry.store;
    if let Some(want) = from.not_older_than {
        wait_for_revision(st, want).await?;
    }
    let base = res.key_prefix();
    let prefix = res.list_prefix(ns);
    let mut after = from.after.as_ref().map(|a| format!("{base}{a}"));
    let mut at = from.at;
    let mut items = Vec::new();
    loop {
        let chunk = match from.limit {
            0 => 0,
            n => (n - items.len()).max(MIN_CHUNK.min(n * 2)),
        };
        let page = match store.list_page(&prefix, after.as_deref(), chunk, at).await {
            Ok(p) => p,
            Err(e) => return Err(read_error(e, from, after.as_deref(), &base)),
        };
        // Every later read of this list is at the first one's revision.
        at = Some(page.revision);
        let read = page.items.len();
        for (i, kv) in page.items.iter().enumerate() {
            let obj = decode_stored(kv)?;
            if keep(&obj) {
                items.push(obj);
            }
            if from.limit > 0 && items.len() == from.limit {
                let more = page.more || i + 1 < read;
                let token = more.then(|| {
                    encode_continue(page.revision, kv.key.strip_prefix(&base).unwrap_or(&kv.key))
                });
                return Ok(Listed {
                    items,
                    revision: page.revision,
                    continue_token: token,
                });
            }
        }
        match page.items.last() {
            Some(last) if page.more => after = Some(last.key.clone()),
            _ => {
                return Ok(Listed {
                    items,
                    revision: page.revision,
                    continue_token: None,
                });
            }
        }
    }
}

/// resourceVersion=N: the store must have reached N; it may take a moment
/// after a write acknowledged elsewhere.
pub(super) async fn wait_for_revision(st: &ApiState, want: i64) -> Result<(), ApiError> {
    let deadline = tokio::time::Instant::now() + WAIT_FOR_REVISION;
    loop {
        let current = st
            .registry
            .store
            .revision()
            .await
            .map_err(crate::registry::store_error)?;
        if current >= want {
            return Ok(());
        }
        if tokio::time::Instant::now() >= deadline {
            return Err(ApiError::timeout(format!(
                "Too large resource version: {want}, current: {current}"
            )));
        }
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
    }
}

fn read_error(e: StoreError, from: &ListFrom, after: Option<&str>, base: &str) -> ApiError {
    match e {
        StoreError::Compacted { .. } if from.continued => {
            // Continue from the newest revision, from the same key.
            let after = after.unwrap_or_default();
            ApiError::continue_expired(encode_continue(
                -1,
                after.strip_prefix(base).unwrap_or(after),
            ))
        }
        StoreError::Compacted { .. } => {
            ApiError::gone("The resourceVersion for the provided list is too old.")
        }
        StoreError::Future { requested, current } => ApiError::timeout(format!(
            "Too large resource version: {requested}, current: {current}"
        )),
        other => crate::registry::store_error(other),
    }
}

/// Serves a LIST.
pub(super) async fn serve(
    st: &ApiState,
    res: &Resource,
    ns: Option<&str>,
    query: &Query,
    table: bool,
) -> Result<axum::response::Response, ApiError> {
    let from = parse(query)?;
    let sel = Selectors::parse(res, query)?;
    // Waiting for a resourceVersion takes no turn among the LISTs that work.
    if let Some(want) = from.not_older_than {
        wait_for_revision(st, want).await?;
    }
    let _turn = st.bulk.permits.acquire().await;
    let listed = read(st, res, ns, &from, |o| sel.matches(o)).await?;
    let mut body = if table {
        table::table(
            res,
            &listed.items,
            Some(listed.revision),
            &super::query_include(query),
        )
    } else {
        json!({
            "kind": format!("{}List", res.kind),
            "apiVersion": res.api_version(),
            "metadata": {"resourceVersion": listed.revision.to_string()},
            "items": listed.items,
        })
    };
    if let Some(token) = listed.continue_token {
        body["metadata"]["continue"] = json!(token);
    }
    Ok(super::json_response(200, &body))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_round_trip_and_refuse_garbage() {
        let t = encode_continue(42, "ns/pod-7");
        assert_eq!(decode_continue(&t).unwrap(), (42, "ns/pod-7".to_string()));
        assert_eq!(
            decode_continue(&encode_continue(-1, "a")).unwrap(),
            (-1, "a".into())
        );
        for bad in [
            "!!!",
            "e30",
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"v":"x","rv":1,"start":"a\u0000"}"#),
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"v":"meta.k8s.io/v1","rv":0,"start":"a\u0000"}"#),
            &base64::engine::general_purpose::URL_SAFE_NO_PAD
                .encode(r#"{"v":"meta.k8s.io/v1","rv":5,"start":"../x\u0000"}"#),
        ] {
            let e = decode_continue(bad).unwrap_err();
            assert_eq!(e.code, 400, "{bad}");
            assert!(e.message.starts_with("continue key is not valid"), "{e}");
        }
    }

    fn q(s: &str) -> Query {
        Query::parse(Some(s))
    }

    #[test]
    fn resource_version_rules() {
        assert_eq!(parse(&q("resourceVersion=abc")).unwrap_err().code, 400);
        assert_eq!(parse(&q("resourceVersion=-3")).unwrap_err().code, 400);
        assert_eq!(parse(&q("limit=x")).unwrap_err().code, 400);
        assert_eq!(
            parse(&q("resourceVersionMatch=Exact")).unwrap_err().code,
            400
        );
        assert_eq!(
            parse(&q("resourceVersion=0&resourceVersionMatch=Exact"))
                .unwrap_err()
                .code,
            400
        );
        assert_eq!(
            parse(&q("resourceVersion=5&resourceVersionMatch=Soon"))
                .unwrap_err()
                .code,
            400
        );
        let token = encode_continue(9, "a");
        assert_eq!(
            parse(&q(&format!("continue={token}&resourceVersion=5")))
                .unwrap_err()
                .code,
            400
        );
        let exact = parse(&q("resourceVersion=7&resourceVersionMatch=Exact")).unwrap();
        assert_eq!(exact.at, Some(7));
        let page = parse(&q(&format!("continue={token}&limit=10"))).unwrap();
        assert_eq!(
            (page.at, page.after.as_deref(), page.limit),
            (Some(9), Some("a"), 10)
        );
        assert_eq!(parse(&q("limit=-5")).unwrap().limit, 0);
    }
}

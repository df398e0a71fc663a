//! Kubernetes' protobuf encoding (`application/vnd.kubernetes.protobuf`),
//! as kubectl 1.32+ sends for imperative create and client-go's typed
//! clients ask for.
//!
//! The messages are the upstream .proto definitions (controller/proto,
//! compiled by build.rs), read and written through prost-reflect: the
//! k8s-pb crate has the same messages as prost structs, but no way to
//! turn them into the JSON the rest of Weft speaks, short of one
//! hand-written conversion per type. The rules Kubernetes' JSON adds over
//! the messages are here:
//!
//! - Time, MicroTime, Duration, Quantity, IntOrString, RawExtension and
//!   FieldsV1 are messages on the wire and strings, numbers or embedded
//!   JSON in JSON;
//! - a message of one repeated `items` field (ExtraValue, Verbs) is a JSON
//!   list;
//! - a field Go embeds with `json:",inline"` (Probe's handler, a Volume's
//!   source) has its fields in its parent's JSON object;
//! - Go writes every non-pointer field, zero or not: a zero scalar decoded
//!   is "unset" (and left out) unless the Go field is a pointer, where
//!   zero means zero (`replicas: 0`, `allowPrivilegeEscalation: false`).
//!   Which fields are pointers comes from the Go types (proto/go-fields.txt,
//!   made by scripts/k8s-proto.py).
//!
//! A body is `k8s\0` followed by a runtime.Unknown envelope that names the
//! apiVersion and kind and carries the message.

use std::collections::{HashMap, HashSet};
use std::sync::LazyLock;

use base64::Engine as _;
use prost::Message as _;
use prost_reflect::{
    DescriptorPool, DynamicMessage, FieldDescriptor, Kind, MapKey, MessageDescriptor,
    ReflectMessage, Value as PValue,
};
use serde_json::{Map, Value, json};

use super::ApiError;

/// The media type of Kubernetes protobuf bodies.
pub const MEDIA_TYPE: &str = "application/vnd.kubernetes.protobuf";

/// What every protobuf body starts with.
const MAGIC: &[u8] = b"k8s\0";

const META: &str = "k8s.io.apimachinery.pkg.apis.meta.v1";
const UNKNOWN: &str = "k8s.io.apimachinery.pkg.runtime.Unknown";

struct Codec {
    pool: DescriptorPool,
    /// `package.Message.field` of the Go pointer fields.
    pointers: HashSet<String>,
    /// `package.Message.field` of the fields Go's JSON inlines.
    inline: HashSet<String>,
    /// `package.Message.field` to the field's JSON name, where the two
    /// differ (UserInfo's `uID` is `uid`).
    json_names: HashMap<String, String>,
}

static CODEC: LazyLock<Codec> = LazyLock::new(|| {
    let pool = DescriptorPool::decode(
        &include_bytes!(concat!(env!("OUT_DIR"), "/k8s-descriptors.bin"))[..],
    )
    .expect("build.rs writes a valid descriptor set");
    let mut pointers = HashSet::new();
    let mut inline = HashSet::new();
    let mut json_names = HashMap::new();
    for line in include_str!("../../proto/go-fields.txt").lines() {
        match line.split_once(' ') {
            Some(("ptr", f)) => {
                pointers.insert(f.to_string());
            }
            Some(("inline", f)) => {
                inline.insert(f.to_string());
            }
            Some(("json", rest)) => {
                if let Some((f, name)) = rest.split_once(' ') {
                    json_names.insert(f.to_string(), name.to_string());
                }
            }
            _ => {}
        }
    }
    Codec {
        pool,
        pointers,
        inline,
        json_names,
    }
});

/// Whether a Content-Type or Accept entry names the protobuf encoding.
pub fn is_protobuf(media_type: &str) -> bool {
    media_type.split(';').next().unwrap_or_default().trim() == MEDIA_TYPE
}

/// The message of `apiVersion` and `kind`: the group's package (its first
/// label: `apps`, `networking` of networking.k8s.io, `rbac` of
/// rbac.authorization.k8s.io), or meta/v1's (Status, DeleteOptions).
fn message_for(api_version: &str, kind: &str) -> Option<MessageDescriptor> {
    let (group, version) = api_version.rsplit_once('/').unwrap_or(("", api_version));
    let package = match group {
        "" => "core",
        g => g.split('.').next().unwrap_or(g),
    };
    CODEC
        .pool
        .get_message_by_name(&format!("k8s.io.api.{package}.{version}.{kind}"))
        .or_else(|| CODEC.pool.get_message_by_name(&format!("{META}.{kind}")))
}

/// Whether `obj` (with its apiVersion and kind) has a protobuf message.
pub fn can_encode(obj: &Value) -> bool {
    match (obj["apiVersion"].as_str(), obj["kind"].as_str()) {
        (Some(v), Some(k)) => message_for(v, k).is_some(),
        _ => false,
    }
}

/// A protobuf body as the JSON object it stands for, apiVersion and kind
/// included.
pub fn decode(bytes: &[u8]) -> Result<Value, ApiError> {
    let bad = |why: String| ApiError::bad_request(format!("the protobuf body is invalid: {why}"));
    let body = bytes
        .strip_prefix(MAGIC)
        .ok_or_else(|| bad("it does not start with the k8s\\0 prefix".into()))?;
    let unknown_desc = CODEC
        .pool
        .get_message_by_name(UNKNOWN)
        .expect("runtime.Unknown is in the descriptors");
    let unknown = DynamicMessage::decode(unknown_desc, body).map_err(|e| bad(e.to_string()))?;
    let text = |m: &DynamicMessage, name: &str| {
        m.get_field_by_name(name)
            .and_then(|v| v.as_str().map(String::from))
            .unwrap_or_default()
    };
    let type_meta = unknown
        .get_field_by_name("typeMeta")
        .and_then(|v| v.as_message().cloned())
        .unwrap_or_else(|| DynamicMessage::new(unknown.descriptor()));
    let api_version = text(&type_meta, "apiVersion");
    let kind = text(&type_meta, "kind");
    let encoding = text(&unknown, "contentEncoding");
    if !encoding.is_empty() {
        return Err(bad(format!("contentEncoding {encoding} is not supported")));
    }
    let content_type = text(&unknown, "contentType");
    if !content_type.is_empty() && !is_protobuf(&content_type) {
        return Err(bad(format!("contentType {content_type} is not supported")));
    }
    let desc = message_for(&api_version, &kind).ok_or_else(|| {
        bad(format!(
            "no protobuf message for apiVersion {api_version:?}, kind {kind:?}"
        ))
    })?;
    let raw = unknown
        .get_field_by_name("raw")
        .and_then(|v| v.as_bytes().cloned())
        .unwrap_or_default();
    let msg = DynamicMessage::decode(desc, raw).map_err(|e| bad(e.to_string()))?;
    let mut obj = Map::new();
    obj.insert("apiVersion".into(), json!(api_version));
    obj.insert("kind".into(), json!(kind));
    if let Value::Object(fields) = to_json(&msg) {
        obj.extend(fields);
    }
    Ok(Value::Object(obj))
}

/// `obj` as a protobuf body; None when its kind has no message. Fields the
/// message lacks are left out.
pub fn encode(obj: &Value) -> Option<Vec<u8>> {
    let api_version = obj["apiVersion"].as_str()?;
    let kind = obj["kind"].as_str()?;
    let desc = message_for(api_version, kind)?;
    let raw = from_json(&desc, obj).encode_to_vec();
    let unknown_desc = CODEC.pool.get_message_by_name(UNKNOWN)?;
    let mut type_meta = DynamicMessage::new(
        unknown_desc
            .get_field_by_name("typeMeta")?
            .kind()
            .as_message()?
            .clone(),
    );
    type_meta.set_field_by_name("apiVersion", PValue::String(api_version.into()));
    type_meta.set_field_by_name("kind", PValue::String(kind.into()));
    let mut unknown = DynamicMessage::new(unknown_desc);
    unknown.set_field_by_name("typeMeta", PValue::Message(type_meta));
    unknown.set_field_by_name("raw", PValue::Bytes(raw.into()));
    let mut out = MAGIC.to_vec();
    unknown.encode(&mut out).ok()?;
    Some(out)
}

fn field_key(field: &FieldDescriptor) -> String {
    format!("{}.{}", field.parent_message().full_name(), field.name())
}

/// The field's name in JSON.
fn json_name(field: &FieldDescriptor, key: &str) -> String {
    CODEC
        .json_names
        .get(key)
        .cloned()
        .unwrap_or_else(|| field.name().to_string())
}

/// A message of one repeated field named `items` is a Go slice type
/// (ExtraValue, Verbs): a list in JSON.
fn is_list_type(desc: &MessageDescriptor) -> bool {
    let mut fields = desc.fields();
    matches!((fields.next(), fields.next()), (Some(f), None) if f.name() == "items" && f.is_list())
}

fn to_json(msg: &DynamicMessage) -> Value {
    let desc = msg.descriptor();
    let name = desc.full_name();
    let int = |n: &str| {
        msg.get_field_by_name(n)
            .and_then(|v| v.as_i64().or(v.as_i32().map(i64::from)))
            .unwrap_or(0)
    };
    match name {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time" => {
            let secs = int("seconds");
            return if secs == 0 && int("nanos") == 0 {
                Value::Null
            } else {
                json!(format_time(secs, None))
            };
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            let (secs, nanos) = (int("seconds"), int("nanos"));
            return if secs == 0 && nanos == 0 {
                Value::Null
            } else {
                json!(format_time(secs, Some(nanos)))
            };
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            return json!(format_duration(int("duration")));
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            return msg
                .get_field_by_name("string")
                .and_then(|v| v.as_str().map(|s| json!(s)))
                .unwrap_or(Value::Null);
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            return if int("type") == 1 {
                msg.get_field_by_name("strVal")
                    .and_then(|v| v.as_str().map(|s| json!(s)))
                    .unwrap_or(json!(""))
            } else {
                json!(int("intVal"))
            };
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let field = if name.ends_with("FieldsV1") {
                "Raw"
            } else {
                "raw"
            };
            let raw = msg
                .get_field_by_name(field)
                .and_then(|v| v.as_bytes().cloned())
                .unwrap_or_default();
            return embedded(&raw);
        }
        _ => {}
    }
    if is_list_type(&desc) {
        return msg
            .get_field_by_name("items")
            .map(|v| value_to_json(&v))
            .unwrap_or(json!([]));
    }
    let mut obj = Map::new();
    for field in desc.fields() {
        if !msg.has_field(&field) {
            continue;
        }
        let value = msg.get_field(&field);
        let key = field_key(&field);
        if CODEC.inline.contains(&key) {
            if let Value::Object(inner) = value_to_json(&value) {
                obj.extend(inner);
            }
            continue;
        }
        if is_zero(&value) && !CODEC.pointers.contains(&key) {
            continue; // Go's zero value of a non-pointer field: unset.
        }
        let v = value_to_json(&value);
        if !v.is_null() {
            obj.insert(json_name(&field, &key), v);
        }
    }
    Value::Object(obj)
}

/// RawExtension and FieldsV1 carry JSON (a RawExtension may carry a
/// protobuf object of its own).
fn embedded(raw: &[u8]) -> Value {
    if raw.is_empty() {
        return Value::Null;
    }
    if raw.starts_with(MAGIC) {
        return decode(raw).unwrap_or(Value::Null);
    }
    serde_json::from_slice(raw).unwrap_or(Value::Null)
}

fn is_zero(v: &PValue) -> bool {
    match v {
        PValue::Bool(b) => !b,
        PValue::I32(n) => *n == 0,
        PValue::I64(n) => *n == 0,
        PValue::U32(n) => *n == 0,
        PValue::U64(n) => *n == 0,
        PValue::F32(n) => *n == 0.0,
        PValue::F64(n) => *n == 0.0,
        PValue::String(s) => s.is_empty(),
        PValue::Bytes(b) => b.is_empty(),
        PValue::EnumNumber(n) => *n == 0,
        PValue::List(l) => l.is_empty(),
        PValue::Map(m) => m.is_empty(),
        PValue::Message(_) => false,
    }
}

fn value_to_json(v: &PValue) -> Value {
    match v {
        PValue::Bool(b) => json!(b),
        PValue::I32(n) => json!(n),
        PValue::I64(n) => json!(n),
        PValue::U32(n) => json!(n),
        PValue::U64(n) => json!(n),
        PValue::F32(n) => json!(n),
        PValue::F64(n) => json!(n),
        PValue::String(s) => json!(s),
        PValue::Bytes(b) => json!(base64::engine::general_purpose::STANDARD.encode(b)),
        PValue::EnumNumber(n) => json!(n),
        PValue::Message(m) => to_json(m),
        PValue::List(l) => Value::Array(l.iter().map(value_to_json).collect()),
        PValue::Map(m) => {
            let mut obj = Map::new();
            for (k, x) in m {
                let key = match k {
                    MapKey::String(s) => s.clone(),
                    MapKey::Bool(b) => b.to_string(),
                    MapKey::I32(n) => n.to_string(),
                    MapKey::I64(n) => n.to_string(),
                    MapKey::U32(n) => n.to_string(),
                    MapKey::U64(n) => n.to_string(),
                };
                obj.insert(key, value_to_json(x));
            }
            Value::Object(obj)
        }
    }
}

fn from_json(desc: &MessageDescriptor, v: &Value) -> DynamicMessage {
    let mut msg = DynamicMessage::new(desc.clone());
    let name = desc.full_name();
    match name {
        "k8s.io.apimachinery.pkg.apis.meta.v1.Time"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.MicroTime" => {
            if let Some(t) = v
                .as_str()
                .and_then(|s| s.parse::<k8s_openapi::jiff::Timestamp>().ok())
            {
                msg.set_field_by_name("seconds", PValue::I64(t.as_second()));
                if name.ends_with("MicroTime") {
                    msg.set_field_by_name("nanos", PValue::I32(t.subsec_nanosecond()));
                }
            }
            return msg;
        }
        "k8s.io.apimachinery.pkg.apis.meta.v1.Duration" => {
            if let Some(n) = v.as_str().and_then(parse_duration) {
                msg.set_field_by_name("duration", PValue::I64(n));
            }
            return msg;
        }
        "k8s.io.apimachinery.pkg.api.resource.Quantity" => {
            let s = match v {
                Value::String(s) => s.clone(),
                Value::Number(n) => n.to_string(),
                _ => String::new(),
            };
            msg.set_field_by_name("string", PValue::String(s));
            return msg;
        }
        "k8s.io.apimachinery.pkg.util.intstr.IntOrString" => {
            match v {
                Value::String(s) => {
                    msg.set_field_by_name("type", PValue::I64(1));
                    msg.set_field_by_name("strVal", PValue::String(s.clone()));
                }
                other => {
                    msg.set_field_by_name("type", PValue::I64(0));
                    let n = other.as_i64().unwrap_or(0);
                    msg.set_field_by_name("intVal", PValue::I32(n as i32));
                }
            }
            return msg;
        }
        "k8s.io.apimachinery.pkg.runtime.RawExtension"
        | "k8s.io.apimachinery.pkg.apis.meta.v1.FieldsV1" => {
            let field = if name.ends_with("FieldsV1") {
                "Raw"
            } else {
                "raw"
            };
            let raw = serde_json::to_vec(v).unwrap_or_default();
            msg.set_field_by_name(field, PValue::Bytes(raw.into()));
            return msg;
        }
        _ => {}
    }
    if is_list_type(desc) {
        let field = desc.fields().next().expect("one field");
        if let Some(l) = json_to_value(v, &field) {
            msg.set_field(&field, l);
        }
        return msg;
    }
    for field in desc.fields() {
        let key = field_key(&field);
        let value = if CODEC.inline.contains(&key) {
            match field.kind() {
                Kind::Message(m) => Some(PValue::Message(from_json(&m, v))),
                _ => None,
            }
        } else {
            match v.get(json_name(&field, &key).as_str()) {
                None | Some(Value::Null) => None,
                Some(x) => json_to_value(x, &field),
            }
        };
        if let Some(value) = value {
            msg.set_field(&field, value);
        }
    }
    msg
}

/// One JSON value as the value of `field` (the whole list or map for a
/// repeated or map field); None for what cannot be one (left out).
fn json_to_value(v: &Value, field: &FieldDescriptor) -> Option<PValue> {
    if field.is_map() {
        let entry = field.kind();
        let entry = entry.as_message()?;
        let value_field = entry.map_entry_value_field();
        let mut map = HashMap::new();
        for (k, x) in v.as_object()? {
            if let Some(val) = single(x, &value_field.kind()) {
                map.insert(MapKey::String(k.clone()), val);
            }
        }
        return Some(PValue::Map(map));
    }
    if field.is_list() {
        let items = v
            .as_array()?
            .iter()
            .filter_map(|x| single(x, &field.kind()))
            .collect();
        return Some(PValue::List(items));
    }
    single(v, &field.kind())
}

fn single(v: &Value, kind: &Kind) -> Option<PValue> {
    Some(match kind {
        Kind::Bool => PValue::Bool(v.as_bool()?),
        Kind::Int32 | Kind::Sint32 | Kind::Sfixed32 => {
            PValue::I32(i32::try_from(v.as_i64()?).ok()?)
        }
        Kind::Int64 | Kind::Sint64 | Kind::Sfixed64 => PValue::I64(v.as_i64()?),
        Kind::Uint32 | Kind::Fixed32 => PValue::U32(u32::try_from(v.as_u64()?).ok()?),
        Kind::Uint64 | Kind::Fixed64 => PValue::U64(v.as_u64()?),
        Kind::Float => PValue::F32(v.as_f64()? as f32),
        Kind::Double => PValue::F64(v.as_f64()?),
        Kind::String => PValue::String(v.as_str()?.to_string()),
        Kind::Bytes => PValue::Bytes(
            base64::engine::general_purpose::STANDARD
                .decode(v.as_str()?)
                .ok()?
                .into(),
        ),
        Kind::Enum(_) => PValue::EnumNumber(i32::try_from(v.as_i64()?).ok()?),
        Kind::Message(m) => PValue::Message(from_json(m, v)),
    })
}

/// `2006-01-02T15:04:05Z`, or with microseconds for a MicroTime.
fn format_time(secs: i64, nanos: Option<i64>) -> String {
    let Ok(t) = k8s_openapi::jiff::Timestamp::new(secs, nanos.unwrap_or(0) as i32) else {
        return String::new();
    };
    if nanos.is_some() {
        t.strftime("%Y-%m-%dT%H:%M:%S.%6fZ").to_string()
    } else {
        t.strftime("%Y-%m-%dT%H:%M:%SZ").to_string()
    }
}

/// Nanoseconds as Go prints a time.Duration (`1h2m3.5s`, `150ms`).
fn format_duration(nanos: i64) -> String {
    if nanos == 0 {
        return "0s".into();
    }
    let sign = if nanos < 0 { "-" } else { "" };
    let n = nanos.unsigned_abs();
    if n < 1_000_000_000 {
        let (unit, div) = match n {
            0..1_000 => ("ns", 1),
            1_000..1_000_000 => ("µs", 1_000),
            _ => ("ms", 1_000_000),
        };
        return format!("{sign}{}{unit}", trim_fraction(n, div));
    }
    let (h, rest) = (n / 3_600_000_000_000, n % 3_600_000_000_000);
    let (m, s) = (rest / 60_000_000_000, rest % 60_000_000_000);
    let mut out = sign.to_string();
    if h > 0 {
        out += &format!("{h}h");
    }
    if h > 0 || m > 0 {
        out += &format!("{m}m");
    }
    out + &format!("{}s", trim_fraction(s, 1_000_000_000))
}

fn trim_fraction(n: u64, div: u64) -> String {
    let whole = n / div;
    let frac = n % div;
    if frac == 0 {
        return whole.to_string();
    }
    let width = div.ilog10() as usize;
    let f = format!("{frac:0width$}");
    format!("{whole}.{}", f.trim_end_matches('0'))
}

/// A Go duration string (`1h30m`, `2.5s`, `300ms`) in nanoseconds.
fn parse_duration(s: &str) -> Option<i64> {
    let (neg, mut rest) = match s.strip_prefix('-') {
        Some(r) => (true, r),
        None => (false, s.strip_prefix('+').unwrap_or(s)),
    };
    if rest == "0" {
        return Some(0);
    }
    let mut total: f64 = 0.0;
    while !rest.is_empty() {
        let num_end = rest.find(|c: char| !(c.is_ascii_digit() || c == '.'))?;
        let n: f64 = rest[..num_end].parse().ok()?;
        rest = &rest[num_end..];
        let unit_end = rest
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(rest.len());
        let scale = match &rest[..unit_end] {
            "ns" => 1.0,
            "us" | "µs" => 1e3,
            "ms" => 1e6,
            "s" => 1e9,
            "m" => 60e9,
            "h" => 3600e9,
            _ => return None,
        };
        total += n * scale;
        rest = &rest[unit_end..];
    }
    let n = total.round() as i64;
    Some(if neg { -n } else { n })
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::api::core::v1::{Pod, Secret};

    fn round_trip(obj: &Value) -> Value {
        let bytes = encode(obj).expect("a message for the kind");
        decode(&bytes).expect("decodes")
    }

    #[test]
    fn a_pod_survives_the_round_trip_with_its_special_fields() {
        let pod = json!({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": "p", "namespace": "default",
                "creationTimestamp": "2026-01-02T03:04:05Z",
                "labels": {"app": "a"},
                "managedFields": [{"manager": "kubectl", "operation": "Apply",
                    "apiVersion": "v1", "fieldsType": "FieldsV1",
                    "fieldsV1": {"f:metadata": {"f:labels": {".": {}}}}}]},
            "spec": {
                "terminationGracePeriodSeconds": 0,
                "containers": [{"name": "c", "image": "busybox",
                    "resources": {"limits": {"cpu": "500m", "memory": "64Mi"}},
                    "securityContext": {"allowPrivilegeEscalation": false, "runAsUser": 0},
                    "ports": [{"containerPort": 80, "protocol": "TCP"}],
                    "livenessProbe": {"httpGet": {"path": "/", "port": "http"}, "periodSeconds": 5},
                    "readinessProbe": {"tcpSocket": {"port": 8080}}}],
                "volumes": [{"name": "v", "emptyDir": {"sizeLimit": "1Gi"}},
                    {"name": "s", "secret": {"secretName": "x", "defaultMode": 420}}]},
            "status": {"phase": "Running"}
        });
        let back = round_trip(&pod);
        assert_eq!(back, pod);
        let typed: Pod = serde_json::from_value(back).expect("a Pod");
        assert_eq!(
            typed.spec.unwrap().containers[0]
                .security_context
                .as_ref()
                .unwrap()
                .allow_privilege_escalation,
            Some(false)
        );
    }

    #[test]
    fn zero_pointers_stay_and_zero_plain_fields_go() {
        let d = json!({
            "apiVersion": "apps/v1", "kind": "Deployment",
            "metadata": {"name": "d", "generateName": ""},
            "spec": {"replicas": 0, "paused": false, "minReadySeconds": 0,
                "selector": {"matchLabels": {"a": "b"}},
                "template": {"metadata": {"labels": {"a": "b"}},
                    "spec": {"containers": [{"name": "c", "image": "i", "imagePullPolicy": ""}]}}}
        });
        let back = round_trip(&d);
        assert_eq!(back["spec"]["replicas"], 0, "{back}");
        assert!(back["spec"].get("paused").is_none(), "{back}");
        assert!(back["spec"].get("minReadySeconds").is_none(), "{back}");
        assert!(back["metadata"].get("generateName").is_none(), "{back}");
        assert!(
            back["spec"]["template"]["spec"]["containers"][0]
                .get("imagePullPolicy")
                .is_none()
        );
        let _: Deployment = serde_json::from_value(back).expect("a Deployment");
    }

    #[test]
    fn bytes_lists_and_meta_kinds() {
        let s = json!({"apiVersion": "v1", "kind": "Secret", "metadata": {"name": "s"},
            "type": "Opaque", "data": {"k": "aGVsbG8="}});
        let back = round_trip(&s);
        assert_eq!(back, s);
        let _: Secret = serde_json::from_value(back).expect("a Secret");
        let status = json!({"apiVersion": "v1", "kind": "Status", "metadata": {},
            "status": "Failure", "message": "no", "reason": "NotFound", "code": 404,
            "details": {"name": "x", "kind": "pods"}});
        assert_eq!(round_trip(&status), status);
        let list = json!({"apiVersion": "v1", "kind": "PodList",
            "metadata": {"resourceVersion": "7"},
            "items": [{"metadata": {"name": "a"}}, {"metadata": {"name": "b"}}]});
        assert_eq!(round_trip(&list), list);
        assert!(encode(&json!({"apiVersion": "example.com/v1", "kind": "Widget"})).is_none());
        // A field whose protobuf name is not its JSON name (uID, uid).
        let tr = json!({"apiVersion": "authentication.k8s.io/v1", "kind": "TokenRequest",
            "metadata": {"name": "default"},
            "spec": {"audiences": ["api"], "expirationSeconds": 3600,
                "boundObjectRef": {"kind": "Pod", "apiVersion": "v1", "name": "p", "uid": "u-1"}},
            "status": {}});
        assert_eq!(round_trip(&tr), tr);
    }

    #[test]
    fn hostile_bodies_are_refused_not_trusted() {
        assert!(decode(b"{}").is_err(), "no prefix");
        assert!(decode(b"k8s\0\xff\xff\xff").is_err(), "no envelope");
        let mut pod =
            encode(&json!({"apiVersion": "v1", "kind": "Pod", "metadata": {"name": "p"}}))
                .expect("encodes");
        assert!(decode(&pod).is_ok());
        // The envelope cut short inside the object.
        pod.truncate(pod.len() - 2);
        assert!(decode(&pod).is_err(), "truncated");
        let widget = {
            let mut b = encode(&json!({"apiVersion": "v1", "kind": "Status"})).expect("encodes");
            let at = b
                .windows(6)
                .position(|w| w == b"Status")
                .expect("kind in envelope");
            b[at..at + 6].copy_from_slice(b"Widget");
            b
        };
        let e = decode(&widget).expect_err("an unknown kind");
        assert!(e.message.contains("Widget"), "{}", e.message);
    }

    #[test]
    fn durations_read_and_print_as_go_does() {
        for (s, n) in [
            ("0s", 0),
            ("1h0m0s", 3_600_000_000_000),
            ("1m30s", 90_000_000_000),
            ("1.5s", 1_500_000_000),
            ("150ms", 150_000_000),
        ] {
            assert_eq!(parse_duration(s), Some(n), "{s}");
            assert_eq!(format_duration(n), s);
        }
        assert_eq!(parse_duration("1x"), None);
    }
}

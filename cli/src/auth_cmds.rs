//! `weft auth can-i` and `weft auth whoami`: the questions `kubectl auth`
//! puts to the API (SelfSubjectAccessReview, SelfSubjectRulesReview,
//! SelfSubjectReview), with kubectl's answers.

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use weft_api::client::Client;
use weft_api::resources;

use crate::common::Common;

#[derive(Subcommand)]
pub enum AuthCmd {
    /// Whether you may do something: prints yes or no (and exits 0 or 1).
    CanI {
        /// The verb (get, list, create, delete, ... or *).
        verb: Option<String>,
        /// The resource (pods, deploy, deployments.apps, *), TYPE/NAME, or
        /// a path outside the resource tree (/metrics).
        resource: Option<String>,
        /// The object's name.
        name: Option<String>,
        /// A subresource (log, exec, status, scale).
        #[arg(long)]
        subresource: Option<String>,
        /// List everything you may do in the namespace instead.
        #[arg(long)]
        list: bool,
        /// In every namespace (a cluster-wide question).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Who the API takes you for: your user name and groups.
    Whoami {
        /// Output: json or yaml (default: a table).
        #[arg(short = 'o', long)]
        output: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

impl AuthCmd {
    pub fn common(&self) -> &Common {
        match self {
            AuthCmd::CanI { common, .. } | AuthCmd::Whoami { common, .. } => common,
        }
    }
}

/// (group, plural) of what a user names: a served kind by any of its
/// names, else `plural.group` or a bare plural as given (RBAC rules may
/// name resources Weft does not serve).
fn resource_of(name: &str) -> (String, String) {
    if name == "*" {
        return ("*".into(), "*".into());
    }
    if let Some(r) = resources::by_name(name) {
        return (r.group.to_string(), r.plural.to_string());
    }
    match name.split_once('.') {
        Some((plural, group)) => (group.to_string(), plural.to_string()),
        None => (String::new(), name.to_string()),
    }
}

async fn create(c: &Client, path: &str, body: &Value) -> Result<Value> {
    Ok(c.request(
        "POST",
        path,
        Some(body),
        "application/json",
        "application/json",
    )
    .await?
    .body)
}

pub async fn run(c: &Client, cmd: AuthCmd, ns: &str) -> Result<u8> {
    match cmd {
        AuthCmd::CanI {
            verb,
            resource,
            name,
            subresource,
            list,
            all_namespaces,
            ..
        } => {
            if list {
                if verb.is_some() {
                    bail!("--list takes no verb or resource");
                }
                return list_rules(c, ns).await;
            }
            let (Some(verb), Some(resource)) = (verb, resource) else {
                bail!("say what you want to do: weft auth can-i VERB RESOURCE [NAME]");
            };
            let attrs = if resource.starts_with('/') {
                json!({"nonResourceAttributes": {"verb": verb, "path": resource}})
            } else {
                let (kind, name) = match resource.split_once('/') {
                    Some((k, n)) if name.is_none() => (k.to_string(), Some(n.to_string())),
                    _ => (resource.clone(), name),
                };
                let (group, plural) = resource_of(&kind);
                let mut a = json!({"verb": verb, "group": group, "resource": plural});
                if !all_namespaces {
                    a["namespace"] = json!(ns);
                }
                if let Some(n) = name {
                    a["name"] = json!(n);
                }
                if let Some(s) = subresource {
                    a["subresource"] = json!(s);
                }
                json!({"resourceAttributes": a})
            };
            let review = create(
                c,
                "/apis/authorization.k8s.io/v1/selfsubjectaccessreviews",
                &json!({"apiVersion": "authorization.k8s.io/v1",
                    "kind": "SelfSubjectAccessReview", "spec": attrs}),
            )
            .await?;
            if review["status"]["allowed"] == true {
                println!("yes");
                Ok(0)
            } else {
                println!("no");
                Ok(1)
            }
        }
        AuthCmd::Whoami { output, .. } => {
            let review = create(
                c,
                "/apis/authentication.k8s.io/v1/selfsubjectreviews",
                &json!({"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"}),
            )
            .await?;
            match output.as_deref() {
                Some("json") => println!("{}", serde_json::to_string_pretty(&review)?),
                Some("yaml") => print!("{}", serde_norway::to_string(&review)?),
                Some(other) => bail!("unknown output {other:?}: json or yaml"),
                None => {
                    let info = &review["status"]["userInfo"];
                    let groups: Vec<&str> = info["groups"]
                        .as_array()
                        .into_iter()
                        .flatten()
                        .filter_map(Value::as_str)
                        .collect();
                    println!("ATTRIBUTE  VALUE");
                    println!(
                        "{:<11}{}",
                        "Username",
                        info["username"].as_str().unwrap_or_default()
                    );
                    if let Some(uid) = info["uid"].as_str().filter(|u| !u.is_empty()) {
                        println!("{:<11}{uid}", "UID");
                    }
                    println!("{:<11}[{}]", "Groups", groups.join(" "));
                }
            }
            Ok(0)
        }
    }
}

/// `can-i --list`: the rules that apply in `ns`, one line per rule.
async fn list_rules(c: &Client, ns: &str) -> Result<u8> {
    let review = create(
        c,
        "/apis/authorization.k8s.io/v1/selfsubjectrulesreviews",
        &json!({"apiVersion": "authorization.k8s.io/v1", "kind": "SelfSubjectRulesReview",
            "spec": {"namespace": ns}}),
    )
    .await?;
    let strs = |v: &Value| -> Vec<String> {
        v.as_array()
            .into_iter()
            .flatten()
            .filter_map(|s| s.as_str().map(String::from))
            .collect()
    };
    let mut rows: Vec<[String; 4]> = Vec::new();
    for r in review["status"]["resourceRules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        let groups = strs(&r["apiGroups"]);
        for res in strs(&r["resources"]) {
            for g in &groups {
                let name = if g.is_empty() {
                    res.clone()
                } else {
                    format!("{res}.{g}")
                };
                rows.push([
                    name,
                    String::new(),
                    format!("[{}]", strs(&r["resourceNames"]).join(" ")),
                    format!("[{}]", strs(&r["verbs"]).join(" ")),
                ]);
            }
        }
    }
    for r in review["status"]["nonResourceRules"]
        .as_array()
        .into_iter()
        .flatten()
    {
        for url in strs(&r["nonResourceURLs"]) {
            rows.push([
                String::new(),
                format!("[{url}]"),
                "[]".into(),
                format!("[{}]", strs(&r["verbs"]).join(" ")),
            ]);
        }
    }
    rows.sort();
    rows.dedup();
    let header = [
        "Resources".to_string(),
        "Non-Resource URLs".into(),
        "Resource Names".into(),
        "Verbs".into(),
    ];
    let widths: Vec<usize> = (0..4)
        .map(|i| {
            rows.iter()
                .map(|r| r[i].len())
                .chain([header[i].len()])
                .max()
                .unwrap_or(0)
        })
        .collect();
    for row in std::iter::once(&header).chain(rows.iter()) {
        let line: Vec<String> = row
            .iter()
            .zip(&widths)
            .map(|(c, w)| format!("{c:<w$}"))
            .collect();
        println!("{}", line.join("   ").trim_end());
    }
    Ok(0)
}

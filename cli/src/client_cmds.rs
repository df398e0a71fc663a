//! `weft apply/get/describe/delete/scale`: parse, call weft-api's client,
//! print.

use std::path::PathBuf;

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use weft_api::client::{self, Applied, Client, ClientError, collection_path, object_path};
use weft_api::printer::{self, TableOptions};
use weft_api::resources::{self, Resource};

pub use crate::common::Common;

#[derive(Subcommand)]
pub enum ClientCmd {
    /// Create or update objects from files, directories or stdin ("-").
    Apply {
        /// Manifest file, directory or "-"; may repeat.
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
        #[command(flatten)]
        common: Common,
    },
    /// List objects, or show some, as tables or YAML/JSON.
    Get {
        /// Kinds, comma-separated (pods, deploy, svc, ...), then names.
        #[arg(required = true)]
        args: Vec<String>,
        /// Output: wide, yaml, json or name.
        #[arg(short = 'o', long)]
        output: Option<String>,
        /// All namespaces.
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        /// Label selector (app=web,tier!=db).
        #[arg(short = 'l', long)]
        selector: Option<String>,
        /// Field selector (spec.nodeName=n1).
        #[arg(long)]
        field_selector: Option<String>,
        /// After listing, watch for changes.
        #[arg(short = 'w', long)]
        watch: bool,
        /// Tables without their header line.
        #[arg(long)]
        no_headers: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Show an object in detail, with its events.
    Describe {
        /// Kind, then names (or KIND/NAME).
        #[arg(required = true)]
        args: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Delete objects by kind and name, or those in manifests.
    Delete {
        /// Kind, then names (or KIND/NAME ...).
        args: Vec<String>,
        /// Delete what these manifests describe.
        #[arg(short = 'f', long = "filename")]
        files: Vec<PathBuf>,
        /// Do not fail when an object is already gone.
        #[arg(long)]
        ignore_not_found: bool,
        /// Seconds a pod gets to stop (default: its terminationGracePeriodSeconds).
        #[arg(long)]
        grace_period: Option<i64>,
        /// Delete at once, without waiting for the pod to stop (grace period 0).
        #[arg(long)]
        force: bool,
        /// Wait until the objects are gone (pods stop first), as kubectl does.
        #[arg(long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        wait: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Print a container's log (from its node's agent).
    Logs {
        /// The pod: NAME, pod/NAME, or TYPE/NAME for one of the pods of a Job, Deployment, ReplicaSet, StatefulSet, DaemonSet, ReplicationController or Service (as kubectl chooses it).
        pod: String,
        /// The container (default: the pod's only one).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Keep streaming what the container writes.
        #[arg(short = 'f', long)]
        follow: bool,
        /// Only the last N lines (-1: all).
        #[arg(long, allow_negative_numbers = true)]
        tail: Option<i64>,
        /// The log of the previous run (before the last restart).
        #[arg(short = 'p', long)]
        previous: bool,
        /// Only what was written in this last while (5s, 2m, 3h).
        #[arg(long, value_parser = humantime::parse_duration)]
        since: Option<std::time::Duration>,
        /// At most this many bytes.
        #[arg(long)]
        limit_bytes: Option<i64>,
        /// Each line with the time it was written (RFC 3339).
        #[arg(long)]
        timestamps: bool,
        #[command(flatten)]
        common: Common,
    },
    /// Run a command in a container; its output and exit code pass through.
    Exec {
        /// The pod: NAME, pod/NAME, or TYPE/NAME for one of the pods of a Job, Deployment, ReplicaSet, StatefulSet, DaemonSet, ReplicationController or Service (as kubectl chooses it).
        pod: String,
        /// The container (default: the pod's only one).
        #[arg(short = 'c', long)]
        container: Option<String>,
        /// Pass standard input to the command.
        #[arg(short = 'i', long)]
        stdin: bool,
        /// The command and its arguments.
        #[arg(last = true, required = true)]
        command: Vec<String>,
        #[command(flatten)]
        common: Common,
    },
    /// CPU and memory of nodes or pods (from the agents' cgroups).
    Top {
        /// nodes or pods.
        #[arg(value_parser = ["nodes", "node", "no", "pods", "pod", "po"])]
        what: String,
        /// All namespaces (pods).
        #[arg(short = 'A', long)]
        all_namespaces: bool,
        #[command(flatten)]
        common: Common,
    },
    /// The eBPF Service load-balancer of the nodes.
    #[command(subcommand)]
    Lb(LbCmd),
    /// The nodes' cluster DNS servers.
    #[command(subcommand)]
    Dns(DnsCmd),
    /// NetworkPolicy as the nodes enforce it.
    #[command(subcommand)]
    Policy(PolicyCmd),
    /// Mark a node unschedulable: no new pods go there.
    Cordon {
        /// The node.
        node: String,
    },
    /// Mark a node schedulable again.
    Uncordon {
        /// The node.
        node: String,
    },
    /// Cordon a node and evict its pods, keeping PodDisruptionBudgets.
    Drain {
        /// The node.
        node: String,
        /// Also delete pods that no controller manages (they are lost).
        #[arg(long)]
        force: bool,
        /// Leave DaemonSet-managed pods alone.
        #[arg(long)]
        ignore_daemonsets: bool,
        /// Also evict pods with emptyDir volumes (their data is lost).
        #[arg(long)]
        delete_emptydir_data: bool,
        /// Seconds each pod gets to stop (default: its own).
        #[arg(long)]
        grace_period: Option<i64>,
        /// Give up after this long (0s: never), as kubectl's --timeout.
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        timeout: std::time::Duration,
    },
    /// Follow, list, undo, restart, pause or resume a Deployment's or
    /// DaemonSet's rollouts.
    #[command(subcommand)]
    Rollout(crate::rollout_cmds::RolloutCmd),
    /// What you may do (RBAC), and who the API takes you for.
    #[command(subcommand)]
    Auth(crate::auth_cmds::AuthCmd),
    /// Set the replica count of a Deployment or ReplicaSet.
    Scale {
        /// KIND/NAME or KIND NAME.
        #[arg(required = true)]
        args: Vec<String>,
        /// The new replica count.
        #[arg(long)]
        replicas: u32,
        #[command(flatten)]
        common: Common,
    },
}

fn resource(name: &str) -> Result<&'static Resource> {
    resources::by_name(name).ok_or_else(|| {
        let known: Vec<&str> = resources::RESOURCES.iter().map(|r| r.plural).collect();
        anyhow::anyhow!(
            "the server doesn't have a resource type \"{name}\" (known: {})",
            known.join(", ")
        )
    })
}

/// "deploy/web pod/x" or "deploy web x" into (resource, name) pairs.
fn targets(args: &[String]) -> Result<Vec<(&'static Resource, String)>> {
    if args.is_empty() {
        bail!("name what: KIND NAME..., KIND/NAME..., or -f FILE");
    }
    if args[0].contains('/') {
        return args
            .iter()
            .map(|a| {
                let (k, n) = a
                    .split_once('/')
                    .ok_or_else(|| anyhow::anyhow!("{a}: expected KIND/NAME like the others"))?;
                Ok((resource(k)?, n.to_string()))
            })
            .collect();
    }
    let res = resource(&args[0])?;
    if args.len() == 1 {
        bail!("name the {} to act on", res.plural);
    }
    Ok(args[1..].iter().map(|n| (res, n.clone())).collect())
}

fn display_kind(res: &Resource) -> String {
    if res.group.is_empty() {
        res.singular.to_string()
    } else {
        format!("{}.{}", res.singular, res.group)
    }
}

pub async fn run(cmd: ClientCmd, kubeconfig: Option<PathBuf>) -> Result<u8> {
    let common = match &cmd {
        ClientCmd::Apply { common, .. }
        | ClientCmd::Get { common, .. }
        | ClientCmd::Describe { common, .. }
        | ClientCmd::Delete { common, .. }
        | ClientCmd::Scale { common, .. }
        | ClientCmd::Logs { common, .. }
        | ClientCmd::Exec { common, .. }
        | ClientCmd::Top { common, .. } => common.clone(),
        ClientCmd::Rollout(r) => r.common().clone(),
        ClientCmd::Auth(a) => a.common().clone(),
        ClientCmd::Lb(LbCmd::Show { common, .. })
        | ClientCmd::Policy(PolicyCmd::Show { common, .. } | PolicyCmd::Trace { common, .. }) => {
            common.clone()
        }
        ClientCmd::Lb(LbCmd::Trace { .. })
        | ClientCmd::Dns(_)
        | ClientCmd::Cordon { .. }
        | ClientCmd::Uncordon { .. }
        | ClientCmd::Drain { .. } => Common::default(),
    };
    let path = client::kubeconfig_path(kubeconfig.as_deref());
    let c = Client::from_kubeconfig(&path).await?;
    let ns = common
        .namespace
        .clone()
        .unwrap_or_else(|| c.default_namespace.clone());
    match cmd {
        ClientCmd::Apply { files, .. } => apply(&c, &files, common.namespace.as_deref()).await,
        ClientCmd::Rollout(r) => crate::rollout_cmds::run(&c, r, &ns).await,
        ClientCmd::Get {
            args,
            output,
            all_namespaces,
            selector,
            field_selector,
            watch,
            no_headers,
            ..
        } => {
            get(
                &c,
                !no_headers,
                &args,
                output.as_deref(),
                if all_namespaces {
                    None
                } else {
                    Some(ns.as_str())
                },
                selector,
                field_selector,
                watch,
            )
            .await
        }
        ClientCmd::Describe { args, .. } => {
            for (res, name) in targets(&args)? {
                let obj = c.get(&object_path(res, Some(&ns), &name)).await?;
                let events = events_of(&c, &obj).await;
                print!("{}", printer::describe(&obj, &events));
            }
            Ok(0)
        }
        ClientCmd::Delete {
            args,
            files,
            ignore_not_found,
            grace_period,
            force,
            wait,
            ..
        } => {
            if grace_period.is_some_and(|g| g < 0) {
                bail!("--grace-period must be 0 or more");
            }
            let grace = if force { Some(0) } else { grace_period };
            let mut body = json!({"propagationPolicy": "Background"});
            if let Some(g) = grace {
                body["gracePeriodSeconds"] = json!(g);
            }
            let mut pending = Vec::new();
            let mut todo: Vec<(&'static Resource, Option<String>, String)> = Vec::new();
            for f in &files {
                for doc in client::read_manifests(f)? {
                    let res = client::resource_of(&doc)?;
                    let name = doc.object["metadata"]["name"]
                        .as_str()
                        .unwrap_or_default()
                        .to_string();
                    let obj_ns = doc.object["metadata"]["namespace"]
                        .as_str()
                        .map(String::from)
                        .unwrap_or_else(|| ns.clone());
                    todo.push((res, Some(obj_ns), name));
                }
            }
            if !args.is_empty() {
                for (res, name) in targets(&args)? {
                    todo.push((res, Some(ns.clone()), name));
                }
            }
            if todo.is_empty() {
                bail!("name what to delete: KIND NAME..., KIND/NAME..., or -f FILE");
            }
            let mut failed = false;
            for (res, obj_ns, name) in todo {
                match c
                    .request(
                        "DELETE",
                        &object_path(res, obj_ns.as_deref(), &name),
                        Some(&body),
                        "application/json",
                        "application/json",
                    )
                    .await
                {
                    Ok(r) => {
                        println!("{} \"{name}\" deleted", display_kind(res));
                        // Still there: being deleted gracefully.
                        if r.body["metadata"]["deletionTimestamp"].is_string() {
                            let secs = r.body["metadata"]["deletionGracePeriodSeconds"]
                                .as_u64()
                                .unwrap_or(30);
                            let uid = r.body["metadata"]["uid"].as_str().map(String::from);
                            pending.push((object_path(res, obj_ns.as_deref(), &name), secs, uid));
                        }
                    }
                    Err(ClientError::Api(e)) if e.code == 404 && ignore_not_found => {}
                    Err(e) => {
                        eprintln!("error: {e}");
                        failed = true;
                    }
                }
            }
            if wait {
                for (path, secs, uid) in pending {
                    let deadline =
                        std::time::Instant::now() + std::time::Duration::from_secs(secs + 30);
                    loop {
                        match c.get(&path).await {
                            Err(ClientError::Api(e)) if e.code == 404 => break,
                            // Gone, and another object of that name made
                            // since (a StatefulSet's pod comes back so).
                            Ok(o)
                                if uid.is_some()
                                    && o["metadata"]["uid"].as_str() != uid.as_deref() =>
                            {
                                break;
                            }
                            _ if std::time::Instant::now() > deadline => {
                                eprintln!(
                                    "error: {path} is still being deleted after {}s",
                                    secs + 30
                                );
                                failed = true;
                                break;
                            }
                            _ => tokio::time::sleep(std::time::Duration::from_millis(200)).await,
                        }
                    }
                }
            }
            Ok(failed as u8)
        }
        ClientCmd::Logs {
            pod,
            container,
            follow,
            tail,
            previous,
            since,
            limit_bytes,
            timestamps,
            ..
        } => {
            let opts = crate::pod_cmds::LogOptions {
                follow,
                tail,
                previous,
                since,
                limit_bytes,
                timestamps,
            };
            crate::pod_cmds::logs(&c, &ns, &pod, container, opts).await
        }
        ClientCmd::Exec {
            pod,
            container,
            stdin,
            command,
            ..
        } => crate::pod_cmds::exec(&c, &ns, &pod, container, stdin, command).await,
        ClientCmd::Auth(a) => crate::auth_cmds::run(&c, a, &ns).await,
        ClientCmd::Top {
            what,
            all_namespaces,
            ..
        } => crate::pod_cmds::top(&c, &what, (!all_namespaces).then_some(ns.as_str())).await,
        ClientCmd::Lb(LbCmd::Show { node, service, .. }) => {
            crate::lb_cmds::show(&c, node.as_deref(), service.as_deref(), &ns).await
        }
        ClientCmd::Lb(LbCmd::Trace { node, src, dst, .. }) => {
            crate::lb_cmds::trace(&c, &node, &src, &dst).await
        }
        ClientCmd::Policy(PolicyCmd::Show { pod, output, .. }) => {
            crate::policy_cmds::show(&c, &ns, &pod, output.as_deref()).await
        }
        ClientCmd::Policy(PolicyCmd::Trace {
            src,
            dst,
            port,
            output,
            ..
        }) => crate::policy_cmds::trace(&c, &ns, &src, &dst, &port, output.as_deref()).await,
        ClientCmd::Dns(DnsCmd::Stats { node, output }) => {
            crate::lb_cmds::dns_stats(&c, node.as_deref(), output.as_deref()).await
        }
        ClientCmd::Cordon { node } => {
            crate::node_cmds::cordon(&c, &node, true).await?;
            Ok(0)
        }
        ClientCmd::Uncordon { node } => {
            crate::node_cmds::cordon(&c, &node, false).await?;
            Ok(0)
        }
        ClientCmd::Drain {
            node,
            force,
            ignore_daemonsets,
            delete_emptydir_data,
            grace_period,
            timeout,
        } => {
            let opts = crate::node_cmds::DrainOptions {
                force,
                ignore_daemonsets,
                delete_emptydir_data,
                grace_period,
                timeout,
            };
            crate::node_cmds::drain(&c, &node, &opts).await?;
            Ok(0)
        }
        ClientCmd::Scale { args, replicas, .. } => {
            for (res, name) in targets(&args)? {
                if !res.subresources.contains(&"scale") {
                    bail!(
                        "{} cannot be scaled; Deployments and ReplicaSets can",
                        res.plural
                    );
                }
                let path = format!("{}/scale", object_path(res, Some(&ns), &name));
                c.request(
                    "PATCH",
                    &path,
                    Some(&json!({"spec": {"replicas": replicas}})),
                    "application/merge-patch+json",
                    "application/json",
                )
                .await?;
                println!("{}/{name} scaled", display_kind(res));
            }
            Ok(0)
        }
    }
}

async fn apply(c: &Client, files: &[PathBuf], namespace: Option<&str>) -> Result<u8> {
    let mut docs = Vec::new();
    for f in files {
        docs.extend(client::read_manifests(f)?);
    }
    if docs.is_empty() {
        bail!(
            "no objects found in {}",
            files
                .iter()
                .map(|f| f.display().to_string())
                .collect::<Vec<_>>()
                .join(", ")
        );
    }
    // Check every document before writing any, so a typo in the last one
    // does not leave the first ones applied alone.
    for doc in &docs {
        client::resource_of(doc)?;
        if doc.object["metadata"]["name"]
            .as_str()
            .is_none_or(str::is_empty)
        {
            bail!("{}: metadata.name is required", doc.origin);
        }
    }
    // Namespaces first, so objects in them can be created in the same run;
    // then service accounts, so pods can run as them.
    docs.sort_by_key(|d| match d.object["kind"].as_str() {
        Some("Namespace") => 0,
        Some("ServiceAccount") => 1,
        _ => 2,
    });
    // A dry run of every document first (the server checks all it would
    // check, stores nothing): one bad document means none is written.
    let new_namespaces: Vec<&str> = docs
        .iter()
        .filter(|d| d.object["kind"] == "Namespace")
        .filter_map(|d| d.object["metadata"]["name"].as_str())
        .collect();
    let new_accounts: Vec<&str> = docs
        .iter()
        .filter(|d| d.object["kind"] == "ServiceAccount")
        .filter_map(|d| d.object["metadata"]["name"].as_str())
        .collect();
    let mut refused = false;
    for doc in &docs {
        match c.apply(doc, namespace, true).await {
            Ok(_) => {}
            // A pod of a service account this same apply makes.
            Err(ClientError::Api(e))
                if e.code == 403
                    && e.kind.as_deref() == Some("serviceaccounts")
                    && e.name.as_deref().is_some_and(|n| new_accounts.contains(&n)) => {}
            // Its namespace is made by this same apply.
            Err(ClientError::Api(e))
                if e.code == 404
                    && e.kind.as_deref() == Some("namespaces")
                    && e.name
                        .as_deref()
                        .is_some_and(|n| new_namespaces.contains(&n)) => {}
            Err(ClientError::Api(e)) => {
                eprintln!("error: {}", e.message);
                for cause in e.causes.iter().filter(|c| !e.message.contains(&c.message)) {
                    eprintln!("  {}: {}", cause.field, cause.message);
                }
                refused = true;
            }
            Err(e) => {
                eprintln!("error: {e}");
                refused = true;
            }
        }
    }
    if refused {
        eprintln!("nothing was applied");
        return Ok(1);
    }
    let mut failed = false;
    for doc in &docs {
        match c.apply(doc, namespace, false).await {
            Ok((outcome, res, name, warnings)) => {
                for w in warnings {
                    eprintln!("Warning: {}: {w}", doc.origin);
                }
                let word = match outcome {
                    Applied::Created => "created",
                    Applied::Configured => "configured",
                    Applied::Unchanged => "unchanged",
                };
                println!("{}/{name} {word}", display_kind(res));
            }
            Err(ClientError::Api(e)) => {
                eprintln!("error: {}", e.message);
                for cause in e.causes.iter().filter(|c| !e.message.contains(&c.message)) {
                    eprintln!("  {}: {}", cause.field, cause.message);
                }
                failed = true;
            }
            Err(e) => {
                eprintln!("error: {e}");
                failed = true;
            }
        }
    }
    Ok(failed as u8)
}

async fn events_of(c: &Client, obj: &Value) -> Vec<Value> {
    let ns = obj["metadata"]["namespace"].as_str().unwrap_or("default");
    let name = obj["metadata"]["name"].as_str().unwrap_or_default();
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
    let sel = format!("involvedObject.name={name},involvedObject.uid={uid}");
    let path = format!(
        "/api/v1/namespaces/{ns}/events?fieldSelector={}",
        form_encode(&sel)
    );
    let mut events = c
        .get(&path)
        .await
        .ok()
        .map(|l| l["items"].as_array().cloned().unwrap_or_default())
        .unwrap_or_default();
    events.sort_by(|a, b| {
        a["lastTimestamp"]
            .as_str()
            .cmp(&b["lastTimestamp"].as_str())
    });
    events
}

fn form_encode(s: &str) -> String {
    s.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            other => format!("%{other:02X}"),
        })
        .collect()
}

fn query(selector: &Option<String>, fields: &Option<String>, extra: &[(&str, &str)]) -> String {
    let mut parts: Vec<String> = Vec::new();
    if let Some(s) = selector {
        parts.push(format!("labelSelector={}", form_encode(s)));
    }
    if let Some(f) = fields {
        parts.push(format!("fieldSelector={}", form_encode(f)));
    }
    for (k, v) in extra {
        parts.push(format!("{k}={}", form_encode(v)));
    }
    if parts.is_empty() {
        String::new()
    } else {
        format!("?{}", parts.join("&"))
    }
}

#[allow(clippy::too_many_arguments)]
async fn get(
    c: &Client,
    headers: bool,
    args: &[String],
    output: Option<&str>,
    ns: Option<&str>,
    selector: Option<String>,
    fields: Option<String>,
    watch: bool,
) -> Result<u8> {
    let kinds: Vec<&'static Resource> = if args[0].contains('/') {
        Vec::new()
    } else {
        let mut kinds = Vec::new();
        for name in args[0].split(',') {
            if name == "all" {
                // kubectl's category: what a user usually means by "everything".
                kinds.extend(
                    resources::RESOURCES
                        .iter()
                        .filter(|r| r.categories.contains(&"all")),
                );
            } else {
                kinds.push(resource(name)?);
            }
        }
        kinds
    };
    let named: Vec<(&'static Resource, String)> = if args[0].contains('/') {
        targets(args)?
    } else {
        args[1..]
            .iter()
            .flat_map(|n| kinds.iter().map(move |r| (*r, n.clone())))
            .collect()
    };
    let wide = output == Some("wide");
    match output {
        None | Some("wide") | Some("yaml") | Some("json") | Some("name") => {}
        Some(other) => bail!("unknown output format {other:?}: use wide, yaml, json or name"),
    }
    let several = kinds.len() > 1
        || named
            .iter()
            .map(|(r, _)| r.plural)
            .collect::<std::collections::HashSet<_>>()
            .len()
            > 1;
    let mut objects: Vec<(&'static Resource, Value)> = Vec::new();
    let mut tables: Vec<(&'static Resource, Value)> = Vec::new();
    let structured = matches!(output, Some("yaml" | "json" | "name"));
    if named.is_empty() {
        for res in &kinds {
            let path = format!(
                "{}{}",
                collection_path(res, ns),
                query(&selector, &fields, &[])
            );
            if structured {
                for item in c.get(&path).await?["items"]
                    .as_array()
                    .cloned()
                    .unwrap_or_default()
                {
                    objects.push((res, item));
                }
            } else {
                tables.push((res, c.table(&path).await?));
            }
        }
    } else {
        for (res, name) in &named {
            let path = object_path(res, ns.or(Some("default")), name);
            if structured {
                objects.push((res, c.get(&path).await?));
            } else {
                let t = c.table(&path).await?;
                // Several names of one kind make one table, as kubectl prints them.
                match tables.last_mut() {
                    Some((last, prev)) if last.plural == res.plural => {
                        let rows = t["rows"].as_array().cloned().unwrap_or_default();
                        if let Some(r) = prev["rows"].as_array_mut() {
                            r.extend(rows);
                        }
                    }
                    _ => tables.push((res, t)),
                }
            }
        }
    }
    // Column widths of the last table printed, which watch rows follow.
    let mut widths: Vec<usize> = Vec::new();
    match output {
        Some("json") | Some("yaml") => {
            let doc = if objects.len() == 1 && !named.is_empty() {
                objects[0].1.clone()
            } else {
                json!({"apiVersion": "v1", "kind": "List", "metadata": {}, "items": objects.iter().map(|(_, o)| o.clone()).collect::<Vec<_>>()})
            };
            if output == Some("json") {
                println!("{}", serde_json::to_string_pretty(&doc)?);
            } else {
                print!("{}", serde_norway::to_string(&doc)?);
            }
        }
        Some("name") => {
            for (res, o) in &objects {
                println!(
                    "{}/{}",
                    display_kind(res),
                    o["metadata"]["name"].as_str().unwrap_or_default()
                );
            }
        }
        _ => {
            let mut printed = false;
            for (res, t) in tables.iter() {
                if t["rows"].as_array().is_none_or(Vec::is_empty) {
                    continue;
                }
                if printed {
                    println!();
                }
                let prefix = several.then(|| format!("{}/", display_kind(res)));
                let lines = printer::table_lines(
                    t,
                    TableOptions {
                        wide,
                        namespace: ns.is_none(),
                        headers,
                        name_prefix: prefix.as_deref(),
                    },
                );
                widths.clear();
                print!("{}", printer::align_with(&lines, &mut widths));
                printed = true;
            }
            if !printed && !watch {
                match ns {
                    Some(ns) if kinds.iter().any(|r| r.namespaced) => {
                        eprintln!("No resources found in {ns} namespace.")
                    }
                    _ => eprintln!("No resources found"),
                }
            }
        }
    }
    if watch {
        let (res, rv) = match tables.first().or(objects.first()) {
            Some((res, v)) => (
                *res,
                v["metadata"]["resourceVersion"]
                    .as_str()
                    .unwrap_or("0")
                    .to_string(),
            ),
            None => (
                kinds.first().copied().unwrap_or_else(|| named[0].0),
                "0".to_string(),
            ),
        };
        let mut extra = vec![("watch", "1"), ("resourceVersion", rv.as_str())];
        let name_sel;
        if let Some((_, name)) = named.first() {
            name_sel = format!("metadata.name={name}");
            extra.push(("fieldSelector", name_sel.as_str()));
        }
        let path = format!(
            "{}{}",
            collection_path(res, ns),
            query(&selector, &fields, &extra)
        );
        let table = !structured;
        let mut columns = tables
            .first()
            .map(|(_, t)| t["columnDefinitions"].clone())
            .unwrap_or(Value::Null);
        c.watch(&path, table, |event| {
            let obj = &event["object"];
            if event["type"] == "ERROR" {
                eprintln!(
                    "error: {}",
                    obj["message"].as_str().unwrap_or("watch failed")
                );
                return false;
            }
            if event["type"] == "BOOKMARK" {
                return true;
            }
            if table {
                // The server sends the column definitions with the first
                // event only, as kube-apiserver does.
                let mut t = obj.clone();
                if t["columnDefinitions"].as_array().is_none_or(Vec::is_empty) {
                    t["columnDefinitions"] = columns.clone();
                } else {
                    columns = t["columnDefinitions"].clone();
                }
                let lines = printer::table_lines(
                    &t,
                    TableOptions {
                        wide,
                        namespace: ns.is_none(),
                        headers: false,
                        name_prefix: None,
                    },
                );
                print!("{}", printer::align_with(&lines, &mut widths));
            } else if output == Some("json") {
                println!("{}", serde_json::to_string(obj).unwrap_or_default());
            } else {
                print!("---\n{}", serde_norway::to_string(obj).unwrap_or_default());
            }
            true
        })
        .await?;
    }
    Ok(0)
}

/// `weft policy ...`.
#[derive(clap::Subcommand)]
pub enum PolicyCmd {
    /// What applies to a pod on its node: the policies that select it,
    /// its isolation, its rule entries, its counters (packets denied, new
    /// flows allowed), and any problem (a full map).
    Show {
        /// The pod (NAME in the namespace, or NAMESPACE/NAME).
        pod: String,
        /// `json` for the agent's view as one JSON object.
        #[arg(short = 'o', long, value_parser = ["json"])]
        output: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Whether a new flow from one pod to another is allowed or denied, and
    /// which policy or default decided: egress on the source's node, then
    /// ingress on the destination's, from the maps the programs read.
    Trace {
        /// The source pod (NAME or NAMESPACE/NAME).
        src: String,
        /// The destination pod (NAME or NAMESPACE/NAME).
        dst: String,
        /// PORT/PROTO, e.g. 80/TCP (PROTO: TCP, UDP or SCTP; default TCP).
        port: String,
        /// `json` for both directions' verdicts as JSON.
        #[arg(short = 'o', long, value_parser = ["json"])]
        output: Option<String>,
        #[command(flatten)]
        common: Common,
    },
}

/// `weft dns ...`.
#[derive(clap::Subcommand)]
pub enum DnsCmd {
    /// What each node's DNS server answered since its agent started:
    /// queries, answers from the cluster zone, forwarded lookups (the cache
    /// answers many), search-path shortcuts, SERVFAIL and REFUSED.
    Stats {
        /// The node to ask (default: every node).
        #[arg(long)]
        node: Option<String>,
        /// `json` for one JSON object per node, by node name.
        #[arg(short = 'o', long, value_parser = ["json"])]
        output: Option<String>,
    },
}

/// `weft lb ...`.
#[derive(clap::Subcommand)]
pub enum LbCmd {
    /// What a node's maps hold per service: frontends, backends with their
    /// state and Maglev slots, counters, and the maps' fill levels.
    Show {
        /// The node to ask (default: every node).
        #[arg(long)]
        node: Option<String>,
        /// Only this Service (NAME in the namespace, or NAMESPACE/NAME).
        service: Option<String>,
        #[command(flatten)]
        common: Common,
    },
    /// Which backend a flow goes to on a node, and why: an established
    /// flow's connection-tracking entry, session affinity, or its Maglev slot.
    /// This is the packet path (tc); pods' own sockets are given their
    /// backend at connect() by socket cookie and are not tracked per flow.
    Trace {
        /// The node whose maps to read.
        #[arg(long)]
        node: String,
        /// The client: IP, or IP:PORT for the exact Maglev slot.
        src: String,
        /// The destination: IP:PORT/PROTO (PROTO is TCP or UDP).
        dst: String,
    },
}

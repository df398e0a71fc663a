//! `weft rollout status|history|undo|restart|pause|resume`, as kubectl's
//! for Deployments, DaemonSets and StatefulSets: a Deployment's revisions
//! are its ReplicaSets (`deployment.kubernetes.io/revision`), a
//! DaemonSet's and a StatefulSet's their ControllerRevisions; undo writes an earlier revision's template back
//! into the object (the controller then rolls it out), restart changes a
//! template annotation, pause and resume set `spec.paused`.

use std::time::{Duration, Instant};

use anyhow::{Result, bail};
use clap::Subcommand;
use serde_json::{Value, json};
use weft_api::client::{Client, collection_path, object_path};
use weft_api::resources::{self, Resource};

use crate::common::Common;

const REVISION: &str = "deployment.kubernetes.io/revision";
const CHANGE_CAUSE: &str = "kubernetes.io/change-cause";
const HASH_LABEL: &str = "pod-template-hash";
const RESTARTED_AT: &str = "kubectl.kubernetes.io/restartedAt";

#[derive(Subcommand)]
pub enum RolloutCmd {
    /// Wait until the rollout is done, printing its progress.
    Status {
        /// deployment/NAME, daemonset/NAME or statefulset/NAME.
        target: String,
        /// Give up after this long (0s: never).
        #[arg(long, value_parser = humantime::parse_duration, default_value = "0s")]
        timeout: Duration,
        /// Only say where the rollout is now, without waiting.
        #[arg(short = 'w', long, default_value_t = true, action = clap::ArgAction::Set, num_args = 0..=1, default_missing_value = "true")]
        watch: bool,
        #[command(flatten)]
        common: Common,
    },
    /// List the revisions, or show one.
    History {
        /// deployment/NAME, daemonset/NAME or statefulset/NAME.
        target: String,
        /// Show this revision's pod template.
        #[arg(long)]
        revision: Option<i64>,
        #[command(flatten)]
        common: Common,
    },
    /// Go back to the previous revision (or --to-revision).
    Undo {
        /// deployment/NAME, daemonset/NAME or statefulset/NAME.
        target: String,
        /// The revision to go back to (0: the one before the current).
        #[arg(long, default_value_t = 0)]
        to_revision: i64,
        #[command(flatten)]
        common: Common,
    },
    /// Replace every pod, one step at a time, with the same template.
    Restart {
        /// deployment/NAME, daemonset/NAME or statefulset/NAME.
        target: String,
        #[command(flatten)]
        common: Common,
    },
    /// Stop rolling out template changes (Deployments).
    Pause {
        /// deployment/NAME.
        target: String,
        #[command(flatten)]
        common: Common,
    },
    /// Roll out template changes again (Deployments).
    Resume {
        /// deployment/NAME.
        target: String,
        #[command(flatten)]
        common: Common,
    },
}

impl RolloutCmd {
    /// The namespace options of the command.
    pub fn common(&self) -> &Common {
        match self {
            Self::Status { common, .. }
            | Self::History { common, .. }
            | Self::Undo { common, .. }
            | Self::Restart { common, .. }
            | Self::Pause { common, .. }
            | Self::Resume { common, .. } => common,
        }
    }
}

/// The workloads rollouts apply to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Workload {
    Deployment,
    DaemonSet,
    StatefulSet,
}

fn target(arg: &str) -> Result<(Workload, &'static Resource, String)> {
    let Some((kind, name)) = arg.split_once('/') else {
        bail!("{arg}: expected KIND/NAME, as deployment/web");
    };
    let res = resources::by_name(kind)
        .ok_or_else(|| anyhow::anyhow!("the server doesn't have a resource type \"{kind}\""))?;
    let w = match res.kind {
        "Deployment" => Workload::Deployment,
        "DaemonSet" => Workload::DaemonSet,
        "StatefulSet" => Workload::StatefulSet,
        other => bail!("no rollouts for {other}: only deployments, daemonsets and statefulsets"),
    };
    Ok((w, res, name.to_string()))
}

fn shown(res: &Resource, name: &str) -> String {
    format!("{}.{}/{name}", res.singular, res.group)
}

pub async fn run(c: &Client, cmd: RolloutCmd, ns: &str) -> Result<u8> {
    match cmd {
        RolloutCmd::Status {
            target: t,
            timeout,
            watch,
            ..
        } => {
            let (w, res, name) = target(&t)?;
            status(c, w, res, ns, &name, timeout, watch).await
        }
        RolloutCmd::History {
            target: t,
            revision,
            ..
        } => {
            let (w, res, name) = target(&t)?;
            history(c, w, res, ns, &name, revision).await
        }
        RolloutCmd::Undo {
            target: t,
            to_revision,
            ..
        } => {
            let (w, res, name) = target(&t)?;
            undo(c, w, res, ns, &name, to_revision).await
        }
        RolloutCmd::Restart { target: t, .. } => {
            let (_, res, name) = target(&t)?;
            let path = object_path(res, Some(ns), &name);
            let obj = c.get(&path).await?;
            if obj["spec"]["paused"] == true {
                bail!(
                    "can't restart paused {} (run rollout resume first)",
                    res.singular
                );
            }
            let now = weft_api::meta::now_time();
            let patch =
                json!({"spec": {"template": {"metadata": {"annotations": {RESTARTED_AT: now}}}}});
            c.request(
                "PATCH",
                &path,
                Some(&patch),
                "application/strategic-merge-patch+json",
                "application/json",
            )
            .await?;
            println!("{} restarted", shown(res, &name));
            Ok(0)
        }
        RolloutCmd::Pause { target: t, .. } => pause(c, &t, ns, true).await,
        RolloutCmd::Resume { target: t, .. } => pause(c, &t, ns, false).await,
    }
}

/// Sets a Deployment's `spec.paused`.
async fn pause(c: &Client, t: &str, ns: &str, on: bool) -> Result<u8> {
    let (w, res, name) = target(t)?;
    let verb = if on { "pausing" } else { "resuming" };
    let path = object_path(res, Some(ns), &name);
    // A missing object is NotFound first, as kubectl says.
    let obj = c.get(&path).await?;
    if w != Workload::Deployment {
        bail!(
            "{}.{} \"{name}\" {verb} is not supported",
            res.plural,
            res.group
        );
    }
    let paused = obj["spec"]["paused"] == true;
    if paused == on {
        let state = if on { "paused" } else { "not paused" };
        bail!("{}.{} \"{name}\" is {state}", res.plural, res.group);
    }
    c.request(
        "PATCH",
        &path,
        Some(&json!({"spec": {"paused": on}})),
        "application/merge-patch+json",
        "application/json",
    )
    .await?;
    println!(
        "{} {}",
        shown(res, &name),
        if on { "paused" } else { "resumed" }
    );
    Ok(0)
}

/// Where the rollout is: `Ok(None)` when done, else what it waits for.
fn progress(w: Workload, name: &str, obj: &Value) -> Result<Option<String>> {
    let n = |v: &Value| v.as_i64().unwrap_or(0);
    let generation = n(&obj["metadata"]["generation"]);
    let observed = n(&obj["status"]["observedGeneration"]);
    let st = &obj["status"];
    match w {
        Workload::Deployment => {
            if generation > observed {
                return Ok(Some(
                    "Waiting for deployment spec update to be observed...".into(),
                ));
            }
            let deadline =
                st["conditions"].as_array().into_iter().flatten().any(|c| {
                    c["type"] == "Progressing" && c["reason"] == "ProgressDeadlineExceeded"
                });
            if deadline {
                bail!("deployment \"{name}\" exceeded its progress deadline");
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let (updated, replicas, available) = (
                n(&st["updatedReplicas"]),
                n(&st["replicas"]),
                n(&st["availableReplicas"]),
            );
            Ok(if updated < want {
                Some(format!(
                    "Waiting for deployment \"{name}\" rollout to finish: {updated} out of {want} new replicas have been updated..."
                ))
            } else if replicas > updated {
                Some(format!(
                    "Waiting for deployment \"{name}\" rollout to finish: {} old replicas are pending termination...",
                    replicas - updated
                ))
            } else if available < updated {
                Some(format!(
                    "Waiting for deployment \"{name}\" rollout to finish: {available} of {updated} updated replicas are available..."
                ))
            } else {
                None
            })
        }
        Workload::StatefulSet => {
            if obj["spec"]["updateStrategy"]["type"] != "RollingUpdate" {
                bail!("rollout status is only available for RollingUpdate strategy type");
            }
            if observed == 0 || generation > observed {
                return Ok(Some(
                    "Waiting for statefulset spec update to be observed...".into(),
                ));
            }
            let want = obj["spec"]["replicas"].as_i64().unwrap_or(1);
            let ready = n(&st["readyReplicas"]);
            if ready < want {
                return Ok(Some(format!(
                    "Waiting for {} pods to be ready...",
                    want - ready
                )));
            }
            let updated = n(&st["updatedReplicas"]);
            // As kubectl: a partition that is set (0 by default) makes it
            // a partitioned roll out.
            let partition = &obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"];
            if let Some(partition) = partition.as_i64() {
                return Ok((updated < want - partition).then(|| format!(
                    "Waiting for partitioned roll out to finish: {updated} out of {} new pods have been updated...",
                    want - partition
                )));
            }
            let (update, current) = (
                st["updateRevision"].as_str().unwrap_or_default(),
                st["currentRevision"].as_str().unwrap_or_default(),
            );
            Ok((update != current).then(|| format!(
                "waiting for statefulset rolling update to complete {updated} pods at revision {update}..."
            )))
        }
        Workload::DaemonSet => {
            if obj["spec"]["updateStrategy"]["type"] != "RollingUpdate" {
                bail!("rollout status is only available for RollingUpdate strategy type");
            }
            if generation > observed {
                return Ok(Some(
                    "Waiting for daemon set spec update to be observed...".into(),
                ));
            }
            let desired = n(&st["desiredNumberScheduled"]);
            let (updated, available) =
                (n(&st["updatedNumberScheduled"]), n(&st["numberAvailable"]));
            Ok(if updated < desired {
                Some(format!(
                    "Waiting for daemon set \"{name}\" rollout to finish: {updated} out of {desired} new pods have been updated..."
                ))
            } else if available < desired {
                Some(format!(
                    "Waiting for daemon set \"{name}\" rollout to finish: {available} of {desired} updated pods are available..."
                ))
            } else {
                None
            })
        }
    }
}

async fn status(
    c: &Client,
    w: Workload,
    res: &Resource,
    ns: &str,
    name: &str,
    timeout: Duration,
    watch: bool,
) -> Result<u8> {
    let path = object_path(res, Some(ns), name);
    let start = Instant::now();
    let mut last = String::new();
    loop {
        let obj = c.get(&path).await?;
        match progress(w, name, &obj)? {
            None => {
                match w {
                    Workload::Deployment => {
                        println!("deployment \"{name}\" successfully rolled out")
                    }
                    Workload::DaemonSet => {
                        println!("daemon set \"{name}\" successfully rolled out")
                    }
                    Workload::StatefulSet => {
                        let st = &obj["status"];
                        if obj["spec"]["updateStrategy"]["rollingUpdate"]["partition"].is_i64() {
                            println!(
                                "partitioned roll out complete: {} new pods have been updated...",
                                st["updatedReplicas"].as_i64().unwrap_or(0)
                            );
                        } else {
                            println!(
                                "statefulset rolling update complete {} pods at revision {}...",
                                st["currentReplicas"].as_i64().unwrap_or(0),
                                st["currentRevision"].as_str().unwrap_or_default()
                            );
                        }
                    }
                }
                return Ok(0);
            }
            Some(msg) => {
                if msg != last {
                    println!("{msg}");
                    last = msg;
                }
                if !watch {
                    return Ok(0);
                }
            }
        }
        if !timeout.is_zero() && start.elapsed() >= timeout {
            bail!("timed out waiting for the condition");
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

/// The object's revisions, oldest first: (number, change-cause, its
/// revision object: a ReplicaSet or a ControllerRevision).
async fn revisions(
    c: &Client,
    w: Workload,
    ns: &str,
    obj: &Value,
) -> Result<Vec<(i64, String, Value)>> {
    let uid = obj["metadata"]["uid"].as_str().unwrap_or_default();
    let kind = if w == Workload::Deployment {
        "replicasets"
    } else {
        "controllerrevisions"
    };
    let res = resources::by_name(kind).expect("a served kind");
    let list = c.get(&collection_path(res, Some(ns))).await?;
    let mut out: Vec<(i64, String, Value)> = list["items"]
        .as_array()
        .into_iter()
        .flatten()
        .filter(|o| {
            o["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .any(|r| r["uid"] == uid && r["controller"] == true)
        })
        .map(|o| {
            let number = match w {
                Workload::Deployment => o["metadata"]["annotations"][REVISION]
                    .as_str()
                    .and_then(|r| r.parse().ok())
                    .unwrap_or(0),
                Workload::DaemonSet | Workload::StatefulSet => o["revision"].as_i64().unwrap_or(0),
            };
            let cause = o["metadata"]["annotations"][CHANGE_CAUSE]
                .as_str()
                .unwrap_or("<none>")
                .to_string();
            (number, cause, o.clone())
        })
        .collect();
    out.sort_by_key(|r| r.0);
    Ok(out)
}

/// The pod template a revision holds (without its hash label).
fn revision_template(w: Workload, rev: &Value) -> Value {
    let mut t = match w {
        Workload::Deployment => rev["spec"]["template"].clone(),
        Workload::DaemonSet | Workload::StatefulSet => {
            weft_api::revision::template_of(&rev["data"])
        }
    };
    if let Some(labels) = t["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
        labels.remove("controller-revision-hash");
    }
    t
}

async fn history(
    c: &Client,
    w: Workload,
    res: &Resource,
    ns: &str,
    name: &str,
    revision: Option<i64>,
) -> Result<u8> {
    let obj = c.get(&object_path(res, Some(ns), name)).await?;
    let revs = revisions(c, w, ns, &obj).await?;
    if let Some(n) = revision {
        let Some((_, _, rev)) = revs.iter().find(|r| r.0 == n) else {
            bail!("unable to find the specified revision");
        };
        println!("{} with revision #{n}", shown(res, name));
        print!(
            "{}",
            serde_norway::to_string(&json!({"Pod Template": revision_template(w, rev)}))?
        );
        return Ok(0);
    }
    println!("{}", shown(res, name));
    println!("REVISION  CHANGE-CAUSE");
    for (n, cause, _) in &revs {
        println!("{n:<10}{cause}");
    }
    println!();
    Ok(0)
}

async fn undo(
    c: &Client,
    w: Workload,
    res: &Resource,
    ns: &str,
    name: &str,
    to: i64,
) -> Result<u8> {
    let path = object_path(res, Some(ns), name);
    let obj = c.get(&path).await?;
    if obj["spec"]["paused"] == true {
        bail!(
            "you cannot rollback a paused deployment; resume it first with 'weft rollout resume' and try again"
        );
    }
    let revs = revisions(c, w, ns, &obj).await?;
    let target = if to == 0 {
        // The one before the newest.
        revs.iter().rev().nth(1)
    } else {
        revs.iter().find(|r| r.0 == to)
    };
    let Some((number, _, rev)) = target else {
        if to == 0 {
            bail!("no rollout history found for {}", shown(res, name));
        }
        bail!("unable to find specified revision {to} in history");
    };
    let template = revision_template(w, rev);
    let mut current = obj["spec"]["template"].clone();
    if let Some(labels) = current["metadata"]["labels"].as_object_mut() {
        labels.remove(HASH_LABEL);
    }
    if template == current {
        println!(
            "{} skipped rollback (current template already matches revision {number})",
            shown(res, name)
        );
        return Ok(0);
    }
    match w {
        Workload::Deployment => {
            // The template back, and the annotations that revision carried
            // (its change-cause), as kubectl writes them.
            let mut annotations = obj["metadata"]["annotations"].clone();
            if !annotations.is_object() {
                annotations = json!({});
            }
            for (k, v) in rev["metadata"]["annotations"]
                .as_object()
                .into_iter()
                .flatten()
            {
                if k != REVISION && k != "kubectl.kubernetes.io/last-applied-configuration" {
                    annotations[k] = v.clone();
                }
            }
            let patch = json!([
                {"op": "replace", "path": "/spec/template", "value": template},
                {"op": "replace", "path": "/metadata/annotations", "value": annotations},
            ]);
            c.request(
                "PATCH",
                &path,
                Some(&patch),
                "application/json-patch+json",
                "application/json",
            )
            .await?;
        }
        Workload::DaemonSet | Workload::StatefulSet => {
            c.request(
                "PATCH",
                &path,
                Some(&rev["data"]),
                "application/strategic-merge-patch+json",
                "application/json",
            )
            .await?;
        }
    }
    println!("{} rolled back", shown(res, name));
    Ok(0)
}

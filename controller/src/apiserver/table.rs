//! Server-side printing: the meta.k8s.io/v1 Table that `kubectl get` asks
//! for, with the columns kube-apiserver prints for each kind.

use serde_json::{Value, json};
use weft_api::resources::Resource;

/// One column: name, type, format, description, priority (1 = wide only).
type Column = (&'static str, &'static str, &'static str, &'static str, u8);

fn columns(kind: &str) -> Vec<Column> {
    let name = (
        "Name",
        "string",
        "name",
        "Name must be unique within a namespace.",
        0,
    );
    let age = (
        "Age",
        "string",
        "",
        "CreationTimestamp is a timestamp representing the server time when this object was created.",
        0,
    );
    match kind {
        "Pod" => vec![
            name,
            (
                "Ready",
                "string",
                "",
                "The aggregate readiness state of this pod for accepting traffic.",
                0,
            ),
            (
                "Status",
                "string",
                "",
                "The aggregate status of the containers in this pod.",
                0,
            ),
            (
                "Restarts",
                "string",
                "",
                "The number of times the containers in this pod have been restarted and when the last container in this pod has restarted.",
                0,
            ),
            age,
            (
                "IP",
                "string",
                "",
                "IP address allocated to the pod. Routable at least within the cluster. Empty if not yet allocated.",
                1,
            ),
            (
                "Node",
                "string",
                "",
                "NodeName is a request to schedule this pod onto a specific node.",
                1,
            ),
            (
                "Nominated Node",
                "string",
                "",
                "nominatedNodeName is set only when this pod preempts other pods on the node.",
                1,
            ),
            (
                "Readiness Gates",
                "string",
                "",
                "If specified, all readiness gates will be evaluated for pod readiness.",
                1,
            ),
        ],
        "Service" => vec![
            name,
            (
                "Type",
                "string",
                "",
                "type determines how the Service is exposed.",
                0,
            ),
            (
                "Cluster-IP",
                "string",
                "",
                "clusterIP is the IP address of the service.",
                0,
            ),
            (
                "External-IP",
                "string",
                "",
                "List of IP addresses for which nodes in the cluster will also accept traffic for this service.",
                0,
            ),
            (
                "Port(s)",
                "string",
                "",
                "The list of ports that are exposed by this service.",
                0,
            ),
            age,
            (
                "Selector",
                "string",
                "",
                "Route service traffic to pods with label keys and values matching this selector.",
                1,
            ),
        ],
        "Deployment" => vec![
            name,
            (
                "Ready",
                "string",
                "",
                "Number of the pod with ready state",
                0,
            ),
            (
                "Up-to-date",
                "integer",
                "",
                "Total number of non-terminated pods targeted by this deployment that have the desired template spec.",
                0,
            ),
            (
                "Available",
                "integer",
                "",
                "Total number of available pods (ready for at least minReadySeconds) targeted by this deployment.",
                0,
            ),
            age,
            (
                "Containers",
                "string",
                "",
                "Names of each container in the template.",
                1,
            ),
            (
                "Images",
                "string",
                "",
                "Images referenced by each container in the template.",
                1,
            ),
            ("Selector", "string", "", "Label selector for pods.", 1),
        ],
        "DaemonSet" => vec![
            name,
            (
                "Desired",
                "integer",
                "",
                "The total number of nodes that should be running the daemon pod (including nodes correctly running the daemon pod).",
                0,
            ),
            (
                "Current",
                "integer",
                "",
                "The number of nodes that are running at least 1 daemon pod and are supposed to run the daemon pod.",
                0,
            ),
            (
                "Ready",
                "integer",
                "",
                "numberReady is the number of nodes that should be running the daemon pod and have one or more of the daemon pod running with a Ready Condition.",
                0,
            ),
            (
                "Up-to-date",
                "integer",
                "",
                "The total number of nodes that are running updated daemon pod",
                0,
            ),
            (
                "Available",
                "integer",
                "",
                "The number of nodes that should be running the daemon pod and have one or more of the daemon pod running and available (ready for at least spec.minReadySeconds)",
                0,
            ),
            (
                "Node Selector",
                "string",
                "",
                "NodeSelector is a selector which must be true for the pod to fit on a node.",
                0,
            ),
            age,
            (
                "Containers",
                "string",
                "",
                "Names of each container in the template.",
                1,
            ),
            (
                "Images",
                "string",
                "",
                "Images referenced by each container in the template.",
                1,
            ),
            ("Selector", "string", "", "Label selector for pods.", 1),
        ],
        "StatefulSet" => vec![
            name,
            (
                "Ready",
                "string",
                "",
                "Number of the pod with ready state",
                0,
            ),
            age,
            (
                "Containers",
                "string",
                "",
                "Names of each container in the template.",
                1,
            ),
            (
                "Images",
                "string",
                "",
                "Images referenced by each container in the template.",
                1,
            ),
        ],
        "ControllerRevision" => vec![
            name,
            (
                "Controller",
                "string",
                "",
                "Controller of the object, with the format <kind>/<name>",
                0,
            ),
            (
                "Revision",
                "integer",
                "",
                "Revision indicates the revision of the state represented by Data.",
                0,
            ),
            age,
        ],
        "PodDisruptionBudget" => vec![
            name,
            (
                "Min Available",
                "string",
                "",
                "The minimum number of pods that must be available.",
                0,
            ),
            (
                "Max Unavailable",
                "string",
                "",
                "The maximum number of pods that may be unavailable.",
                0,
            ),
            (
                "Allowed Disruptions",
                "integer",
                "",
                "Calculated number of pods that may be disrupted at this time.",
                0,
            ),
            age,
        ],
        "CronJob" => vec![
            name,
            ("Schedule", "string", "", "The schedule in Cron format.", 0),
            (
                "Timezone",
                "string",
                "",
                "The time zone name for the given schedule.",
                0,
            ),
            (
                "Suspend",
                "boolean",
                "",
                "Whether the controller suspends subsequent executions.",
                0,
            ),
            (
                "Active",
                "integer",
                "",
                "A list of pointers to currently running jobs.",
                0,
            ),
            (
                "Last Schedule",
                "string",
                "",
                "Information when was the last time the job was successfully scheduled.",
                0,
            ),
            age,
            (
                "Containers",
                "string",
                "",
                "Names of each container in the template.",
                1,
            ),
            (
                "Images",
                "string",
                "",
                "Images referenced by each container in the template.",
                1,
            ),
            ("Selector", "string", "", "Label selector for pods.", 1),
        ],
        "Job" => vec![
            name,
            ("Status", "string", "", "Status of the job.", 0),
            (
                "Completions",
                "string",
                "",
                "The number of pods which reached phase Succeeded.",
                0,
            ),
            (
                "Duration",
                "string",
                "",
                "Time required to complete the job.",
                0,
            ),
            age,
            (
                "Containers",
                "string",
                "",
                "Names of each container in the template.",
                1,
            ),
            (
                "Images",
                "string",
                "",
                "Images referenced by each container in the template.",
                1,
            ),
            ("Selector", "string", "", "Label selector for pods.", 1),
        ],
        "ReplicaSet" | "ReplicationController" => vec![
            name,
            (
                "Desired",
                "integer",
                "",
                "Replicas is the number of desired replicas.",
                0,
            ),
            (
                "Current",
                "integer",
                "",
                "Replicas is the most recently observed number of replicas.",
                0,
            ),
            (
                "Ready",
                "integer",
                "",
                "The number of ready replicas for this replica set.",
                0,
            ),
            age,
            (
                "Containers",
                "string",
                "",
                "Names of each container in the template.",
                1,
            ),
            (
                "Images",
                "string",
                "",
                "Images referenced by each container in the template.",
                1,
            ),
            ("Selector", "string", "", "Label selector for pods.", 1),
        ],
        "Node" => vec![
            name,
            ("Status", "string", "", "The status of the node", 0),
            ("Roles", "string", "", "The roles of the node", 0),
            age,
            (
                "Version",
                "string",
                "",
                "Kubelet Version reported by the node.",
                0,
            ),
            (
                "Internal-IP",
                "string",
                "",
                "List of addresses reachable to the node.",
                1,
            ),
            (
                "External-IP",
                "string",
                "",
                "List of addresses reachable to the node.",
                1,
            ),
            (
                "OS-Image",
                "string",
                "",
                "OS Image reported by the node from /etc/os-release (e.g. Debian GNU/Linux 7 (wheezy)).",
                1,
            ),
            (
                "Kernel-Version",
                "string",
                "",
                "Kernel Version reported by the node from 'uname -r' (e.g. 3.16.0-0.bpo.4-amd64).",
                1,
            ),
            (
                "Container-Runtime",
                "string",
                "",
                "ContainerRuntime Version reported by the node through runtime remote API (e.g. containerd://1.4.2).",
                1,
            ),
        ],
        "Namespace" => vec![
            name,
            ("Status", "string", "", "The status of the namespace", 0),
            age,
        ],
        "NetworkPolicy" => vec![
            name,
            (
                "Pod-Selector",
                "string",
                "",
                "podSelector selects the pods to which this NetworkPolicy object applies.",
                0,
            ),
            age,
        ],
        "Endpoints" => vec![
            name,
            ("Endpoints", "string", "", "Endpoints of this service", 0),
            age,
        ],
        "EndpointSlice" => vec![
            name,
            (
                "AddressType",
                "string",
                "",
                "addressType specifies the type of address carried by this EndpointSlice.",
                0,
            ),
            (
                "Ports",
                "string",
                "",
                "ports specifies the list of network ports exposed by each endpoint in this slice.",
                0,
            ),
            (
                "Endpoints",
                "string",
                "",
                "endpoints is a list of unique endpoints in this slice.",
                0,
            ),
            age,
        ],
        "ResourceQuota" => vec![
            name,
            age,
            (
                "Request",
                "string",
                "",
                "Used and hard requests, by resource.",
                0,
            ),
            (
                "Limit",
                "string",
                "",
                "Used and hard limits, by resource.",
                0,
            ),
        ],
        "LimitRange" => vec![name, ("Created At", "date", "", "When it was made.", 0)],
        "PersistentVolume" => vec![
            name,
            ("Capacity", "string", "", "The volume's size.", 0),
            ("Access Modes", "string", "", "How it may be mounted.", 0),
            (
                "Reclaim Policy",
                "string",
                "",
                "What happens to it when its claim goes.",
                0,
            ),
            ("Status", "string", "", "Its phase.", 0),
            ("Claim", "string", "", "The claim bound to it.", 0),
            ("StorageClass", "string", "", "Its class.", 0),
            ("Reason", "string", "", "Why it is in its phase.", 0),
            age,
        ],
        "PersistentVolumeClaim" => vec![
            name,
            ("Status", "string", "", "Its phase.", 0),
            ("Volume", "string", "", "The volume bound to it.", 0),
            ("Capacity", "string", "", "The bound volume's size.", 0),
            ("Access Modes", "string", "", "How it may be mounted.", 0),
            ("StorageClass", "string", "", "Its class.", 0),
            age,
        ],
        "StorageClass" => vec![
            name,
            ("Provisioner", "string", "", "What makes its volumes.", 0),
            (
                "ReclaimPolicy",
                "string",
                "",
                "What happens to a volume when its claim goes.",
                0,
            ),
            (
                "VolumeBindingMode",
                "string",
                "",
                "When volumes are made and bound.",
                0,
            ),
            (
                "AllowVolumeExpansion",
                "string",
                "",
                "Whether volumes can grow.",
                0,
            ),
            age,
        ],
        "ServiceAccount" => vec![
            name,
            ("Secrets", "string", "", "Number of secrets listed.", 0),
            age,
        ],
        "Role" | "ClusterRole" => vec![
            name,
            ("Created At", "date", "", "When the role was made.", 0),
        ],
        "RoleBinding" | "ClusterRoleBinding" => vec![
            name,
            ("Role", "string", "", "The role bound.", 0),
            age,
            ("Users", "string", "", "The users bound.", 1),
            ("Groups", "string", "", "The groups bound.", 1),
            (
                "ServiceAccounts",
                "string",
                "",
                "The service accounts bound.",
                1,
            ),
        ],
        "ConfigMap" => vec![
            name,
            (
                "Data",
                "string",
                "",
                "Number of keys in data and binaryData.",
                0,
            ),
            age,
        ],
        "Secret" => vec![
            name,
            (
                "Type",
                "string",
                "",
                "Used to facilitate programmatic handling of secret data.",
                0,
            ),
            ("Data", "string", "", "Number of keys in data.", 0),
            age,
        ],
        "Lease" => vec![
            name,
            (
                "Holder",
                "string",
                "",
                "holderIdentity contains the identity of the holder of a current lease.",
                0,
            ),
            age,
        ],
        "Event" => vec![
            (
                "Last Seen",
                "string",
                "",
                "Time when this Event was last seen",
                0,
            ),
            (
                "Type",
                "string",
                "",
                "Type of this event (Normal, Warning), new types could be added in the future.",
                0,
            ),
            (
                "Reason",
                "string",
                "",
                "Short, machine understandable string that gives the reason for the transition into the object's current status.",
                0,
            ),
            (
                "Object",
                "string",
                "",
                "The object that this event is about.",
                0,
            ),
            (
                "Message",
                "string",
                "",
                "A human-readable description of the status of this operation.",
                0,
            ),
            (
                "Subobject",
                "string",
                "",
                "The field of the object that this event is about.",
                1,
            ),
            (
                "Source",
                "string",
                "",
                "The component reporting this event.",
                1,
            ),
            (
                "First Seen",
                "string",
                "",
                "The time at which the event was first recorded.",
                1,
            ),
            (
                "Count",
                "string",
                "",
                "The number of times this event has occurred.",
                1,
            ),
            ("Name", "string", "name", "Name of the event", 1),
        ],
        _ => vec![name, age],
    }
}

/// Access modes as kubectl abbreviates them (`RWO,ROX`).
/// A Job's STATUS column, as kubectl's printer reads its conditions.
fn job_status(o: &Value) -> &'static str {
    let has = |t: &str| {
        o["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == t && c["status"] == "True")
    };
    if has("Complete") {
        "Complete"
    } else if has("Failed") {
        "Failed"
    } else if o["metadata"]["deletionTimestamp"].is_string() {
        "Terminating"
    } else if has("Suspended") {
        "Suspended"
    } else if has("FailureTarget") {
        "FailureTarget"
    } else if has("SuccessCriteriaMet") {
        "SuccessCriteriaMet"
    } else {
        "Running"
    }
}

/// "2/3", or for a Job without completions "0/1" ("0/1 of 3" when more
/// run in parallel).
fn job_completions(o: &Value) -> String {
    let done = o["status"]["succeeded"].as_i64().unwrap_or(0);
    match o["spec"]["completions"].as_i64() {
        Some(c) => format!("{done}/{c}"),
        None => match o["spec"]["parallelism"].as_i64().unwrap_or(0) {
            p if p > 1 => format!("{done}/1 of {p}"),
            _ => format!("{done}/1"),
        },
    }
}

/// From the start to completion (or to now, while it runs).
fn job_duration(o: &Value) -> String {
    let time = |v: &Value| v.as_str().and_then(weft_api::meta::parse_rfc3339);
    let Some(start) = time(&o["status"]["startTime"]) else {
        return String::new();
    };
    let end = time(&o["status"]["completionTime"]).unwrap_or_else(|| {
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_secs() as i64)
            .unwrap_or(0)
    });
    weft_api::meta::human_duration((end - start).max(0))
}

fn access_modes(v: &Value) -> String {
    v.as_array()
        .into_iter()
        .flatten()
        .filter_map(Value::as_str)
        .map(|m| match m {
            "ReadWriteOnce" => "RWO",
            "ReadOnlyMany" => "ROX",
            "ReadWriteMany" => "RWX",
            "ReadWriteOncePod" => "RWOP",
            other => other,
        })
        .collect::<Vec<_>>()
        .join(",")
}

fn s(v: &Value) -> String {
    v.as_str().unwrap_or_default().to_string()
}

fn or_none(text: String) -> String {
    if text.is_empty() {
        "<none>".into()
    } else {
        text
    }
}

fn containers_and_images(template_spec: &Value) -> (String, String) {
    let cs = template_spec["containers"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    (
        cs.iter()
            .map(|c| s(&c["name"]))
            .collect::<Vec<_>>()
            .join(","),
        cs.iter()
            .map(|c| s(&c["image"]))
            .collect::<Vec<_>>()
            .join(","),
    )
}

fn map_selector(sel: &Value) -> String {
    sel.as_object()
        .map(|m| {
            m.iter()
                .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

/// The pod's status as `kubectl get pods` shows it (the logic of
/// kubectl's printPod, shortened to the states Weft produces).
pub fn pod_status(pod: &Value) -> String {
    let mut reason = pod["status"]["reason"]
        .as_str()
        .or(pod["status"]["phase"].as_str())
        .unwrap_or("Pending")
        .to_string();
    // Init containers first, as kubectl shows them: `Init:1/3`, or why one
    // is stuck; a started sidecar does not hold the pod back.
    let inits = pod["status"]["initContainerStatuses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default();
    let total = pod["spec"]["initContainers"]
        .as_array()
        .map_or(inits.len(), Vec::len);
    let sidecar = |name: &Value| {
        pod["spec"]["initContainers"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["name"] == *name && c["restartPolicy"] == "Always")
    };
    let mut initializing = false;
    for (i, c) in inits.iter().enumerate() {
        let t = &c["state"]["terminated"];
        let w = c["state"]["waiting"]["reason"].as_str().unwrap_or_default();
        if sidecar(&c["name"]) && c["started"] == true {
            continue;
        }
        if t.is_object() && t["exitCode"].as_i64() == Some(0) {
            continue;
        }
        reason = if t.is_object() {
            match t["reason"].as_str().filter(|r| !r.is_empty()) {
                Some(r) => format!("Init:{r}"),
                None => format!("Init:ExitCode:{}", t["exitCode"].as_i64().unwrap_or(0)),
            }
        } else if !w.is_empty() && w != "PodInitializing" {
            format!("Init:{w}")
        } else {
            format!("Init:{i}/{total}")
        };
        initializing = true;
        break;
    }
    if initializing {
        if pod["metadata"]["deletionTimestamp"].is_string() {
            return "Terminating".into();
        }
        return reason;
    }
    // Last to first, as kubectl goes: the first container's state wins.
    let mut running = false;
    for c in pod["status"]["containerStatuses"]
        .as_array()
        .map(Vec::as_slice)
        .unwrap_or_default()
        .iter()
        .rev()
    {
        if let Some(r) = c["state"]["waiting"]["reason"]
            .as_str()
            .filter(|r| !r.is_empty())
        {
            reason = r.to_string();
        } else if let Some(t) = c["state"]["terminated"].as_object() {
            reason = match t.get("reason").and_then(Value::as_str) {
                Some(r) if !r.is_empty() => r.to_string(),
                _ => format!(
                    "ExitCode:{}",
                    t.get("exitCode").and_then(Value::as_i64).unwrap_or(0)
                ),
            };
        } else if c["ready"] == true && c["state"]["running"].is_object() {
            running = true;
        }
    }
    // One container done and another still running: the pod runs.
    if reason == "Completed" && running {
        let ready = pod["status"]["conditions"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|c| c["type"] == "Ready" && c["status"] == "True");
        reason = if ready { "Running" } else { "NotReady" }.into();
    }
    if pod["metadata"]["deletionTimestamp"].is_string() {
        reason = "Terminating".into();
    }
    reason
}

fn cells(kind: &str, o: &Value) -> Vec<Value> {
    let name = json!(o["metadata"]["name"]);
    let age = json!(weft_api::meta::age(
        o["metadata"]["creationTimestamp"].as_str()
    ));
    match kind {
        "Pod" => {
            let statuses = o["status"]["containerStatuses"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default();
            // Sidecars count, as kubectl (1.28 on) counts them.
            let sidecars: Vec<&Value> = o["spec"]["initContainers"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["restartPolicy"] == "Always")
                .collect();
            let total = o["spec"]["containers"]
                .as_array()
                .map(Vec::len)
                .unwrap_or(0)
                + sidecars.len();
            let ready_sidecars = o["status"]["initContainerStatuses"]
                .as_array()
                .into_iter()
                .flatten()
                .filter(|c| c["ready"] == true && sidecars.iter().any(|s| s["name"] == c["name"]))
                .count();
            let ready = statuses
                .iter()
                .filter(|c| c["ready"].as_bool() == Some(true))
                .count()
                + ready_sidecars;
            let restarts: i64 = statuses
                .iter()
                .filter_map(|c| c["restartCount"].as_i64())
                .sum();
            vec![
                name,
                json!(format!("{ready}/{total}")),
                json!(pod_status(o)),
                json!(restarts.to_string()),
                age,
                json!(or_none(s(&o["status"]["podIP"]))),
                json!(or_none(s(&o["spec"]["nodeName"]))),
                json!("<none>"),
                json!("<none>"),
            ]
        }
        "Service" => {
            let ports = o["spec"]["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| {
                            let proto = p["protocol"].as_str().unwrap_or("TCP");
                            match p["nodePort"].as_i64() {
                                Some(np) => format!("{}:{np}/{proto}", p["port"]),
                                None => format!("{}/{proto}", p["port"]),
                            }
                        })
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let external = if o["spec"]["type"] == "ExternalName" {
                s(&o["spec"]["externalName"])
            } else {
                String::new()
            };
            vec![
                name,
                json!(o["spec"]["type"].as_str().unwrap_or("ClusterIP")),
                json!(or_none(s(&o["spec"]["clusterIP"]))),
                json!(or_none(external)),
                json!(or_none(ports)),
                age,
                json!(or_none(map_selector(&o["spec"]["selector"]))),
            ]
        }
        "Deployment" => {
            let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
            let sel = weft_api::selector::LabelSelector::from_k8s(&o["spec"]["selector"])
                .map(|s| super::selector_string(&s))
                .unwrap_or_default();
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                )),
                json!(o["status"]["updatedReplicas"].as_i64().unwrap_or(0)),
                json!(o["status"]["availableReplicas"].as_i64().unwrap_or(0)),
                age,
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        "DaemonSet" => {
            let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
            let sel = weft_api::selector::LabelSelector::from_k8s(&o["spec"]["selector"])
                .map(|s| super::selector_string(&s))
                .unwrap_or_default();
            let node_selector = o["spec"]["template"]["spec"]["nodeSelector"]
                .as_object()
                .filter(|m| !m.is_empty())
                .map_or_else(
                    || "<none>".to_string(),
                    |m| {
                        m.iter()
                            .map(|(k, v)| format!("{k}={}", v.as_str().unwrap_or_default()))
                            .collect::<Vec<_>>()
                            .join(",")
                    },
                );
            let n = |k: &str| json!(o["status"][k].as_i64().unwrap_or(0));
            vec![
                name,
                n("desiredNumberScheduled"),
                n("currentNumberScheduled"),
                n("numberReady"),
                n("updatedNumberScheduled"),
                n("numberAvailable"),
                json!(node_selector),
                age,
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        "StatefulSet" => {
            let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    o["status"]["readyReplicas"].as_i64().unwrap_or(0),
                    o["spec"]["replicas"].as_i64().unwrap_or(1)
                )),
                age,
                json!(c),
                json!(i),
            ]
        }
        "ControllerRevision" => {
            let controller = o["metadata"]["ownerReferences"]
                .as_array()
                .into_iter()
                .flatten()
                .find(|r| r["controller"] == true)
                .map_or_else(
                    || "<none>".to_string(),
                    |r| {
                        let group = r["apiVersion"]
                            .as_str()
                            .and_then(|v| v.split_once('/'))
                            .map(|(g, _)| format!(".{g}"))
                            .unwrap_or_default();
                        format!(
                            "{}{group}/{}",
                            r["kind"].as_str().unwrap_or_default().to_lowercase(),
                            r["name"].as_str().unwrap_or_default()
                        )
                    },
                );
            vec![name, json!(controller), json!(o["revision"]), age]
        }
        "PodDisruptionBudget" => {
            let int_or_percent = |v: &Value| match v {
                Value::Number(n) => n.to_string(),
                Value::String(t) => t.clone(),
                _ => "N/A".into(),
            };
            vec![
                name,
                json!(int_or_percent(&o["spec"]["minAvailable"])),
                json!(int_or_percent(&o["spec"]["maxUnavailable"])),
                json!(o["status"]["disruptionsAllowed"].as_i64().unwrap_or(0)),
                age,
            ]
        }
        "CronJob" => {
            let job = &o["spec"]["jobTemplate"]["spec"];
            let (c, i) = containers_and_images(&job["template"]["spec"]);
            let sel = weft_api::selector::LabelSelector::from_k8s(&job["selector"])
                .map(|s| super::selector_string(&s))
                .unwrap_or_default();
            let last = match o["status"]["lastScheduleTime"].as_str() {
                Some(t) => weft_api::meta::age(Some(t)),
                None => "<none>".into(),
            };
            vec![
                name,
                json!(s(&o["spec"]["schedule"])),
                json!(or_none(s(&o["spec"]["timeZone"]))),
                // As kube's printer words it (a string, though the
                // column says boolean).
                json!(match o["spec"]["suspend"].as_bool() {
                    Some(true) => "True",
                    Some(false) => "False",
                    None => "<unset>",
                }),
                json!(o["status"]["active"].as_array().map_or(0, Vec::len)),
                json!(last),
                age,
                json!(c),
                json!(i),
                json!(or_none(sel)),
            ]
        }
        "Job" => {
            let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
            let sel = weft_api::selector::LabelSelector::from_k8s(&o["spec"]["selector"])
                .map(|s| super::selector_string(&s))
                .unwrap_or_default();
            vec![
                name,
                json!(job_status(o)),
                json!(job_completions(o)),
                json!(job_duration(o)),
                age,
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        "ReplicaSet" | "ReplicationController" => {
            let (c, i) = containers_and_images(&o["spec"]["template"]["spec"]);
            let selector = if kind == "ReplicationController" {
                json!({"matchLabels": o["spec"]["selector"]})
            } else {
                o["spec"]["selector"].clone()
            };
            let sel = weft_api::selector::LabelSelector::from_k8s(&selector)
                .map(|s| super::selector_string(&s))
                .unwrap_or_default();
            vec![
                name,
                json!(o["spec"]["replicas"].as_i64().unwrap_or(1)),
                json!(o["status"]["replicas"].as_i64().unwrap_or(0)),
                json!(o["status"]["readyReplicas"].as_i64().unwrap_or(0)),
                age,
                json!(c),
                json!(i),
                json!(sel),
            ]
        }
        "Node" => {
            let ready = o["status"]["conditions"]
                .as_array()
                .and_then(|cs| cs.iter().find(|c| c["type"] == "Ready"))
                .map(|c| {
                    if c["status"] == "True" {
                        "Ready"
                    } else {
                        "NotReady"
                    }
                })
                .unwrap_or("Unknown");
            let status = if o["spec"]["unschedulable"].as_bool() == Some(true) {
                format!("{ready},SchedulingDisabled")
            } else {
                ready.to_string()
            };
            let addr = |t: &str| {
                o["status"]["addresses"]
                    .as_array()
                    .and_then(|a| a.iter().find(|x| x["type"] == t))
                    .map(|x| s(&x["address"]))
                    .unwrap_or_default()
            };
            let info = &o["status"]["nodeInfo"];
            vec![
                name,
                json!(status),
                json!("<none>"),
                age,
                json!(s(&info["kubeletVersion"])),
                json!(or_none(addr("InternalIP"))),
                json!(or_none(addr("ExternalIP"))),
                json!(or_none(s(&info["osImage"]))),
                json!(or_none(s(&info["kernelVersion"]))),
                json!(or_none(s(&info["containerRuntimeVersion"]))),
            ]
        }
        "Namespace" => vec![
            name,
            json!(o["status"]["phase"].as_str().unwrap_or("Active")),
            age,
        ],
        "NetworkPolicy" => {
            // kubectl's rendering: the selector, or <none> for all pods.
            let sel = weft_api::selector::LabelSelector::from_k8s(&o["spec"]["podSelector"])
                .map(|s| super::selector_string(&s))
                .unwrap_or_default();
            vec![name, json!(or_none(sel)), age]
        }
        "Endpoints" => {
            let mut eps = Vec::new();
            for subset in o["subsets"]
                .as_array()
                .map(Vec::as_slice)
                .unwrap_or_default()
            {
                for a in subset["addresses"]
                    .as_array()
                    .map(Vec::as_slice)
                    .unwrap_or_default()
                {
                    let ports = subset["ports"]
                        .as_array()
                        .map(Vec::as_slice)
                        .unwrap_or_default();
                    if ports.is_empty() {
                        eps.push(s(&a["ip"]));
                    }
                    for p in ports {
                        eps.push(format!("{}:{}", s(&a["ip"]), p["port"]));
                    }
                }
            }
            let shown = if eps.len() > 3 {
                format!("{} + {} more...", eps[..3].join(","), eps.len() - 3)
            } else {
                eps.join(",")
            };
            vec![name, json!(or_none(shown)), age]
        }
        "EndpointSlice" => {
            let ports = o["ports"]
                .as_array()
                .map(|ps| {
                    ps.iter()
                        .map(|p| p["port"].to_string())
                        .collect::<Vec<_>>()
                        .join(",")
                })
                .unwrap_or_default();
            let addrs: Vec<String> = o["endpoints"]
                .as_array()
                .map(|es| {
                    es.iter()
                        .flat_map(|e| e["addresses"].as_array().cloned().unwrap_or_default())
                        .map(|a| s(&a))
                        .collect()
                })
                .unwrap_or_default();
            let shown = if addrs.len() > 3 {
                format!("{} + {} more...", addrs[..3].join(","), addrs.len() - 3)
            } else {
                addrs.join(",")
            };
            vec![
                name,
                json!(s(&o["addressType"])),
                json!(or_none(ports)),
                json!(or_none(shown)),
                age,
            ]
        }
        "ResourceQuota" => {
            // As kubectl: `pods: 1/10, requests.cpu: 500m/2`, limits apart.
            let hard = o["status"]["hard"]
                .as_object()
                .or(o["spec"]["hard"].as_object());
            let used = &o["status"]["used"];
            let (mut req, mut lim) = (Vec::new(), Vec::new());
            for (k, v) in hard.into_iter().flatten() {
                let cell = format!("{k}: {}/{}", used[k].as_str().unwrap_or("0"), s(v));
                if k.starts_with("limits.") {
                    lim.push(cell);
                } else {
                    req.push(cell);
                }
            }
            vec![name, age, json!(req.join(", ")), json!(lim.join(", "))]
        }
        "LimitRange" => vec![name, json!(s(&o["metadata"]["creationTimestamp"]))],
        "PersistentVolume" => {
            let claim = &o["spec"]["claimRef"];
            let claim = if claim.is_object() {
                format!("{}/{}", s(&claim["namespace"]), s(&claim["name"]))
            } else {
                String::new()
            };
            vec![
                name,
                json!(s(&o["spec"]["capacity"]["storage"])),
                json!(access_modes(&o["spec"]["accessModes"])),
                json!(s(&o["spec"]["persistentVolumeReclaimPolicy"])),
                json!(s(&o["status"]["phase"])),
                json!(claim),
                json!(s(&o["spec"]["storageClassName"])),
                json!(s(&o["status"]["reason"])),
                age,
            ]
        }
        "PersistentVolumeClaim" => vec![
            name,
            json!(s(&o["status"]["phase"])),
            json!(s(&o["spec"]["volumeName"])),
            json!(s(&o["status"]["capacity"]["storage"])),
            json!(access_modes(&o["status"]["accessModes"])),
            json!(s(&o["spec"]["storageClassName"])),
            age,
        ],
        "StorageClass" => {
            let default = o["metadata"]["annotations"]["storageclass.kubernetes.io/is-default-class"]
                == "true";
            let shown = if default {
                format!("{} (default)", s(&o["metadata"]["name"]))
            } else {
                s(&o["metadata"]["name"])
            };
            vec![
                json!(shown),
                json!(s(&o["provisioner"])),
                json!(s(&o["reclaimPolicy"])),
                json!(s(&o["volumeBindingMode"])),
                json!(
                    o["allowVolumeExpansion"]
                        .as_bool()
                        .unwrap_or(false)
                        .to_string()
                ),
                age,
            ]
        }
        "ServiceAccount" => vec![
            name,
            json!(o["secrets"].as_array().map_or(0, Vec::len)),
            age,
        ],
        "Role" | "ClusterRole" => vec![name, o["metadata"]["creationTimestamp"].clone()],
        "RoleBinding" | "ClusterRoleBinding" => {
            let subjects = |kind: &str| {
                let names: Vec<String> = o["subjects"]
                    .as_array()
                    .into_iter()
                    .flatten()
                    .filter(|x| x["kind"] == kind)
                    .map(|x| match (kind, x["namespace"].as_str()) {
                        ("ServiceAccount", Some(ns)) => format!("{ns}/{}", s(&x["name"])),
                        _ => s(&x["name"]),
                    })
                    .collect();
                json!(names.join(", "))
            };
            vec![
                name,
                json!(format!(
                    "{}/{}",
                    s(&o["roleRef"]["kind"]),
                    s(&o["roleRef"]["name"])
                )),
                age,
                subjects("User"),
                subjects("Group"),
                subjects("ServiceAccount"),
            ]
        }
        "ConfigMap" => {
            let keys = |f: &str| o[f].as_object().map_or(0, serde_json::Map::len);
            vec![name, json!(keys("data") + keys("binaryData")), age]
        }
        // The number of keys, never a value.
        "Secret" => vec![
            name,
            json!(s(&o["type"])),
            json!(o["data"].as_object().map_or(0, serde_json::Map::len)),
            age,
        ],
        "Lease" => vec![name, json!(or_none(s(&o["spec"]["holderIdentity"]))), age],
        "Event" => {
            let last = o["lastTimestamp"]
                .as_str()
                .or(o["eventTime"].as_str())
                .or(o["metadata"]["creationTimestamp"].as_str());
            let first = o["firstTimestamp"].as_str().or(last);
            let inv = &o["involvedObject"];
            vec![
                json!(weft_api::meta::age(last)),
                json!(s(&o["type"])),
                json!(s(&o["reason"])),
                json!(format!(
                    "{}/{}",
                    s(&inv["kind"]).to_lowercase(),
                    s(&inv["name"])
                )),
                json!(s(&o["message"])),
                json!(s(&inv["fieldPath"])),
                json!(s(&o["source"]["component"])),
                json!(weft_api::meta::age(first)),
                json!(o["count"].as_i64().unwrap_or(1).to_string()),
                name,
            ]
        }
        _ => vec![name, age],
    }
}

/// The Table for `items`; `include` is the includeObject parameter (None,
/// Metadata or Object).
pub fn table(res: &Resource, items: &[Value], rev: Option<i64>, include: &str) -> Value {
    let defs: Vec<Value> = columns(res.kind)
        .into_iter()
        .map(|(name, ty, format, description, priority)| {
            json!({"name": name, "type": ty, "format": format, "description": description, "priority": priority})
        })
        .collect();
    let rows: Vec<Value> = items.iter().map(|o| row(res, o, include)).collect();
    let mut meta = json!({});
    if let Some(rev) = rev {
        meta["resourceVersion"] = json!(rev.to_string());
    }
    json!({"kind": "Table", "apiVersion": "meta.k8s.io/v1", "metadata": meta, "columnDefinitions": defs, "rows": rows})
}

/// One row, as a watch of Tables sends them.
pub fn row(res: &Resource, o: &Value, include: &str) -> Value {
    let object = match include {
        "None" => Value::Null,
        "Object" => o.clone(),
        _ => json!({
            "kind": "PartialObjectMetadata",
            "apiVersion": "meta.k8s.io/v1",
            "metadata": o["metadata"],
        }),
    };
    json!({"cells": cells(res.kind, o), "object": object})
}

/// A Table holding one row: what a watch sends per event when asked for Tables.
pub fn single_row_table(res: &Resource, o: &Value, include: &str, with_columns: bool) -> Value {
    let mut t = table(res, std::slice::from_ref(o), None, include);
    if !with_columns {
        t["columnDefinitions"] = json!([]);
    }
    t
}

#[cfg(test)]
mod tests {
    use super::*;

    fn state(s: Value) -> Value {
        json!({"state": s, "ready": s.get("running").is_some()})
    }

    #[test]
    fn pods_read_as_kubectl_prints_them() {
        // The first container's end decides (kubectl walks them last to
        // first).
        let ended = |codes: &[(i64, &str)]| {
            let statuses: Vec<Value> = codes
                .iter()
                .map(|(c, r)| state(json!({"terminated": {"exitCode": c, "reason": r}})))
                .collect();
            json!({"status": {"phase": "Failed", "containerStatuses": statuses}})
        };
        assert_eq!(
            pod_status(&ended(&[(3, "Error"), (4, "Error"), (0, "Completed")])),
            "Error"
        );
        assert_eq!(
            pod_status(&ended(&[(0, "Completed"), (3, "Error")])),
            "Completed"
        );
        // One done, one still running: Running (NotReady when not Ready).
        let mixed = |ready: &str| {
            json!({"status": {"phase": "Running",
            "conditions": [{"type": "Ready", "status": ready}],
            "containerStatuses": [
                state(json!({"running": {}})),
                state(json!({"terminated": {"exitCode": 0, "reason": "Completed"}})),
            ]}})
        };
        assert_eq!(pod_status(&mixed("True")), "Running");
        assert_eq!(pod_status(&mixed("False")), "NotReady");
        // READY counts sidecars.
        let pod = json!({
            "metadata": {"name": "p"},
            "spec": {"containers": [{"name": "a"}, {"name": "b"}],
                     "initContainers": [{"name": "init"}, {"name": "side", "restartPolicy": "Always"}]},
            "status": {"phase": "Running",
                "initContainerStatuses": [
                    {"name": "init", "ready": false, "state": {"terminated": {"exitCode": 0}}},
                    {"name": "side", "ready": true, "started": true, "state": {"running": {}}}],
                "containerStatuses": [
                    {"name": "a", "ready": true, "state": {"running": {}}},
                    {"name": "b", "ready": false, "state": {"running": {}}}]}
        });
        assert_eq!(cells("Pod", &pod)[1], json!("2/3"));
    }
}

//! `kubectl describe` of one object of every kind the server lists, with
//! kubectl 1.27, 1.30 and 1.33: describe reads what Weft serves into
//! kubectl's own Go types and prints it, so a field Weft writes where kube
//! would not (or leaves out where kube writes one) shows here as an error
//! or a panic (kubectl 1.32 panicked on an EndpointSlice port without its
//! empty name). A served kind without a sample below fails the test.

use anyhow::{Result, ensure};
use weft_tests::control::{ControlOptions, ControlPlane, kubectl_path};
use weft_tests::island::Island;

/// One object of each kind, by `kubectl api-resources -o name`.
fn sample(resource: &str) -> Option<&'static str> {
    Some(match resource {
        "namespaces" => "apiVersion: v1\nkind: Namespace\nmetadata: {name: sample}\n",
        "pods" => {
            "apiVersion: v1\nkind: Pod\nmetadata: {name: sample, namespace: d, labels: {app: s}}\nspec:\n  containers:\n  - {name: c, image: weft.local/busybox:1.36, ports: [{containerPort: 80}], env: [{name: A, value: b}], resources: {requests: {cpu: 10m}}, volumeMounts: [{name: v, mountPath: /v}]}\n  volumes: [{name: v, emptyDir: {}}]\n"
        }
        "services" => {
            "apiVersion: v1\nkind: Service\nmetadata: {name: sample, namespace: d}\nspec:\n  selector: {app: s}\n  ports: [{port: 80, name: http}, {port: 443, name: https, targetPort: 8443}]\n"
        }
        "endpoints" => {
            "apiVersion: v1\nkind: Endpoints\nmetadata: {name: sample, namespace: d}\nsubsets: [{addresses: [{ip: 10.1.2.3}], ports: [{port: 80}]}]\n"
        }
        "nodes" => {
            "apiVersion: v1\nkind: Node\nmetadata: {name: sample, labels: {kubernetes.io/hostname: sample}}\nspec: {taints: [{key: k, value: v, effect: NoSchedule}]}\n"
        }
        "events" => {
            "apiVersion: v1\nkind: Event\nmetadata: {name: sample, namespace: d}\ninvolvedObject: {kind: Pod, name: sample, namespace: d}\nreason: Tested\nmessage: a sample\ntype: Normal\n"
        }
        "configmaps" => {
            "apiVersion: v1\nkind: ConfigMap\nmetadata: {name: sample, namespace: d}\ndata: {a: b}\nbinaryData: {bin: AAE=}\n"
        }
        "secrets" => {
            "apiVersion: v1\nkind: Secret\nmetadata: {name: sample, namespace: d}\nstringData: {password: x}\n"
        }
        "serviceaccounts" => {
            "apiVersion: v1\nkind: ServiceAccount\nmetadata: {name: sample, namespace: d}\nimagePullSecrets: [{name: sample}]\n"
        }
        "limitranges" => {
            "apiVersion: v1\nkind: LimitRange\nmetadata: {name: sample, namespace: d}\nspec:\n  limits: [{type: Container, default: {cpu: 100m}, defaultRequest: {cpu: 50m}, max: {cpu: '1'}}]\n"
        }
        "persistentvolumes" => {
            "apiVersion: v1\nkind: PersistentVolume\nmetadata: {name: sample}\nspec: {capacity: {storage: 1Gi}, accessModes: [ReadWriteOnce], hostPath: {path: /tmp/weft-describe}, storageClassName: manual}\n"
        }
        "persistentvolumeclaims" => {
            "apiVersion: v1\nkind: PersistentVolumeClaim\nmetadata: {name: sample, namespace: d}\nspec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}, storageClassName: manual}\n"
        }
        "resourcequotas" => {
            "apiVersion: v1\nkind: ResourceQuota\nmetadata: {name: sample, namespace: d}\nspec: {hard: {pods: '10', requests.cpu: '4'}}\n"
        }
        "replicationcontrollers" => {
            "apiVersion: v1\nkind: ReplicationController\nmetadata: {name: sample, namespace: d}\nspec:\n  replicas: 0\n  selector: {app: rc}\n  template:\n    metadata: {labels: {app: rc}}\n    spec: {containers: [{name: c, image: weft.local/busybox:1.36}]}\n"
        }
        "daemonsets.apps" => {
            "apiVersion: apps/v1\nkind: DaemonSet\nmetadata: {name: sample, namespace: d}\nspec:\n  selector: {matchLabels: {app: ds}}\n  template:\n    metadata: {labels: {app: ds}}\n    spec: {containers: [{name: c, image: weft.local/busybox:1.36}]}\n"
        }
        "statefulsets.apps" => {
            "apiVersion: apps/v1\nkind: StatefulSet\nmetadata: {name: sample, namespace: d}\nspec:\n  replicas: 0\n  serviceName: sample\n  selector: {matchLabels: {app: sts}}\n  template:\n    metadata: {labels: {app: sts}}\n    spec: {containers: [{name: c, image: weft.local/busybox:1.36}]}\n  volumeClaimTemplates: [{metadata: {name: data}, spec: {accessModes: [ReadWriteOnce], resources: {requests: {storage: 1Gi}}}}]\n"
        }
        "controllerrevisions.apps" => {
            "apiVersion: apps/v1\nkind: ControllerRevision\nmetadata: {name: sample, namespace: d}\nrevision: 1\ndata: {spec: {template: {}}}\n"
        }
        "deployments.apps" => {
            "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: sample, namespace: d}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: dep}}\n  template:\n    metadata: {labels: {app: dep}}\n    spec: {containers: [{name: c, image: weft.local/busybox:1.36}]}\n"
        }
        "replicasets.apps" => {
            "apiVersion: apps/v1\nkind: ReplicaSet\nmetadata: {name: sample, namespace: d}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: rs}}\n  template:\n    metadata: {labels: {app: rs}}\n    spec: {containers: [{name: c, image: weft.local/busybox:1.36}]}\n"
        }
        "jobs.batch" => {
            "apiVersion: batch/v1\nkind: Job\nmetadata: {name: sample, namespace: d}\nspec:\n  suspend: true\n  template:\n    spec: {restartPolicy: Never, containers: [{name: c, image: weft.local/busybox:1.36}]}\n"
        }
        "cronjobs.batch" => {
            "apiVersion: batch/v1\nkind: CronJob\nmetadata: {name: sample, namespace: d}\nspec:\n  schedule: '*/5 * * * *'\n  suspend: true\n  jobTemplate:\n    spec:\n      template:\n        spec: {restartPolicy: Never, containers: [{name: c, image: weft.local/busybox:1.36}]}\n"
        }
        "poddisruptionbudgets.policy" => {
            "apiVersion: policy/v1\nkind: PodDisruptionBudget\nmetadata: {name: sample, namespace: d}\nspec: {minAvailable: 1, selector: {matchLabels: {app: s}}}\n"
        }
        "endpointslices.discovery.k8s.io" => {
            "apiVersion: discovery.k8s.io/v1\nkind: EndpointSlice\nmetadata: {name: sample, namespace: d, labels: {kubernetes.io/service-name: sample}}\naddressType: IPv4\nendpoints: [{addresses: [10.1.2.3], conditions: {ready: true}}]\nports: [{port: 80, protocol: TCP}]\n"
        }
        "leases.coordination.k8s.io" => {
            "apiVersion: coordination.k8s.io/v1\nkind: Lease\nmetadata: {name: sample, namespace: d}\nspec: {holderIdentity: me, leaseDurationSeconds: 15}\n"
        }
        "networkpolicies.networking.k8s.io" => {
            "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: sample, namespace: d}\nspec:\n  podSelector: {matchLabels: {app: s}}\n  policyTypes: [Ingress, Egress]\n  ingress: [{from: [{podSelector: {matchLabels: {app: c}}}], ports: [{port: 80}]}]\n  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}}]}]\n"
        }
        "storageclasses.storage.k8s.io" => {
            "apiVersion: storage.k8s.io/v1\nkind: StorageClass\nmetadata: {name: sample}\nprovisioner: weft.dev/local\nreclaimPolicy: Delete\nvolumeBindingMode: WaitForFirstConsumer\n"
        }
        "roles.rbac.authorization.k8s.io" => {
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {name: sample, namespace: d}\nrules: [{apiGroups: [''], resources: [pods], verbs: [get, list]}]\n"
        }
        "rolebindings.rbac.authorization.k8s.io" => {
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {name: sample, namespace: d}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: Role, name: sample}\nsubjects: [{kind: ServiceAccount, name: sample, namespace: d}, {kind: User, name: jo, apiGroup: rbac.authorization.k8s.io}]\n"
        }
        "clusterroles.rbac.authorization.k8s.io" => {
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRole\nmetadata: {name: sample}\nrules: [{apiGroups: [apps], resources: [deployments], verbs: ['*']}, {nonResourceURLs: [/healthz], verbs: [get]}]\n"
        }
        "clusterrolebindings.rbac.authorization.k8s.io" => {
            "apiVersion: rbac.authorization.k8s.io/v1\nkind: ClusterRoleBinding\nmetadata: {name: sample}\nroleRef: {apiGroup: rbac.authorization.k8s.io, kind: ClusterRole, name: sample}\nsubjects: [{kind: Group, name: team, apiGroup: rbac.authorization.k8s.io}]\n"
        }
        "horizontalpodautoscalers.autoscaling" => {
            "apiVersion: autoscaling/v2\nkind: HorizontalPodAutoscaler\nmetadata: {name: sample, namespace: d}\nspec:\n  scaleTargetRef: {apiVersion: apps/v1, kind: Deployment, name: sample}\n  minReplicas: 1\n  maxReplicas: 3\n  metrics: [{type: Resource, resource: {name: cpu, target: {type: Utilization, averageUtilization: 50}}}]\n"
        }
        "events.events.k8s.io" => {
            "apiVersion: events.k8s.io/v1\nkind: Event\nmetadata: {name: sample2, namespace: d}\neventTime: '2026-01-01T00:00:00.000000Z'\nreportingController: weft.dev/test\nreportingInstance: test\naction: Testing\nreason: Tested\nregarding: {kind: Pod, name: sample, namespace: d}\nnote: a sample\ntype: Normal\n"
        }
        _ => return None,
    })
}

/// The name a sample of `resource` has, and whether it is namespaced.
fn name_of(resource: &str) -> &'static str {
    match resource {
        "events.events.k8s.io" => "sample2",
        _ => "sample",
    }
}

fn session(minor: u32) -> Result<()> {
    let path = kubectl_path(Some(minor));
    ensure!(
        path.exists(),
        "{} is missing on this machine",
        path.display()
    );
    let island = Island::new("describe")?;
    let cp = ControlPlane::start(&island, ControlOptions::default())?;
    let run = |args: &[&str]| cp.kubectl(Some(minor), args);
    let text = |o: &std::process::Output| {
        format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            String::from_utf8_lossy(&o.stderr)
        )
    };
    let out = run(&["create", "namespace", "d"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let out = run(&["api-resources", "--verbs=get", "-o", "name"])?;
    ensure!(out.status.success(), "{}", text(&out));
    let resources: Vec<String> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(str::to_string)
        .filter(|l| !l.is_empty())
        .collect();
    ensure!(resources.len() > 20, "api-resources: {resources:?}");
    let missing: Vec<&String> = resources.iter().filter(|r| sample(r).is_none()).collect();
    ensure!(
        missing.is_empty(),
        "served kinds without a sample: {missing:?}"
    );
    let dir = tempfile::tempdir()?;
    let mut failures = Vec::new();
    // Services first: their Endpoints are theirs.
    let mut ordered: Vec<&String> = resources.iter().filter(|r| *r == "services").collect();
    ordered.extend(resources.iter().filter(|r| *r != "services"));
    for r in ordered {
        let file = dir.path().join(format!("{r}.yaml"));
        std::fs::write(&file, sample(r).expect("checked above"))?;
        // Some already exist (the namespace's default account).
        let out = run(&["apply", "-f", &file.to_string_lossy()])?;
        if !out.status.success() {
            failures.push(format!("apply {r}: {}", text(&out)));
            continue;
        }
        let name = name_of(r);
        let mut args = vec!["describe", r.as_str(), name];
        let cluster = matches!(
            r.as_str(),
            "namespaces"
                | "nodes"
                | "persistentvolumes"
                | "storageclasses.storage.k8s.io"
                | "clusterroles.rbac.authorization.k8s.io"
                | "clusterrolebindings.rbac.authorization.k8s.io"
        );
        if !cluster {
            args.extend(["-n", "d"]);
        }
        let out = run(&args)?;
        let t = text(&out);
        if !out.status.success() || t.contains("panic") || !t.contains(name) {
            failures.push(format!("describe {r}: {t}"));
        }
    }
    // The API's own Service and its slice, as Weft publishes them.
    let out = run(&["describe", "service", "kubernetes", "-n", "default"])?;
    let t = text(&out);
    if !out.status.success() || t.contains("panic") || !t.contains("Endpoints:") {
        failures.push(format!("describe service kubernetes: {t}"));
    }
    ensure!(
        failures.is_empty(),
        "kubectl 1.{minor}:\n{}",
        failures.join("\n")
    );
    Ok(())
}

#[test]
fn describe_every_kind_with_kubectl_1_27() -> Result<()> {
    session(27)
}

#[test]
fn describe_every_kind_with_kubectl_1_30() -> Result<()> {
    session(30)
}

#[test]
fn describe_every_kind_with_kubectl_1_33() -> Result<()> {
    session(33)
}

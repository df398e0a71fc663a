//! Namespaces: Active when made, labelled with their own name (as
//! kube-apiserver 1.21+ does, so that policies can select them by name),
//! and deleted in two steps: marked Terminating while the namespace
//! controller empties them, gone once their `kubernetes` finalizer is.

use async_trait::async_trait;
use k8s_openapi::api::core::v1::{Namespace, NamespaceSpec, NamespaceStatus};

use super::kind::{Kind, NameRule, kind_fields};

/// The label every namespace carries with its own name.
pub const NAME_LABEL: &str = "kubernetes.io/metadata.name";

#[async_trait]
impl Kind for Namespace {
    kind_fields!(spec: NamespaceSpec, status: NamespaceStatus);

    const NAME: NameRule = NameRule::Label;

    fn prepare_for_create(&mut self) {
        self.status = Some(NamespaceStatus {
            phase: Some("Active".into()),
            ..NamespaceStatus::default()
        });
    }

    fn default_fields(&mut self) {
        self.spec
            .get_or_insert_with(Default::default)
            .finalizers
            .get_or_insert_with(|| vec!["kubernetes".into()]);
        if let Some(name) = self.metadata.name.clone() {
            self.metadata
                .labels
                .get_or_insert_with(Default::default)
                .insert(NAME_LABEL.into(), name);
        }
    }

    fn validate(&self) -> Vec<weft_api::error::Cause> {
        let mut out = Vec::new();
        super::pod_security::check_labels(&mut out, self.metadata.labels.as_ref());
        out
    }

    fn has_spec_finalizers(&self) -> bool {
        self.spec
            .as_ref()
            .and_then(|s| s.finalizers.as_ref())
            .is_some_and(|f| !f.is_empty())
    }

    fn on_terminating(&mut self) {
        self.status.get_or_insert_with(Default::default).phase = Some("Terminating".into());
    }
}

//! Status conditions (a pod's Ready, a node's map conditions, ...), set as
//! Kubernetes sets them: one condition per type, whose lastTransitionTime
//! moves only when its status does. The pod, node and deployment condition
//! types of k8s-openapi all follow this one rule.

use k8s_openapi::api::apps::v1::DeploymentCondition;
use k8s_openapi::api::core::v1::{NodeCondition, PodCondition};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

/// What a condition type has in common with the others.
pub trait Condition {
    /// Its type (`Ready`, ...).
    fn kind(&self) -> &str;
    /// `True`, `False` or `Unknown`.
    fn status(&self) -> &str;
    /// Its message, if any.
    fn message(&self) -> Option<&str>;
    /// When its status last changed.
    fn transition(&self) -> Option<&Time>;
    /// Sets when its status last changed.
    fn set_transition(&mut self, at: Option<Time>);
}

macro_rules! condition {
    ($t:ty) => {
        impl Condition for $t {
            fn kind(&self) -> &str {
                &self.type_
            }
            fn status(&self) -> &str {
                &self.status
            }
            fn message(&self) -> Option<&str> {
                self.message.as_deref()
            }
            fn transition(&self) -> Option<&Time> {
                self.last_transition_time.as_ref()
            }
            fn set_transition(&mut self, at: Option<Time>) {
                self.last_transition_time = at;
            }
        }
    };
}
condition!(PodCondition);
condition!(NodeCondition);
condition!(DeploymentCondition);

/// Puts `new` in `list` in place of the condition of its type (or at the
/// end), keeping the old lastTransitionTime while the status is the same.
/// Returns whether the status or message changed.
pub fn set<C: Condition>(list: &mut Vec<C>, mut new: C) -> bool {
    match list.iter_mut().find(|c| c.kind() == new.kind()) {
        Some(existing) => {
            let changed = existing.status() != new.status() || existing.message() != new.message();
            if existing.status() == new.status() {
                new.set_transition(existing.transition().cloned());
            }
            *existing = new;
            changed
        }
        None => {
            list.push(new);
            true
        }
    }
}

/// The condition of type `kind` in `list`.
pub fn find<'a, C: Condition>(list: &'a [C], kind: &str) -> Option<&'a C> {
    list.iter().find(|c| c.kind() == kind)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> Option<Time> {
        Some(Time(
            k8s_openapi::jiff::Timestamp::from_second(secs).expect("a time"),
        ))
    }

    fn node(status: &str, message: &str, t: i64) -> NodeCondition {
        NodeCondition {
            type_: "X".into(),
            status: status.into(),
            message: Some(message.into()),
            last_transition_time: at(t),
            ..NodeCondition::default()
        }
    }

    #[test]
    fn the_transition_time_moves_with_the_status_only() {
        let mut list = vec![node("False", "fine", 1)];
        assert!(!set(&mut list, node("False", "fine", 2)), "nothing changed");
        assert_eq!(list[0].last_transition_time, at(1));
        assert!(set(&mut list, node("False", "other words", 3)));
        assert_eq!(list[0].last_transition_time, at(1), "same status");
        assert!(set(&mut list, node("True", "full", 4)));
        assert_eq!(list[0].last_transition_time, at(4), "a transition");
        let mut other = node("True", "y", 5);
        other.type_ = "Y".into();
        assert!(set(&mut list, other));
        assert_eq!(list.len(), 2);
        assert_eq!(find(&list, "Y").map(|c| c.status.as_str()), Some("True"));
    }
}

//! Who is asking: the user a request was authenticated as, which the API
//! server (authentication) and RBAC (authorization) both speak of.

/// An authenticated user.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct User {
    pub name: String,
    pub uid: String,
    /// Its groups, `system:authenticated` among them.
    pub groups: Vec<String>,
}

/// The group of every authenticated user, as kube-apiserver adds it.
pub const AUTHENTICATED: &str = "system:authenticated";

impl User {
    pub fn is_admin(&self) -> bool {
        self.groups.iter().any(|g| g == "system:masters")
    }

    /// The node this user is the agent of.
    pub fn node(&self) -> Option<&str> {
        if self.groups.iter().any(|g| g == "system:nodes") {
            self.name.strip_prefix("system:node:")
        } else {
            None
        }
    }
}

//! Weft object model: Kubernetes types, REST paths, typed client and validation (issue 3 fills this crate).

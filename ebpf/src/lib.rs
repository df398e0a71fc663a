#![no_std]
// Exists so that the crate has a library target for tooling.

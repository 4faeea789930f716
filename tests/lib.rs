//! Empty on purpose: this crate exists to hold the one integration-test binary, `it/main.rs`.

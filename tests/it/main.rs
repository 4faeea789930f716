//! The one integration-test binary. Each module is a family of tests named as sentences.

mod properties;
mod samples;
mod schemas;
mod tidy;

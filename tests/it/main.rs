//! The one integration-test binary. Each module is a family of tests named as sentences.

// Fixtures outside #[test] functions unwrap freely: a failure there is a broken test, not bad input.
#![allow(clippy::unwrap_used, clippy::print_stdout)]

mod api;
mod api_security;
mod cli;
mod compose;
mod conflict;
mod data_dir;
mod dhcp;
mod dhcp_dual_stack;
mod dhcp_v6;
mod dnsmasq_limits;
mod fuzz;
mod kafka_restart;
mod kafka_security;
mod leases;
mod log;
mod observability;
mod packaging;
mod properties;
mod quarantine;
mod recovery;
mod samples;
mod schemas;
mod simulation;
mod tidy;
mod ui;
mod vnic_state;

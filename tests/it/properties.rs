//! Property tests: long random sequences of mixed events, with DESIGN.md's invariants checked after
//! every step, and replay checked at the end.
//!
//! Every run prints its seed; rerun a failure with `IPAM_PROPTEST_SEED=<seed>`. `IPAM_PROPTEST_CASES`
//! sets how many sequences each test tries (default 24).

pub(crate) mod allocator;
pub(crate) mod placement;

use std::fmt::Debug;

use proptest::strategy::Strategy;
use proptest::test_runner::{Config, RngSeed, TestCaseError, TestRunner};

/// Runs `test` on `cases` values of `strategy` with a seed that is printed, so that a failure can
/// be reproduced exactly.
pub fn run<S: Strategy>(name: &str, strategy: S, test: impl Fn(S::Value) -> Result<(), TestCaseError>)
where
    S::Value: Debug,
{
    let seed = std::env::var("IPAM_PROPTEST_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(|| {
        std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(1)
    });
    let cases = std::env::var("IPAM_PROPTEST_CASES").ok().and_then(|s| s.parse().ok()).unwrap_or(24);
    println!("{name}: proptest seed {seed} (rerun with IPAM_PROPTEST_SEED={seed})");
    let config = Config {
        cases,
        rng_seed: RngSeed::Fixed(seed),
        failure_persistence: None,
        max_shrink_iters: 2000,
        ..Config::default()
    };
    let mut runner = TestRunner::new(config);
    if let Err(error) = runner.run(&strategy, test) {
        panic!("{name} failed; reproduce with IPAM_PROPTEST_SEED={seed}\n{error}");
    }
}

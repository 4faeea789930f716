//! What one seed does: a list of actions decided up front from the seed alone, so that the same
//! script can be played twice (with its faults, and without them) and any failure replays exactly.
//!
//! The engine and host records come from the property tests' generators (`properties::allocator`
//! and `properties::placement`), sampled with a proptest runner seeded from the seed; the faults
//! and the delivery disorder (duplicates, late records, a stop before its start) are decided here.

use ipam_core::Envelope;
use ipam_core::event::{CLOCK_KEY, Topic};
use proptest::strategy::{Strategy, ValueTree};
use proptest::test_runner::{Config, RngAlgorithm, TestRng, TestRunner};

use crate::properties::{allocator, placement};

/// A record the simulation appends to an input topic, as an engine or a host agent would.
#[derive(Debug, Clone)]
pub(crate) struct Input {
    pub(crate) topic: Topic,
    pub(crate) key: String,
    pub(crate) value: Vec<u8>,
}

/// Which driver an action is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Which {
    Allocator,
    Placement,
}

/// How a snapshot file is damaged.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Damage {
    /// Cut at this fraction (per mille) of its length, as a torn write would.
    Truncate(u16),
    /// The state replaced by bytes that are not a state.
    Garble,
    /// The file is gone.
    Delete,
}

/// One step of a script.
#[derive(Debug, Clone)]
pub(crate) enum Action {
    /// Append these records (new ones, duplicates, or late ones), in this order.
    Append(Vec<Input>),
    /// One `Driver::turn` of a driver.
    Turn(Which),
    /// Fault: the driver's process dies (its open batch is lost); it restarts at its next turn.
    Crash(Which),
    /// The driver stops cleanly (commit, snapshot) and restarts at its next turn.
    Restart(Which),
    /// Fault: the next batch commit fails with a storage error and nothing of it lands.
    TearNextCommit,
    /// Fault: damage one of the driver's snapshot files, then crash it so its restart reads it.
    DamageSnapshot(Which, usize, Damage),
}

impl Action {
    /// True for the actions a run without faults leaves out.
    pub(crate) fn is_fault(&self) -> bool {
        matches!(self, Action::Crash(_) | Action::Restart(_) | Action::TearNextCommit | Action::DamageSnapshot(..))
    }
}

/// How the drivers of one seed are configured, and what they do.
#[derive(Debug, Clone)]
pub(crate) struct Script {
    /// Steps per batch (small, so that batches commit and tear often).
    pub(crate) batch_steps: usize,
    /// Records between snapshots (small, so that restarts start from snapshots often).
    pub(crate) snapshot_every_records: u64,
    pub(crate) actions: Vec<Action>,
}

/// The suite's seeded generator (SplitMix64): the same seed, the same script, on any machine.
pub(crate) type Prng = ipam_tests::rng::SplitMix64;

/// The generator a script of `seed` draws from.
pub(crate) fn prng(seed: u64) -> Prng {
    ipam_tests::rng::SplitMix64(seed ^ 0x5eed_5eed_5eed_5eed)
}

/// Builds the script of `seed`, `actions` random actions long after a prelude that declares
/// networks, subnets and hosts (so that reservations and placements happen from the start).
pub(crate) fn script(seed: u64, actions: usize) -> Script {
    let mut generator = Generator::new(seed);
    let batch_steps = 1 + generator.prng.below(4) as usize;
    let snapshot_every_records = 2 + generator.prng.below(7);
    generator.prelude();
    for _ in 0..actions {
        generator.random_action();
    }
    generator.release_all();
    Script { batch_steps, snapshot_every_records, actions: generator.actions }
}

struct Generator {
    prng: Prng,
    runner: TestRunner,
    /// The number of the next new record: its id (`EventId::from_u128(n + 1)`).
    next_record: usize,
    /// The simulated clock: the time of the latest tick, in ms since the epoch.
    now_ms: i64,
    /// Everything appended so far, for duplicates.
    delivered: Vec<Input>,
    /// Records held back, with the action index after which they arrive.
    late: Vec<(usize, Input)>,
    actions: Vec<Action>,
}

impl Generator {
    fn new(seed: u64) -> Generator {
        let mut prng = prng(seed);
        let bytes: Vec<u8> = (0..4).flat_map(|_| prng.next_u64().to_le_bytes()).collect();
        let runner = TestRunner::new_with_rng(Config::default(), TestRng::from_seed(RngAlgorithm::ChaCha, &bytes));
        Generator {
            prng,
            runner,
            next_record: 0,
            now_ms: 1_700_000_000_000,
            delivered: Vec::new(),
            late: Vec::new(),
            actions: Vec::new(),
        }
    }

    fn sample<S: Strategy>(&mut self, strategy: S) -> S::Value {
        strategy.new_tree(&mut self.runner).expect("the property generators never reject").current()
    }

    fn engine(&mut self, op: &allocator::Op) -> Input {
        let n = self.next_record;
        self.next_record += 1;
        let value = allocator::record(n, op);
        // Garbage has no readable key; a producer keys it by the network it meant.
        let key = Envelope::decode(&value)
            .map(|envelope| envelope.event.key())
            .unwrap_or_else(|_| allocator::network_id(op_network(op)).to_string());
        Input { topic: Topic::Networks, key, value }
    }

    fn host(&mut self, op: &placement::Op) -> Input {
        let n = self.next_record;
        self.next_record += 1;
        let value = placement::record(n, op, &mut self.now_ms);
        let key = Envelope::decode(&value).map_or_else(|_| CLOCK_KEY.to_owned(), |envelope| envelope.event.key());
        Input { topic: Topic::Hosts, key, value }
    }

    fn append(&mut self, inputs: Vec<Input>) {
        if inputs.is_empty() {
            return;
        }
        self.delivered.extend(inputs.iter().cloned());
        self.actions.push(Action::Append(inputs));
    }

    /// Appends `inputs`, holding some back to arrive a few actions later (out of order).
    fn deliver(&mut self, inputs: Vec<Input>) {
        let mut now = Vec::new();
        for input in inputs {
            if self.prng.chance(120) {
                let at = self.actions.len() + 1 + self.prng.below(6) as usize;
                self.late.push((at, input));
            } else {
                now.push(input);
            }
        }
        self.append(now);
    }

    fn release_due(&mut self) {
        let index = self.actions.len();
        let (due, kept): (Vec<_>, Vec<_>) =
            std::mem::take(&mut self.late).into_iter().partition(|(at, _)| *at <= index);
        self.late = kept;
        self.append(due.into_iter().map(|(_, input)| input).collect());
    }

    fn release_all(&mut self) {
        let late = std::mem::take(&mut self.late);
        self.append(late.into_iter().map(|(_, input)| input).collect());
    }

    fn prelude(&mut self) {
        let mut inputs = Vec::new();
        for net in 1..=allocator::NETWORKS {
            let enabled = !self.prng.chance(100);
            inputs.push(self.engine(&allocator::Op::Network { net, enabled }));
            // The catalog's subnets 0 (IPv4), 1 (IPv4 with a pool) and 2 (IPv6); 3 overlaps 0.
            for which in 0..3 {
                inputs.push(self.engine(&allocator::Op::AddSubnet { net, which, dns: 0 }));
            }
        }
        for host in 0..3 {
            let op = placement::Op::Host { host, status: 0, attached: 0xff, interface: 0 };
            inputs.push(self.host(&op));
        }
        inputs.push(self.host(&placement::Op::Tick { advance_ms: 1000 }));
        self.append(inputs);
    }

    fn random_action(&mut self) {
        self.release_due();
        let which = if self.prng.chance(500) { Which::Allocator } else { Which::Placement };
        match self.prng.below(100) {
            0..=27 => {
                let count = 1 + self.prng.below(3);
                let inputs = (0..count)
                    .map(|_| {
                        let op = self.sample(allocator::op());
                        self.engine(&op)
                    })
                    .collect();
                self.deliver(inputs);
            }
            28..=31 => {
                // A stop delivered before its start.
                let op = self.sample(allocator::op());
                if let allocator::Op::Up { kind, net, vnic, .. } = op {
                    let start = self.engine(&op);
                    let stop = self.engine(&allocator::Op::Down { kind, net, vnic });
                    self.append(vec![stop, start]);
                }
            }
            32..=41 => {
                let op = self.sample(placement::op().prop_filter("host events", |op| {
                    matches!(
                        op,
                        placement::Op::Host { .. }
                            | placement::Op::RemoveHost { .. }
                            | placement::Op::Heartbeat { .. }
                            | placement::Op::Garbage
                    )
                }));
                let input = self.host(&op);
                self.deliver(vec![input]);
            }
            42..=49 => {
                let advance_ms = self.prng.below(4000) as u16;
                let input = self.host(&placement::Op::Tick { advance_ms });
                self.deliver(vec![input]);
            }
            50..=54 => {
                // Duplicate delivery: an earlier record again, byte for byte (same id).
                let index = self.prng.below(self.delivered.len() as u64) as usize;
                let input = self.delivered[index].clone();
                self.append(vec![input]);
            }
            55..=69 => self.actions.push(Action::Turn(Which::Allocator)),
            70..=83 => self.actions.push(Action::Turn(Which::Placement)),
            84..=88 => self.actions.push(Action::Crash(which)),
            89..=90 => self.actions.push(Action::Restart(which)),
            91..=95 => self.actions.push(Action::TearNextCommit),
            _ => {
                let file = self.prng.below(4) as usize;
                let damage = match self.prng.below(3) {
                    0 => Damage::Truncate(self.prng.below(1000) as u16),
                    1 => Damage::Garble,
                    _ => Damage::Delete,
                };
                self.actions.push(Action::DamageSnapshot(which, file, damage));
            }
        }
    }
}

/// The network an engine operation is about.
fn op_network(op: &allocator::Op) -> u8 {
    use allocator::Op;
    match *op {
        Op::Network { net, .. }
        | Op::RemoveNetwork { net }
        | Op::AddSubnet { net, .. }
        | Op::RemoveSubnet { net, .. }
        | Op::Up { net, .. }
        | Op::Down { net, .. }
        | Op::PortRequested { net, .. }
        | Op::PortReleased { net, .. }
        | Op::Garbage { net, .. }
        | Op::Policy { net, .. }
        | Op::Conflict { net, .. }
        | Op::Cleared { net, .. } => net,
        // A partition tick is keyed by the clock (it decodes, so this is never asked).
        Op::Tick => 1,
    }
}

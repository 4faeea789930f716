//! Test fixtures shared by the core's unit tests: envelopes around events, a compact rendering of
//! outputs for snapshot expectations, and a seeded generator for randomized tests.

use crate::event::{Envelope, Event};
use crate::ids::EventId;
use crate::time::Timestamp;

/// A small seeded generator (SplitMix64) for the randomized tests: the same seed, the same inputs.
pub struct SplitMix64(pub u64);

impl SplitMix64 {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    pub fn below(&mut self, bound: u64) -> u64 {
        self.next() % bound
    }
}

/// The `n`-th input of a test, at `n` seconds after the epoch.
pub fn envelope(n: u128, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(0xe000 + n),
        source: "test".to_owned(),
        time: Timestamp::from_unix_ms(n as i64 * 1000),
        subject: None,
        event,
    }
}

/// One line per event: its type without `ipam.` and `.v1`, then its data as compact JSON without
/// `cause`, with test UUIDs (`from_u128(n)`) written `#n`.
pub fn render(events: &[Event]) -> String {
    events
        .iter()
        .map(|event| {
            let mut data =
                Envelope::output(&envelope(0, event.clone()), 0, "test", event.clone()).to_json()["data"].take();
            if let Some(object) = data.as_object_mut() {
                object.remove("cause");
            }
            let name = event.type_name().trim_start_matches("ipam.").trim_end_matches(".v1");
            format!("{name} {}\n", shorten_uuids(&data.to_string()))
        })
        .collect()
}

fn shorten_uuids(text: &str) -> String {
    const PREFIX: &str = "00000000-0000-0000-0000-";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(at) = rest.find(PREFIX) {
        out.push_str(&rest[..at]);
        let digits = &rest[at + PREFIX.len()..];
        match digits.get(..12).and_then(|hex| u64::from_str_radix(hex, 16).ok()) {
            Some(n) => {
                out.push_str(&format!("#{n}"));
                rest = &digits[12..];
            }
            None => {
                out.push_str(PREFIX);
                rest = digits;
            }
        }
    }
    out.push_str(rest);
    out.replace('"', "")
}

//! What one input record costs to decode and encode: a vNIC start as the API writes it on
//! `ipam.networks` (a CloudEvents JSON envelope of about 480 bytes), through `Envelope::decode`
//! (the fast path every reader takes) and `Envelope::to_bytes`. Replay reads every input this way,
//! so one core decoding records caps replay at the rate printed here, whatever the machines do
//! with them (issue 11's replay target is 1 M events/s).

// A benchmark fixture that fails to build is a broken benchmark, not bad input.
#![allow(clippy::unwrap_used)]

use std::hint::black_box;
use std::time::Duration;

use criterion::{Criterion, Throughput, criterion_group, criterion_main};
use ipam_core::event::{Envelope, Event, VnicUp};
use ipam_core::ids::{EventId, NetworkId, SubnetId, VmId, VnicId};
use ipam_core::mac::Mac;
use ipam_core::time::Timestamp;

/// A vNIC start as `ipam bench --recovery` writes it (and the API, from an engine's event).
fn vnic_started(i: u64) -> Envelope {
    let b = i.to_be_bytes();
    let event = Event::VnicStarted(VnicUp {
        vnic_id: VnicId::from_u128(0x7000_0000_0000 + u128::from(i)),
        vm_id: VmId::from_u128(0x8000_0000_0000 + u128::from(i)),
        network_id: NetworkId::from_u128(5),
        subnet_id: Some(SubnetId::from_u128(6)),
        subnet_ids: Vec::new(),
        mac: Mac::from_octets([0x52, 0x54, b[4], b[5], b[6], b[7]]).unwrap(),
        requested_ip: None,
    });
    Envelope {
        id: EventId::from_u128(0x9000_0000_0000 + u128::from(i)),
        source: "ipam-bench".to_owned(),
        time: Timestamp::from_unix_ms(1_790_000_000_000),
        subject: Some(event.key()),
        event,
    }
}

fn benches(c: &mut Criterion) {
    let envelopes: Vec<Envelope> = (0..1000).map(vnic_started).collect();
    let records: Vec<Vec<u8>> = envelopes.iter().map(Envelope::to_bytes).collect();
    let mut group = c.benchmark_group("envelope");
    group.throughput(Throughput::Elements(records.len() as u64));
    group.bench_function(format!("decode 1,000 vNIC starts ({} bytes each)", records[0].len()), |b| {
        b.iter(|| {
            for record in &records {
                black_box(Envelope::decode(black_box(record)).unwrap());
            }
        })
    });
    // The same records with their keys sorted, as a client that builds its events as a JSON tree
    // sends them (`Envelope::to_json`, the CLI, `ipam bench`, `json.dumps(sort_keys=True)`):
    // `data` comes before `type`.
    let sorted: Vec<Vec<u8>> = envelopes.iter().map(|e| serde_json::to_vec(&e.to_json()).unwrap()).collect();
    group.bench_function("decode 1,000 vNIC starts, keys sorted (data before type)", |b| {
        b.iter(|| {
            for record in &sorted {
                black_box(Envelope::decode(black_box(record)).unwrap());
            }
        })
    });
    group.bench_function("encode 1,000 vNIC starts", |b| {
        b.iter(|| {
            for envelope in &envelopes {
                black_box(black_box(envelope).to_bytes());
            }
        })
    });
    group.finish();
}

criterion_group! {
    name = envelope;
    config = Criterion::default().measurement_time(Duration::from_secs(3)).warm_up_time(Duration::from_secs(1));
    targets = benches
}
criterion_main!(envelope);

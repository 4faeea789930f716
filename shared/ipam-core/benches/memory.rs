//! Bytes of heap per live reservation in the allocator, counted by a global allocator wrapper.
//! Run: `cargo bench -p ipam-core --bench memory`.
//!
//! The figure is the heap growth while N vNICs come up in one /12 subnet, divided by N; the
//! subnet's bitmaps are allocated before counting starts, so they are not in it. The network's
//! window of input ids is (up to 65,536 ids, 40 to 50 bytes each), which weighs most at 10k.

// The one place in the workspace with `unsafe`: a GlobalAlloc that counts bytes around `System`.
#![allow(unsafe_code, clippy::print_stdout, clippy::unwrap_used)]

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

use ipam_core::StateMachine;
use ipam_core::allocator::Allocator;
use ipam_core::event::{Event, NetworkUpserted, SubnetAdded, VnicUp};
use ipam_core::{Envelope, EventId, Mac, NetworkId, SubnetId, Timestamp, VmId, VnicId};

struct Counting;

static LIVE_BYTES: AtomicIsize = AtomicIsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        LIVE_BYTES.fetch_add(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        LIVE_BYTES.fetch_sub(layout.size() as isize, Ordering::Relaxed);
        unsafe { System.dealloc(ptr, layout) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn envelope(n: u64, event: Event) -> Envelope {
    Envelope {
        id: EventId::from_u128(u128::from(n)),
        source: "bench".to_owned(),
        time: Timestamp::from_unix_ms(n as i64),
        subject: None,
        event,
    }
}

fn splitmix64(state: u64) -> u64 {
    let mut z = state.wrapping_add(0x9e37_79b9_7f4a_7c15);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

fn main() {
    let network_id = NetworkId::from_u128(1);
    let subnet_id = SubnetId::from_u128(2);
    let mut allocator = Allocator::new();
    let upserted = NetworkUpserted { network_id, name: "bench".to_owned(), ipam_enabled: true, servers_count: None };
    allocator.apply(&envelope(0, Event::NetworkUpserted(upserted)));
    let subnet = SubnetAdded {
        network_id,
        subnet_id,
        cidr: "10.0.0.0/12".parse().unwrap(),
        gateway: "10.0.0.1".parse().unwrap(),
        dns_servers: vec![],
        ntp_servers: vec![],
        allocation_pools: None,
    };
    // Its own id: an id seen again is a retry, which the allocator ignores.
    allocator.apply(&envelope(u64::MAX, Event::SubnetAdded(subnet)));
    // Engine ids are random UUIDs (v4); ids that only grow are the B-tree's worst case, shown too.
    for (live, ids) in [(10_000u64, "random"), (100_000, "random"), (1_000_000, "random"), (100_000, "increasing")] {
        let mut allocator = allocator.clone();
        let before = LIVE_BYTES.load(Ordering::Relaxed);
        for n in 1..=live {
            let b = n.to_be_bytes();
            let event = Event::VnicStarted(VnicUp {
                vnic_id: VnicId::from_u128(match ids {
                    "random" => u128::from(splitmix64(n)) << 64 | u128::from(splitmix64(!n)),
                    _ => u128::from(n) << 64,
                }),
                vm_id: VmId::from_u128(u128::from(n)),
                network_id,
                subnet_id: Some(subnet_id),
                subnet_ids: Vec::new(),
                mac: Mac::from_octets([0x52, 0x54, b[4], b[5], b[6], b[7]]).unwrap(),
                requested_ip: None,
            });
            let outputs = allocator.apply(&envelope(n, event));
            // The reservation, and the subnet crossing a utilization threshold (80, 90 %) now and then.
            assert!(
                matches!(outputs.as_slice(), [Event::ReservationAdded(_), crossed @ ..]
                    if crossed.iter().all(|e| matches!(e, Event::SubnetUtilizationCrossed(_)))),
                "{outputs:?}"
            );
        }
        let grown = LIVE_BYTES.load(Ordering::Relaxed) - before;
        println!(
            "memory/live_reservations={live} ({ids} vNIC ids): {} bytes of heap, {:.1} bytes per live reservation",
            grown,
            grown as f64 / live as f64
        );
    }
}

//! What a device sends the bridge's TLS front: the byte stream split into packets (bounded) and
//! each judged by the gate (CONNECT, PUBLISH, SUBSCRIBE parsed by hand). Never panics.
#![no_main]

use std::sync::Arc;

use broker_bridge::gate::{Framer, Gate, Policy, PolicyRule, TopicBook};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let policy = Arc::new(Policy::new(vec![PolicyRule { devices: vec!["*".into()], write: vec!["*/*".into()] }]));
    let mut gate = Gate::new("dev-1".into(), policy, Arc::new(TopicBook::new(8)));
    let mut framer = Framer::default();
    // Fed in two pieces, as reads from a socket may split it anywhere.
    let split = data.first().map_or(0, |&b| usize::from(b)).min(data.len());
    for piece in [&data[..split], &data[split..]] {
        framer.push(piece);
        while let Ok(Some(packet)) = framer.next_packet(64 * 1024) {
            let _ = gate.check(&packet);
        }
    }
});

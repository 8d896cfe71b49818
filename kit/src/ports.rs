//! Ports for servers that a test or a script starts in another process.
//!
//! Binding port 0 and closing the socket hands out a port from the kernel's ephemeral range, the
//! range every *outgoing* connection draws its local port from. Between picking that port and the
//! server binding it, any client socket on the machine may take it, and the server fails with
//! "Address already in use" (this happened in CI). [`unused_port`] picks below the ephemeral
//! range instead, where only listeners live, and never hands out the same port twice in one
//! process.

use std::collections::BTreeSet;
use std::net::TcpListener;
use std::sync::Mutex;

/// Used when `/proc/sys/net/ipv4/ip_local_port_range` cannot be read (Linux's default).
const EPHEMERAL_LOW_DEFAULT: u16 = 32_768;
/// The lowest port handed out: above the well-known and most registered service ports.
const FLOOR: u16 = 15_000;

/// Ports handed out by this process, so two servers of one test binary never share one.
static HANDED_OUT: Mutex<BTreeSet<u16>> = Mutex::new(BTreeSet::new());

/// A TCP port on 127.0.0.1 that nothing listened on a moment ago, outside the ephemeral range.
///
/// Falls back to a kernel-chosen port when the ephemeral range leaves no room below it.
pub fn unused_port() -> u16 {
    let ceiling = ephemeral_low();
    let mut handed_out = HANDED_OUT.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
    if ceiling > FLOOR {
        let span = u32::from(ceiling - FLOOR);
        // A different starting point per process and call keeps concurrent processes apart.
        let mut offset = start_offset() % span;
        for _ in 0..span {
            let port = FLOOR + offset as u16;
            offset = (offset + 1) % span;
            if !handed_out.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                handed_out.insert(port);
                return port;
            }
        }
    }
    let port = TcpListener::bind("127.0.0.1:0").and_then(|l| l.local_addr()).map(|a| a.port()).expect("a free port");
    handed_out.insert(port);
    port
}

fn ephemeral_low() -> u16 {
    std::fs::read_to_string("/proc/sys/net/ipv4/ip_local_port_range")
        .ok()
        .and_then(|text| text.split_whitespace().next().and_then(|low| low.parse().ok()))
        .unwrap_or(EPHEMERAL_LOW_DEFAULT)
}

fn start_offset() -> u32 {
    let nanos = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.subsec_nanos()).unwrap_or(0);
    nanos ^ std::process::id().wrapping_mul(2_654_435_761)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ports_are_below_the_ephemeral_range_and_never_repeat() {
        let ports: Vec<u16> = (0..200).map(|_| unused_port()).collect();
        let distinct: BTreeSet<u16> = ports.iter().copied().collect();
        assert_eq!(distinct.len(), ports.len());
        let low = ephemeral_low();
        if low > FLOOR {
            assert!(ports.iter().all(|&p| (FLOOR..low).contains(&p)), "{ports:?} outside {FLOOR}..{low}");
        }
        for port in ports {
            TcpListener::bind(("127.0.0.1", port)).expect("the port is bindable");
        }
    }
}

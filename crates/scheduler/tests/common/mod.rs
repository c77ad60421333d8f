//! Shared helpers for the scheduler tests.
#![allow(dead_code)]

use std::net::{IpAddr, Ipv4Addr};

use ringlb_scheduler::BackendSpec;

pub fn spec(n: u32, weight: u32, max_connections: u32, backup: bool) -> BackendSpec {
    let addr = format!("10.{}.{}.{}:7000", (n >> 16) & 255, (n >> 8) & 255, n & 255);
    BackendSpec {
        addr: addr.parse().unwrap(),
        label: addr,
        weight,
        max_connections,
        priority: u8::from(backup),
    }
}

pub fn equal(n: u32) -> Vec<BackendSpec> {
    (0..n).map(|i| spec(i, 1, 0, false)).collect()
}

pub fn weighted(weights: &[u32]) -> Vec<BackendSpec> {
    weights
        .iter()
        .enumerate()
        .map(|(i, &w)| spec(i as u32, w, 0, false))
        .collect()
}

/// splitmix64: a deterministic stand-in for a worker's fast RNG.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub fn ip(&mut self) -> IpAddr {
        IpAddr::V4(Ipv4Addr::from(self.next() as u32))
    }
}

pub fn ip(n: u32) -> IpAddr {
    IpAddr::V4(Ipv4Addr::from(n))
}

/// Asserts that each observed share is within `tol` (absolute) of the expected share.
pub fn assert_shares(counts: &[u64], expected: &[f64], tol: f64) {
    let total: u64 = counts.iter().sum();
    for (i, (&c, &e)) in counts.iter().zip(expected).enumerate() {
        let share = c as f64 / total as f64;
        assert!(
            (share - e).abs() <= tol,
            "backend {i}: share {share:.4}, expected {e:.4} ± {tol} (counts {counts:?})"
        );
    }
}

//! What `ringlb --version` prints: enough to tell two builds apart in a bug report, and
//! what the kernel must offer. The build facts come from build.rs.

/// `ringlb --version` (`-V` prints the first line only).
pub const LONG: &str = concat!(
    env!("CARGO_PKG_VERSION"),
    "\ncommit:  ",
    env!("RINGLB_GIT_COMMIT"),
    "\ntarget:  ",
    env!("RINGLB_BUILD_TARGET"),
    "\nprofile: ",
    env!("RINGLB_BUILD_PROFILE"),
    "\nrustc:   ",
    env!("RINGLB_RUSTC_VERSION"),
    // The kernel features the data plane needs (checked at start and by `ringlb doctor`).
    "\nkernel:  Linux 6.0 or newer with io_uring enabled (rings set up with COOP_TASKRUN and \
SINGLE_ISSUER; cancel by fd, RECVSEND_POLL_FIRST, SPLICE); `ringlb doctor` checks this host",
);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn long_version_names_every_build_fact() {
        for field in ["commit:", "target:", "profile:", "rustc:", "kernel:"] {
            assert!(LONG.contains(field), "{field} missing from {LONG}");
        }
        assert!(LONG.starts_with(env!("CARGO_PKG_VERSION")));
        assert!(LONG.contains("io_uring"));
    }
}

//! Live binary upgrade: `ringlb upgrade`, `ringlb ctl upgrade` and SIGUSR2 all arrive
//! here. This build does not hand its sockets and connections over yet; the hook is
//! where that lives (docs/architecture.md, "Control socket and readiness").

use std::path::PathBuf;

use super::ControlPlane;

/// What a finished upgrade reports.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct UpgradeOutcome {
    /// The process now serving.
    pub new_pid: u32,
}

impl ControlPlane {
    /// Starts the binary at `binary` (default: the running executable) on the same
    /// configuration and hands it everything; returns once it serves. On `Err` this
    /// process keeps serving everything, and the reason goes back to the caller.
    pub(super) fn start_upgrade(
        &mut self,
        binary: Option<PathBuf>,
    ) -> Result<UpgradeOutcome, String> {
        let target = binary.map_or_else(
            || "the running binary".to_string(),
            |b| b.display().to_string(),
        );
        Err(format!(
            "live upgrade is not implemented in this build (asked for {target}); still serving"
        ))
    }
}

//! Room for one socket per simulated device: raises the process's open-files soft limit.

use crate::error::SimError;

/// File descriptors kept free for everything that is not a device connection.
const SPARE_FILES: u64 = 256;

/// Makes sure `devices` connections fit under the open-files limit, raising it when needed
/// ([`lodestone_kit::fdlimit::raise_open_files`]). Returns the soft limit now in force.
pub fn ensure_open_files(devices: u32) -> Result<u64, SimError> {
    let wanted = u64::from(devices) + SPARE_FILES;
    lodestone_kit::fdlimit::raise_open_files(wanted).map_err(|e| SimError::OpenFilesLimit { devices, wanted, hard: e.hard })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_fleet_fits() {
        assert!(ensure_open_files(10).unwrap() >= 10 + SPARE_FILES);
    }

    #[cfg(unix)]
    #[test]
    fn more_than_the_hard_limit_is_refused() {
        let err = ensure_open_files(u32::MAX).unwrap_err();
        assert!(matches!(err, SimError::OpenFilesLimit { .. }), "{err}");
    }
}

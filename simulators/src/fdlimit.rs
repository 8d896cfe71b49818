//! Room for one socket per simulated device: raises the process's open-files soft limit.

use crate::error::SimError;

/// File descriptors kept free for everything that is not a device connection.
const SPARE_FILES: u64 = 256;

/// Makes sure `devices` connections fit under the open-files limit, raising the soft limit up
/// to the hard one when needed. Returns the soft limit now in force.
#[cfg(unix)]
pub fn ensure_open_files(devices: u32) -> Result<u64, SimError> {
    let wanted = u64::from(devices) + SPARE_FILES;
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(wanted); // Unknown limit: let the connections themselves report failures.
    }
    let (soft, hard) = (limit.rlim_cur as u64, limit.rlim_max as u64);
    if soft >= wanted {
        return Ok(soft);
    }
    if hard < wanted {
        return Err(SimError::OpenFilesLimit { devices, wanted, hard });
    }
    limit.rlim_cur = wanted as libc::rlim_t;
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &limit) } != 0 {
        return Err(SimError::OpenFilesLimit { devices, wanted, hard: soft });
    }
    Ok(wanted)
}

#[cfg(not(unix))]
pub fn ensure_open_files(_devices: u32) -> Result<u64, SimError> {
    Ok(u64::MAX)
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

//! Room for many sockets: the process's open-files limit, raised to what a service or a load
//! generator needs (one socket per device, for the simulator and for the bridge).

/// Why the limit could not be raised.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{wanted} open files are needed but the hard limit is {hard} and cannot be raised (as root it can; or ulimit -Hn)")]
pub struct OpenFilesError {
    pub wanted: u64,
    pub hard: u64,
}

/// Makes sure `wanted` files can be open at once: raises the soft limit, and the hard limit too
/// when the process may (root). Returns the soft limit now in force.
#[cfg(unix)]
pub fn raise_open_files(wanted: u64) -> Result<u64, OpenFilesError> {
    let mut limit = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: getrlimit writes into the struct we pass and reads nothing else.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        return Ok(wanted); // Unknown limit: let the sockets themselves report failures.
    }
    let (soft, hard) = (limit.rlim_cur as u64, limit.rlim_max as u64);
    if soft >= wanted {
        return Ok(soft);
    }
    let raised = libc::rlimit { rlim_cur: wanted as libc::rlim_t, rlim_max: hard.max(wanted) as libc::rlim_t };
    // SAFETY: setrlimit only reads the struct we pass.
    if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
        return Ok(wanted);
    }
    Err(OpenFilesError { wanted, hard })
}

#[cfg(not(unix))]
pub fn raise_open_files(_wanted: u64) -> Result<u64, OpenFilesError> {
    Ok(u64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_small_need_fits() {
        assert!(raise_open_files(64).unwrap() >= 64);
    }
}

//! Helpers the bench programs share: dropping the page cache and waiting
//! for a child process with its peak RSS.

use anyhow::{Context, Result, bail};

/// Flush dirty pages and drop the page cache; false where that is not allowed.
pub fn drop_caches() -> bool {
    // SAFETY: sync() has no preconditions.
    unsafe { libc::sync() };
    std::fs::write("/proc/sys/vm/drop_caches", "3").is_ok()
}

/// This process's peak RSS in MiB (`VmHWM`). Children report their own:
/// `wait4`'s `ru_maxrss` carries the parent's high-water mark across
/// `exec`, so it overstates a child spawned by a parent that holds memory.
pub fn peak_rss_mib() -> Result<f64> {
    let status = std::fs::read_to_string("/proc/self/status")?;
    let kib: f64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .context("no VmHWM in /proc/self/status")?;
    Ok(kib / 1024.0)
}

/// Wait for child `pid`; its exit code (-1 if killed) and `ru_maxrss` in
/// KiB (see [`peak_rss_mib`] for why that can overstate the child's own).
pub fn wait_with_rusage(pid: i32) -> Result<(i32, i64)> {
    let mut status = 0;
    // SAFETY: an all-zero rusage is a valid value to be overwritten by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: pid is our own child, and both pointers are to live locals.
    let r = unsafe { libc::wait4(pid, &mut status, 0, &mut usage) };
    if r < 0 {
        bail!("wait4: {}", std::io::Error::last_os_error());
    }
    let code = if libc::WIFEXITED(status) {
        libc::WEXITSTATUS(status)
    } else {
        -1
    };
    Ok((code, usage.ru_maxrss))
}

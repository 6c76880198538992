//! CPU time a proxy spends per request, from `/proc/<pid>/stat` (`utime` +
//! `stime`, all threads), read before and after a run. Unlike a rate, it
//! hardly depends on what else the machine is running, so it shows where a
//! proxy is costlier per request even on a busy host.
use anyhow::{Context, Result};

/// User plus system CPU of `pids` (whole processes), in seconds.
pub fn seconds(pids: &[u32]) -> Result<f64> {
    // SAFETY: sysconf has no preconditions.
    let ticks = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    let mut total = 0u64;
    for pid in pids {
        let stat = std::fs::read_to_string(format!("/proc/{pid}/stat"))
            .with_context(|| format!("read /proc/{pid}/stat"))?;
        // Fields after the command name, which may hold spaces: state is
        // field 3, utime 14 and stime 15 (proc(5)).
        let rest = stat
            .rsplit_once(')')
            .map(|(_, r)| r)
            .context("/proc/PID/stat")?;
        let fields: Vec<&str> = rest.split_whitespace().collect();
        let field = |n: usize| {
            fields
                .get(n - 3)
                .and_then(|v| v.parse::<u64>().ok())
                .context("utime/stime")
        };
        total += field(14)? + field(15)?;
    }
    Ok(total as f64 / ticks)
}

/// Runs `f`, which returns (requests per second, requests done), and
/// returns that rate and the CPU µs `pids` spent per request.
pub fn per_request(pids: &[u32], f: impl FnOnce() -> Result<(f64, f64)>) -> Result<(f64, f64)> {
    let before = seconds(pids)?;
    let (rate, requests) = f()?;
    let spent = seconds(pids)? - before;
    Ok((
        rate,
        if requests > 0.0 {
            spent * 1e6 / requests
        } else {
            f64::NAN
        },
    ))
}

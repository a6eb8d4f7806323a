//! CPU and memory of a process from /proc, and the open-files limit.

use std::time::Instant;

use anyhow::Context;

/// One sample: cumulative CPU seconds (user + system) and resident memory.
pub struct Usage {
    pub at: Instant,
    pub cpu_secs: f64,
    pub rss_kb: u64,
}

fn clock_ticks() -> f64 {
    // SAFETY: sysconf only reads a configuration value.
    let t = unsafe { libc::sysconf(libc::_SC_CLK_TCK) };
    if t > 0 { t as f64 } else { 100.0 }
}

fn sample(dir: &str) -> anyhow::Result<Usage> {
    let at = Instant::now();
    let stat = std::fs::read_to_string(format!("{dir}/stat")).with_context(|| format!("read {dir}/stat"))?;
    // Fields after the command name, which is in parentheses and may hold spaces.
    let after = &stat[stat.rfind(')').context("malformed stat")? + 1..];
    let f: Vec<&str> = after.split_whitespace().collect();
    // f[0] is field 3 (state); utime is field 14, stime field 15.
    let utime: f64 = f.get(11).context("no utime")?.parse()?;
    let stime: f64 = f.get(12).context("no stime")?.parse()?;
    let status = std::fs::read_to_string(format!("{dir}/status"))?;
    let rss_kb = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    Ok(Usage {
        at,
        cpu_secs: (utime + stime) / clock_ticks(),
        rss_kb,
    })
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        sample(&format!("/proc/{pid}"))
    }

    pub fn of_self() -> anyhow::Result<Self> {
        sample("/proc/self")
    }
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    lim.rlim_cur as u64
}

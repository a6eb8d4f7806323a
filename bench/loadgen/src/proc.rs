//! CPU and memory of a process from /proc, and the open-files limit.

use std::time::Instant;

use anyhow::Context;

/// One sample: cumulative CPU seconds (user + system) and resident memory,
/// and the machine's CPU jiffies, all and stolen by the hypervisor.
pub struct Usage {
    pub at: Instant,
    pub cpu_secs: f64,
    pub rss_kb: u64,
    pub machine_jiffies: u64,
    pub steal_jiffies: u64,
}

impl Usage {
    /// Share of the machine's CPU time stolen by the hypervisor between two
    /// samples, in percent: on a shared VM, runs with much steal are not
    /// comparable with runs without.
    pub fn steal_pct(a: &Usage, b: &Usage) -> Option<f64> {
        let all = b.machine_jiffies.checked_sub(a.machine_jiffies).filter(|&j| j > 0)?;
        let steal = b.steal_jiffies.checked_sub(a.steal_jiffies)?;
        Some((1000.0 * steal as f64 / all as f64).round() / 10.0)
    }
}

/// All and steal jiffies of every CPU (first line of /proc/stat); zeros when unreadable.
fn machine_jiffies() -> (u64, u64) {
    let stat = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let fields: Vec<u64> = stat
        .lines()
        .next()
        .unwrap_or_default()
        .split_whitespace()
        .skip(1)
        .filter_map(|f| f.parse().ok())
        .collect();
    // user nice system idle iowait irq softirq steal; guest time is counted in user.
    (fields.iter().take(8).sum(), fields.get(7).copied().unwrap_or(0))
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
    let (machine_jiffies, steal_jiffies) = machine_jiffies();
    Ok(Usage {
        at,
        cpu_secs: (utime + stime) / clock_ticks(),
        rss_kb,
        machine_jiffies,
        steal_jiffies,
    })
}

impl Usage {
    pub fn of(pid: u32) -> anyhow::Result<Self> {
        sample(&format!("/proc/{pid}"))
    }

    /// The processes' CPU and RSS summed (the nodes of a cluster); `None` for none.
    pub fn of_all(pids: &[u32]) -> anyhow::Result<Option<Self>> {
        let mut total: Option<Self> = None;
        for &pid in pids {
            let u = Self::of(pid)?;
            total = Some(match total {
                None => u,
                Some(t) => Self {
                    cpu_secs: t.cpu_secs + u.cpu_secs,
                    rss_kb: t.rss_kb + u.rss_kb,
                    ..u
                },
            });
        }
        Ok(total)
    }

    pub fn of_self() -> anyhow::Result<Self> {
        sample("/proc/self")
    }
}

/// Raises the soft open-files limit to the hard one; returns the new soft limit.
pub fn raise_nofile() -> u64 {
    let mut lim = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: plain syscalls on a local struct.
    unsafe {
        if libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim) == 0 {
            lim.rlim_cur = lim.rlim_max;
            libc::setrlimit(libc::RLIMIT_NOFILE, &lim);
            libc::getrlimit(libc::RLIMIT_NOFILE, &mut lim);
        }
    }
    // rlim_t is u64 on Linux, which is all this tool runs on.
    lim.rlim_cur
}

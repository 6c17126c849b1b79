//! What the kernel says about a process: resident memory, CPU time, context switches.
//!
//! Everything is read from `/proc/<pid>/…` of the daemon (a child of the bench), so the numbers
//! are the ones `ps`/`top` would show an operator, not estimates from inside the process.

use std::fs;
use std::io;
use std::time::Duration;

/// A field of `/proc/<pid>/status` in kB (`VmRSS`, `VmHWM`), as KiB.
pub fn status_kib(pid: u32, field: &str) -> io::Result<u64> {
    let text = fs::read_to_string(format!("/proc/{pid}/status"))?;
    text.lines()
        .find_map(|l| {
            let rest = l.strip_prefix(field)?.strip_prefix(':')?;
            rest.trim().trim_end_matches("kB").trim().parse().ok()
        })
        .ok_or_else(|| io::Error::other(format!("no {field} in /proc/{pid}/status")))
}

/// Resident set size in KiB.
pub fn rss_kib(pid: u32) -> io::Result<u64> {
    status_kib(pid, "VmRSS")
}

/// Ticks per second of `/proc/<pid>/stat` times (`sysconf(_SC_CLK_TCK)`, 100 on Linux).
fn clock_ticks() -> u64 {
    nix::unistd::sysconf(nix::unistd::SysconfVar::CLK_TCK)
        .ok()
        .flatten()
        .and_then(|t| u64::try_from(t).ok())
        .filter(|t| *t > 0)
        .unwrap_or(100)
}

/// `utime + stime` of the whole process (all threads, live or exited) from `/proc/<pid>/stat`.
/// The kernel derives the total from the scheduler's nanosecond runtime, but prints it in clock
/// ticks, so this is exact to 10 ms.
pub fn cpu_time_stat(pid: u32) -> io::Result<Duration> {
    let text = fs::read_to_string(format!("/proc/{pid}/stat"))?;
    // Fields after the command name, which is in parentheses and may contain spaces.
    let after = text
        .rsplit_once(')')
        .map(|(_, rest)| rest)
        .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))?;
    let fields: Vec<&str> = after.split_whitespace().collect();
    // `after` starts at field 3 (state); utime and stime are fields 14 and 15.
    let parse = |i: usize| -> io::Result<u64> {
        fields
            .get(i)
            .and_then(|f| f.parse().ok())
            .ok_or_else(|| io::Error::other("malformed /proc/<pid>/stat"))
    };
    let ticks = parse(14 - 3)? + parse(15 - 3)?;
    Ok(Duration::from_nanos(ticks * 1_000_000_000 / clock_ticks()))
}

/// Thread ids of a process.
fn tasks(pid: u32) -> io::Result<Vec<String>> {
    let mut out = Vec::new();
    for entry in fs::read_dir(format!("/proc/{pid}/task"))? {
        out.push(entry?.file_name().to_string_lossy().into_owned());
    }
    Ok(out)
}

/// Time on CPU summed over the live threads, in nanoseconds, from
/// `/proc/<pid>/task/*/schedstat` (first field). Finer than [`cpu_time_stat`], but blind to
/// threads that already exited.
pub fn cpu_time_schedstat(pid: u32) -> io::Result<Duration> {
    let mut total = 0u64;
    for tid in tasks(pid)? {
        // A thread may exit between the listing and the read.
        let Ok(text) = fs::read_to_string(format!("/proc/{pid}/task/{tid}/schedstat")) else {
            continue;
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|f| f.parse::<u64>().ok())
            .unwrap_or(0);
    }
    Ok(Duration::from_nanos(total))
}

/// Context switches of one thread, by name.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ThreadSwitches {
    /// Thread id.
    pub tid: String,
    /// `comm` (tokio workers are `tokio-runtime-w`).
    pub name: String,
    /// `voluntary_ctxt_switches + nonvoluntary_ctxt_switches`.
    pub switches: u64,
}

/// Context switches of every live thread. Each switch away from a thread that then sleeps is a
/// wake-up later, so the delta over an idle window counts wake-ups.
pub fn switches(pid: u32) -> io::Result<Vec<ThreadSwitches>> {
    let mut out = Vec::new();
    for tid in tasks(pid)? {
        let base = format!("/proc/{pid}/task/{tid}");
        let Ok(status) = fs::read_to_string(format!("{base}/status")) else {
            continue;
        };
        let field = |name: &str| -> u64 {
            status
                .lines()
                .find_map(|l| l.strip_prefix(name)?.strip_prefix(':')?.trim().parse().ok())
                .unwrap_or(0)
        };
        let name = fs::read_to_string(format!("{base}/comm"))
            .unwrap_or_default()
            .trim()
            .to_owned();
        out.push(ThreadSwitches {
            tid,
            name,
            switches: field("voluntary_ctxt_switches") + field("nonvoluntary_ctxt_switches"),
        });
    }
    out.sort_by(|a, b| a.tid.cmp(&b.tid));
    Ok(out)
}

/// Switches per thread between two readings (threads present in both; new threads count whole).
pub fn switch_delta(before: &[ThreadSwitches], after: &[ThreadSwitches]) -> Vec<ThreadSwitches> {
    after
        .iter()
        .map(|a| {
            let base = before
                .iter()
                .find(|b| b.tid == a.tid)
                .map_or(0, |b| b.switches);
            ThreadSwitches {
                switches: a.switches.saturating_sub(base),
                ..a.clone()
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id();
        let rss = rss_kib(pid).unwrap();
        assert!(rss > 100, "{rss} KiB");
        assert!(status_kib(pid, "VmHWM").unwrap() >= rss);
        // Burn a little CPU so the counters are not all zero.
        let mut x = 0u64;
        for i in 0..20_000_000u64 {
            x = x.wrapping_mul(31).wrapping_add(i);
        }
        std::hint::black_box(x);
        assert!(cpu_time_schedstat(pid).unwrap() > Duration::ZERO);
        assert!(cpu_time_stat(pid).is_ok());
        let threads = switches(pid).unwrap();
        assert!(!threads.is_empty());
    }

    #[test]
    fn delta_counts_new_threads_whole_and_never_goes_negative() {
        let t = |tid: &str, n| ThreadSwitches {
            tid: tid.into(),
            name: "x".into(),
            switches: n,
        };
        let d = switch_delta(&[t("1", 10), t("2", 5)], &[t("1", 12), t("3", 4)]);
        assert_eq!(d.iter().map(|x| x.switches).collect::<Vec<_>>(), vec![2, 4]);
        let d = switch_delta(&[t("1", 10)], &[t("1", 3)]);
        assert_eq!(d[0].switches, 0);
    }
}

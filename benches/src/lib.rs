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

/// A bench's command line: `--name value` options and bare switches.
/// `-h`/`--help` prints the usage and exits; an unknown argument, or an
/// option without its value, is an error that shows the usage.
pub struct Args {
    args: Vec<String>,
}

impl Args {
    /// Parse `std::env::args()` against the known `options` and `switches`.
    pub fn parse(usage: &str, options: &[&str], switches: &[&str]) -> Result<Self> {
        Self::from(std::env::args().skip(1).collect(), usage, options, switches)
    }

    fn from(args: Vec<String>, usage: &str, options: &[&str], switches: &[&str]) -> Result<Self> {
        let mut i = 0;
        while i < args.len() {
            let a = args[i].as_str();
            if a == "-h" || a == "--help" {
                println!("{usage}");
                std::process::exit(0);
            }
            if options.contains(&a) {
                if args.get(i + 1).is_none_or(|v| v.starts_with("--")) {
                    bail!("{a} needs a value\n\n{usage}");
                }
                i += 2;
            } else if switches.contains(&a) {
                i += 1;
            } else {
                bail!("unknown argument {a:?}\n\n{usage}");
            }
        }
        Ok(Self { args })
    }

    /// The value after `name`, if given.
    pub fn value(&self, name: &str) -> Option<&str> {
        let i = self.args.iter().position(|a| a == name)?;
        self.args.get(i + 1).map(String::as_str)
    }

    /// The value after `name` parsed, or `default` when absent.
    pub fn parsed<T: std::str::FromStr>(&self, name: &str, default: T) -> Result<T>
    where
        T::Err: std::fmt::Display,
    {
        match self.value(name) {
            None => Ok(default),
            Some(v) => v.parse().map_err(|e| anyhow::anyhow!("{name} {v:?}: {e}")),
        }
    }

    /// Whether the switch `name` was given.
    pub fn flag(&self, name: &str) -> bool {
        self.args.iter().any(|a| a == name)
    }
}

#[cfg(test)]
mod tests {
    use super::Args;

    fn parse(a: &[&str]) -> anyhow::Result<Args> {
        let args = a.iter().map(|s| s.to_string()).collect();
        Args::from(args, "usage", &["--n", "--dir"], &["--warm"])
    }

    #[test]
    fn options_switches_and_errors() {
        let a = parse(&["--n", "5", "--warm"]).expect("parse");
        assert_eq!(a.parsed("--n", 1usize).expect("n"), 5);
        assert_eq!(a.parsed("--m", 7usize).expect("default"), 7);
        assert!(a.flag("--warm") && a.value("--dir").is_none());
        assert!(parse(&["--bogus"]).is_err());
        assert!(parse(&["--n"]).is_err());
        assert!(parse(&["--n", "--warm"]).is_err());
        assert!(
            parse(&["--n", "x"])
                .expect("parse")
                .parsed("--n", 1usize)
                .is_err()
        );
    }
}

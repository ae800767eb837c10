//! How much CPU a broker on this machine gave its JIT compilers while a bench ran.
//!
//! A JVM compiles its hot paths through its first minutes of work, and it compiles again when
//! the work changes. Where the broker shares the bench's cores, that is CPU the code under
//! test does not get: on a 2-core machine, a broker just started and four `stream-kafka` runs
//! in a row, its C2 compiler thread alone took 2.9, 1.5, 2.6 and 0.75 s (a quarter to a half
//! of the broker's own CPU), and the first run's stage read at 0.51 and 0.49 of the ceiling
//! where the fourth read at 0.60 and 0.76. An untimed warm-up before the timed runs did not
//! help (the ratios after it were no better: 0.39–0.61 with 1 worker, 0.49–0.74 with 2, in
//! six runs), so the bench reports what the compilers took instead, and a run whose broker
//! was compiling can be told apart.
//!
//! The broker is found by the port the bench connects to: the process that holds the
//! listening socket (`/proc/net/tcp` and `tcp6`, then the `socket:[inode]` links under
//! `/proc/<pid>/fd`), and in it the threads HotSpot names `C1 CompilerThread<n>` and
//! `C2 CompilerThread<n>`. A broker on another machine, or one this user may not look into,
//! is not found, and the bench says nothing about it. Only the first bootstrap address's
//! port is looked up (its host is not): of a cluster on this machine, the figure is that one
//! broker's.

use crate::machine_cpu::{stat_cpu_ticks, TICKS_PER_S};
use std::path::Path;

/// A JVM on this machine listening on the bench's broker port.
#[derive(Clone, Debug)]
pub struct BrokerJit {
    pid: u32,
}

impl BrokerJit {
    /// The JVM listening on the port of `bootstrap`'s first address, if it is on this
    /// machine and has compiler threads.
    pub fn find(bootstrap: &str) -> Option<BrokerJit> {
        let first = bootstrap.split(',').next()?.trim();
        let port: u16 = first.rsplit(':').next()?.parse().ok()?;
        let inodes: Vec<u64> = ["/proc/net/tcp", "/proc/net/tcp6"]
            .iter()
            .filter_map(|p| std::fs::read_to_string(p).ok())
            .flat_map(|table| listening_inodes(&table, port))
            .collect();
        if inodes.is_empty() {
            return None;
        }
        let pid = holder_of(Path::new("/proc"), &inodes)?;
        let jit = BrokerJit { pid };
        jit.compiler_threads().next().is_some().then_some(jit)
    }

    /// The CPU each of the broker's compiler threads has taken so far.
    pub fn mark(&self) -> JitMark {
        JitMark {
            ticks: self
                .compiler_threads()
                .filter_map(|task| {
                    let tid = task.file_name()?.to_str()?.parse().ok()?;
                    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                    Some((tid, stat_cpu_ticks(&stat)))
                })
                .collect(),
        }
    }

    fn compiler_threads(&self) -> impl Iterator<Item = std::path::PathBuf> {
        std::fs::read_dir(format!("/proc/{}/task", self.pid))
            .into_iter()
            .flatten()
            .filter_map(Result::ok)
            .map(|e| e.path())
            .filter(|task| {
                std::fs::read_to_string(task.join("comm"))
                    .is_ok_and(|comm| is_compiler_thread(comm.trim_end()))
            })
    }
}

/// The CPU ticks of each compiler thread (by thread id) at one moment.
#[derive(Clone, Debug, Default)]
pub struct JitMark {
    ticks: std::collections::HashMap<u32, u64>,
}

impl JitMark {
    /// CPU seconds the compiler threads took between `earlier` and this mark. HotSpot starts
    /// and stops compiler threads as its queue grows and shrinks: one started since counts
    /// whole, and what one stopped since took after `earlier` is not seen, so this can fall
    /// short, never overstate.
    pub fn since(&self, earlier: &JitMark) -> f64 {
        self.ticks
            .iter()
            .map(|(tid, now)| now.saturating_sub(earlier.ticks.get(tid).copied().unwrap_or(0)))
            .sum::<u64>() as f64
            / TICKS_PER_S
    }
}

/// HotSpot's compiler threads: `C1 CompilerThread0`, `C2 CompilerThread1`, … (`comm` keeps
/// 15 bytes of a name: `C2 CompilerThre`).
fn is_compiler_thread(comm: &str) -> bool {
    (comm.starts_with("C1 ") || comm.starts_with("C2 ")) && comm[3..].starts_with("Compiler")
}

/// The inodes of the sockets listening on `port` in a `/proc/net/tcp` or `tcp6` table.
fn listening_inodes(table: &str, port: u16) -> Vec<u64> {
    const LISTEN: &str = "0A";
    table
        .lines()
        .skip(1)
        .filter_map(|line| {
            let f: Vec<&str> = line.split_whitespace().collect();
            // sl local_address rem_address st tx_queue:rx_queue tr:tm->when retrnsmt uid timeout inode
            let local_port = f.get(1)?.rsplit(':').next()?;
            let listening = *f.get(3)? == LISTEN;
            (listening && u16::from_str_radix(local_port, 16).ok()? == port)
                .then(|| f.get(9)?.parse().ok())
                .flatten()
        })
        .collect()
}

/// The process under `proc` (a `/proc`) that holds one of the sockets `inodes`.
fn holder_of(proc: &Path, inodes: &[u64]) -> Option<u32> {
    let wanted: Vec<String> = inodes.iter().map(|i| format!("socket:[{i}]")).collect();
    std::fs::read_dir(proc)
        .ok()?
        .filter_map(Result::ok)
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .find(|pid| {
            std::fs::read_dir(proc.join(pid.to_string()).join("fd"))
                .into_iter()
                .flatten()
                .filter_map(Result::ok)
                .filter_map(|fd| std::fs::read_link(fd.path()).ok())
                .any(|link| wanted.iter().any(|w| link.as_os_str() == w.as_str()))
        })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_listening_sockets_on_the_port_are_taken() {
        // A broker on 19592 (0x4C88) listening on v4, a client connected to it (established,
        // remote port 19592), and a listener on another port.
        let table = "  sl  local_address rem_address   st tx_queue rx_queue tr tm->when retrnsmt   uid  timeout inode
   0: 0100007F:4C88 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 555 1 0000000000000000 100 0 0 10 0
   1: 0100007F:D431 0100007F:4C88 01 00000000:00000000 00:00000000 00000000     0        0 556 1 0000000000000000 20 4 30 10 -1
   2: 0100007F:4C89 00000000:0000 0A 00000000:00000000 00:00000000 00000000     0        0 557 1 0000000000000000 100 0 0 10 0
";
        assert_eq!(listening_inodes(table, 19592), vec![555]);
        assert_eq!(listening_inodes(table, 19593), vec![557]);
        assert!(listening_inodes(table, 9092).is_empty());
        assert!(listening_inodes("header only\n", 19592).is_empty());
    }

    #[test]
    fn a_compiler_thread_started_since_counts_whole_and_none_counts_less_than_nothing() {
        let mark = |t: &[(u32, u64)]| JitMark {
            ticks: t.iter().copied().collect(),
        };
        let before = mark(&[(10, 500), (11, 40)]);
        // 10 went on, 11 stopped, 12 started.
        let after = mark(&[(10, 650), (12, 30)]);
        assert!((after.since(&before) - 1.8).abs() < 1e-9);
        assert_eq!(before.since(&before), 0.0);
        assert_eq!(JitMark::default().since(&before), 0.0);
    }

    #[test]
    fn compiler_threads_are_hotspot_s_c1_and_c2() {
        assert!(is_compiler_thread("C2 CompilerThre"));
        assert!(is_compiler_thread("C1 CompilerThre"));
        assert!(!is_compiler_thread("data-plane-kafk"));
        assert!(!is_compiler_thread("C2"));
        assert!(!is_compiler_thread("G1 Conc#0"));
    }

    #[test]
    fn a_thread_s_cpu_is_read_past_a_name_with_spaces_and_parentheses() {
        let stat = "4242 (C2 CompilerThre) S 1 2 3 4 5 6 7 8 9 10 1200 34 0 0 20 0 1 0";
        assert_eq!(stat_cpu_ticks(stat), 1234);
        let odd = "7 (a) b (c)) R 1 2 3 4 5 6 7 8 9 10 5 6 0 0";
        assert_eq!(stat_cpu_ticks(odd), 11);
        assert_eq!(stat_cpu_ticks(""), 0);
    }

    #[test]
    fn the_holder_of_a_socket_is_found_by_its_fd_link_and_a_non_jvm_is_no_broker() {
        // This test's own listener: found as this process, which has no compiler threads.
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let port = listener.local_addr().unwrap().port();
        let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
        let inodes = listening_inodes(&table, port);
        assert_eq!(inodes.len(), 1, "{port}");
        assert_eq!(
            holder_of(Path::new("/proc"), &inodes),
            Some(std::process::id())
        );
        assert!(BrokerJit::find(&format!("127.0.0.1:{port}")).is_none());
        assert!(BrokerJit::find("not an address").is_none());
    }
}

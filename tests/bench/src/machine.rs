//! Where a run's CPU went, by process name (Linux /proc): the workers, PostgreSQL's backends,
//! nats-server and this harness with the in-process simulator, beside how busy the whole
//! machine was. Enough to tell "a worker is the limit" from "the machine is".

use std::collections::HashMap;

use serde_json::{Value, json};

/// Every process's CPU ticks and the machine's busy and total ticks at one moment.
pub struct CpuSnapshot {
    /// pid → (command name, user + system ticks).
    processes: HashMap<u32, (String, u64)>,
    machine_busy: u64,
    machine_total: u64,
}

impl CpuSnapshot {
    pub fn take() -> Self {
        let mut processes = HashMap::new();
        for entry in std::fs::read_dir("/proc").into_iter().flatten().flatten() {
            let Some(pid) = entry
                .file_name()
                .to_str()
                .and_then(|p| p.parse::<u32>().ok())
            else {
                continue;
            };
            let Ok(stat) = std::fs::read_to_string(entry.path().join("stat")) else {
                continue;
            };
            if let Some(p) = parse_stat(&stat) {
                processes.insert(pid, p);
            }
        }
        let (machine_busy, machine_total) = std::fs::read_to_string("/proc/stat")
            .ok()
            .and_then(|s| parse_machine(&s))
            .unwrap_or((0, 0));
        Self {
            processes,
            machine_busy,
            machine_total,
        }
    }

    /// CPU seconds per process name since `before` (processes alive at the end of the window),
    /// the largest first, and the machine's busy share of all its cores.
    pub fn since(&self, before: &CpuSnapshot) -> Value {
        let mut by_name: HashMap<&str, u64> = HashMap::new();
        for (pid, (name, ticks)) in &self.processes {
            // A process started since `before` (a PostgreSQL backend a pool opened during the
            // run) spent all its ticks in the window; one that ended within it is not seen.
            let earlier = match before.processes.get(pid) {
                Some((was, earlier)) if was == name => *earlier,
                _ => 0,
            };
            *by_name.entry(name).or_default() += ticks.saturating_sub(earlier);
        }
        let mut named: Vec<(&str, u64)> = by_name.into_iter().filter(|(_, t)| *t > 0).collect();
        named.sort_by(|a, b| b.1.cmp(&a.1).then(a.0.cmp(b.0)));
        let hz = 100.0; // USER_HZ: /proc reports ticks of 1/100 s on Linux.
        let by_process: Vec<Value> = named
            .into_iter()
            .take(8)
            .map(|(name, t)| json!({"process": name, "cpu_s": t as f64 / hz}))
            .collect();
        let total = self.machine_total.saturating_sub(before.machine_total);
        let busy = self.machine_busy.saturating_sub(before.machine_busy);
        json!({
            "machine_busy_share": if total == 0 { 0.0 } else { busy as f64 / total as f64 },
            "by_process": by_process,
        })
    }
}

/// `(command name, user + system ticks)` from one `/proc/<pid>/stat`.
fn parse_stat(stat: &str) -> Option<(String, u64)> {
    let open = stat.find('(')?;
    let close = stat.rfind(')')?;
    let name = stat.get(open + 1..close)?.to_string();
    let fields: Vec<&str> = stat.get(close + 1..)?.split_whitespace().collect();
    let ticks = |i: usize| fields.get(i).and_then(|v| v.parse::<u64>().ok());
    Some((name, ticks(11)? + ticks(12)?))
}

/// `(busy, total)` ticks of all cores from `/proc/stat`'s first line (idle and iowait are not
/// busy).
fn parse_machine(stat: &str) -> Option<(u64, u64)> {
    let line = stat.lines().next()?;
    let ticks: Vec<u64> = line
        .split_whitespace()
        .skip(1)
        .map(|v| v.parse().ok())
        .collect::<Option<_>>()?;
    let total: u64 = ticks.iter().sum();
    let idle = ticks.get(3)? + ticks.get(4)?;
    Some((total - idle, total))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_process_name_with_spaces_and_parentheses_is_read_whole() {
        let stat = "42 (postgres: a (b)) S 1 2 3 4 5 6 7 8 9 10 150 25 0 0";
        assert_eq!(parse_stat(stat), Some(("postgres: a (b)".into(), 175)));
        assert_eq!(parse_stat("garbage"), None);
    }

    #[test]
    fn the_machine_is_busy_for_all_but_idle_and_iowait() {
        let stat = "cpu  100 0 50 800 50 0 0 0 0 0\ncpu0 1 2 3\n";
        assert_eq!(parse_machine(stat), Some((150, 1000)));
    }

    #[test]
    fn this_process_is_seen_spending_cpu() {
        let before = CpuSnapshot::take();
        let mut x = 0u64;
        let start = std::time::Instant::now();
        while start.elapsed() < std::time::Duration::from_millis(100) {
            x = x.wrapping_add(std::hint::black_box(1));
        }
        std::hint::black_box(x);
        let after = CpuSnapshot::take();
        let report = after.since(&before);
        let mine = std::fs::read_to_string("/proc/self/stat")
            .ok()
            .and_then(|s| parse_stat(&s))
            .map(|(n, _)| n)
            .unwrap();
        let spent: f64 = report["by_process"]
            .as_array()
            .unwrap()
            .iter()
            .filter(|p| p["process"] == mine.as_str())
            .filter_map(|p| p["cpu_s"].as_f64())
            .sum();
        assert!(spent > 0.0, "{report}");
    }
}

//! Host facts for the report, and the load check before measuring.

use anyhow::{bail, Result};
use std::path::Path;

/// What the numbers were measured on.
#[derive(Debug, Clone)]
pub struct HostInfo {
    /// CPU model name.
    pub cpu: String,
    /// Logical CPUs.
    pub cpus: usize,
    /// Kernel release.
    pub kernel: String,
    /// KVM modules loaded (`kvm_pvm` means nested PVM), and whether the
    /// host itself runs under a hypervisor.
    pub kvm: String,
    /// 1, 5 and 15 minute load averages when the run started.
    pub load: [f64; 3],
}

fn read(path: &str) -> String {
    std::fs::read_to_string(path).unwrap_or_default()
}

impl HostInfo {
    /// Reads `/proc` and `/sys`.
    pub fn read() -> HostInfo {
        let cpuinfo = read("/proc/cpuinfo");
        let cpu = cpuinfo
            .lines()
            .find_map(|l| l.strip_prefix("model name"))
            .map(|r| r.trim_start_matches([' ', '\t', ':']).trim().to_string())
            .unwrap_or_else(|| "unknown".into());
        let nested = cpuinfo
            .lines()
            .any(|l| l.starts_with("flags") && l.split_whitespace().any(|f| f == "hypervisor"));
        let mut mods: Vec<&str> = ["kvm_pvm", "kvm_amd", "kvm_intel"]
            .into_iter()
            .filter(|m| Path::new("/sys/module").join(m).exists())
            .collect();
        if mods.is_empty() {
            mods.push("no KVM module found");
        }
        let kvm = format!(
            "{}{}",
            mods.join("+"),
            if nested {
                " (host is itself a VM: nested)"
            } else {
                ""
            }
        );
        let la = read("/proc/loadavg");
        let mut w = la.split_whitespace().map(|x| x.parse().unwrap_or(f64::NAN));
        let load = [
            w.next().unwrap_or(f64::NAN),
            w.next().unwrap_or(f64::NAN),
            w.next().unwrap_or(f64::NAN),
        ];
        HostInfo {
            cpu,
            cpus: std::thread::available_parallelism().map_or(1, |n| n.get()),
            kernel: read("/proc/sys/kernel/osrelease").trim().to_string(),
            kvm,
            load,
        }
    }

    /// Whether the 1-minute load is high enough to skew the figures.
    pub fn load_high(&self) -> bool {
        self.load[0] > self.cpus as f64 * 0.5
    }
}

/// Refuses to measure on an overloaded host unless forced; warns loudly
/// when the load is merely high.
pub fn check_load(h: &HostInfo, force: bool) -> Result<()> {
    let l = h.load[0];
    if l > h.cpus as f64 && !force {
        bail!(
            "load average {l:.2} on {} CPUs: the host is busy and the figures would be noise. \
             Wait for it to settle, or pass --force to measure anyway",
            h.cpus
        );
    }
    if h.load_high() {
        eprintln!("############################################################");
        eprintln!(
            "# WARNING: load average {l:.2} on {} CPUs at start.",
            h.cpus
        );
        eprintln!("# Figures will be noisy; trust the ratios, not the values.");
        eprintln!("############################################################");
    }
    Ok(())
}

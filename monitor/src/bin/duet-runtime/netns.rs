//! The guest on the container's network: join the namespace the engine
//! made, create a TAP there, and connect it to the namespace's interface
//! with tc `mirred` redirects both ways (Kata's "tcfilter" model). The guest
//! takes over the interface's identity: its MAC, IPv4 address, prefix and
//! default route. The kernel keeps the address on the interface, but every
//! frame arriving there is redirected to the TAP before the kernel's stack
//! sees it, so the guest answers for it.
//!
//! The interface is read with `ip -j` and wired with `tc` (iproute2), the
//! tools that also show an operator what was done.

use crate::bundle::NetNs;
use anyhow::{bail, Context, Result};
use serde::Deserialize;
use std::os::fd::AsRawFd;
use std::process::Command;

/// The TAP's name inside the container's namespace.
pub const TAP: &str = "duet0";

/// The guest's network identity and the TAP it uses.
#[derive(Debug, PartialEq, Eq)]
pub struct GuestNet {
    /// The TAP in the namespace.
    pub tap: String,
    /// The interface's MAC, now the guest's.
    pub mac: String,
    /// `a.b.c.d/N`.
    pub cidr: String,
    /// The default route's gateway.
    pub gateway: Option<String>,
}

impl GuestNet {
    /// `duet run` options giving the guest this identity.
    pub fn monitor_args(&self, env: &[String]) -> Vec<String> {
        let mut v = vec![
            "--net".to_string(),
            format!("tap={},mac={}", self.tap, self.mac),
        ];
        // The container's own address (e.g. `-e IP=dhcp`) wins over the
        // namespace's, and then its gateway comes with it.
        let has = |k: &str| env.iter().any(|e| e.starts_with(&format!("{k}=")));
        if has("IP") {
            return v;
        }
        v.extend(["--env".into(), format!("IP={}", self.cidr)]);
        if let (Some(gw), false) = (&self.gateway, has("GW")) {
            v.extend(["--env".into(), format!("GW={gw}")]);
        }
        v
    }
}

#[derive(Deserialize)]
struct Link {
    ifname: String,
    #[serde(default)]
    link_type: String,
    #[serde(default)]
    address: String,
    #[serde(default)]
    mtu: u32,
    #[serde(default)]
    addr_info: Vec<Addr>,
}

#[derive(Deserialize)]
struct Addr {
    family: String,
    local: String,
    prefixlen: u8,
}

#[derive(Deserialize)]
struct Route {
    #[serde(default)]
    gateway: Option<String>,
}

/// Moves this process into the namespace at `path`.
fn join(path: &std::path::Path) -> Result<()> {
    let f = std::fs::File::open(path)
        .with_context(|| format!("cannot open the network namespace {}", path.display()))?;
    // SAFETY: setns on a namespace descriptor we hold; it changes only this
    // process's network namespace, which is the point.
    if unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) } != 0 {
        bail!(
            "cannot join the network namespace {}: {}",
            path.display(),
            std::io::Error::last_os_error()
        );
    }
    Ok(())
}

fn run(program: &str, args: &[&str]) -> Result<String> {
    let o = Command::new(program)
        .args(args)
        .output()
        .with_context(|| format!("cannot run {program} (install iproute2)"))?;
    if !o.status.success() {
        bail!(
            "`{program} {}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&o.stderr).trim()
        );
    }
    Ok(String::from_utf8_lossy(&o.stdout).into_owned())
}

/// The interface the guest takes over: the first Ethernet one with an IPv4 address.
fn pick(links: &[Link]) -> Option<(&Link, &Addr)> {
    links
        .iter()
        .filter(|l| l.link_type == "ether" && l.ifname != TAP)
        .find_map(|l| {
            l.addr_info
                .iter()
                .find(|a| a.family == "inet")
                .map(|a| (l, a))
        })
}

/// Joins the container's namespace and connects a TAP to its interface.
/// `None` when there is nothing to connect (host or empty namespace).
pub fn setup(ns: &NetNs) -> Result<Option<GuestNet>> {
    let path = match ns {
        NetNs::Host => {
            log::info!("no network namespace: the guest gets no network interface");
            return Ok(None);
        }
        NetNs::New => {
            log::info!("a new, empty network namespace: the guest gets no network interface");
            return Ok(None);
        }
        NetNs::Path(p) => p,
    };
    join(path)?;
    let links: Vec<Link> = serde_json::from_str(&run("ip", &["-j", "addr", "show"])?)
        .context("cannot read `ip -j addr show`")?;
    let Some((link, addr)) = pick(&links) else {
        log::info!(
            "no interface with an IPv4 address in {}: the guest gets no network interface",
            path.display()
        );
        return Ok(None);
    };
    let routes: Vec<Route> = serde_json::from_str(&run("ip", &["-j", "route", "show", "default"])?)
        .context("cannot read `ip -j route show default`")?;
    let gateway = routes.into_iter().find_map(|r| r.gateway);
    let eth = link.ifname.as_str();
    if links.iter().any(|l| l.ifname == TAP) {
        // Left from an earlier run in this namespace (a restore): start afresh.
        run("ip", &["link", "del", TAP])?;
    }
    run("ip", &["tuntap", "add", "dev", TAP, "mode", "tap"])?;
    let mtu = link.mtu.max(68).to_string();
    run("ip", &["link", "set", "dev", TAP, "mtu", &mtu, "up"])?;
    for (from, to) in [(eth, TAP), (TAP, eth)] {
        // An ingress qdisc left by an earlier run would refuse a second one.
        let _ = run("tc", &["qdisc", "del", "dev", from, "ingress"]);
        run("tc", &["qdisc", "add", "dev", from, "ingress"])?;
        // u32 matching everything: this kernel has no matchall classifier.
        run(
            "tc",
            &[
                "filter", "add", "dev", from, "parent", "ffff:", "protocol", "all", "u32", "match",
                "u32", "0", "0", "action", "mirred", "egress", "redirect", "dev", to,
            ],
        )?;
    }
    let net = GuestNet {
        tap: TAP.into(),
        mac: link.address.clone(),
        cidr: format!("{}/{}", addr.local, addr.prefixlen),
        gateway,
    };
    log::info!("guest network: {net:?} through {eth}");
    Ok(Some(net))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn picks_the_first_ethernet_interface_with_ipv4() {
        let links: Vec<Link> = serde_json::from_str(
            r#"[{"ifname":"lo","link_type":"loopback","addr_info":[{"family":"inet","local":"127.0.0.1","prefixlen":8}]},
                {"ifname":"eth1","link_type":"ether","address":"aa:aa:aa:aa:aa:aa","addr_info":[{"family":"inet6","local":"fe80::1","prefixlen":64}]},
                {"ifname":"eth0","link_type":"ether","address":"02:00:00:00:00:05","mtu":1500,"addr_info":[{"family":"inet","local":"10.88.0.5","prefixlen":16}]}]"#,
        )
        .unwrap();
        let (l, a) = pick(&links).unwrap();
        assert_eq!(
            (l.ifname.as_str(), a.local.as_str(), a.prefixlen),
            ("eth0", "10.88.0.5", 16)
        );
    }

    #[test]
    fn container_env_wins() {
        let n = GuestNet {
            tap: TAP.into(),
            mac: "02:00:00:00:00:05".into(),
            cidr: "10.88.0.5/16".into(),
            gateway: Some("10.88.0.1".into()),
        };
        assert_eq!(
            n.monitor_args(&[]),
            [
                "--net",
                "tap=duet0,mac=02:00:00:00:00:05",
                "--env",
                "IP=10.88.0.5/16",
                "--env",
                "GW=10.88.0.1"
            ]
        );
        assert_eq!(
            n.monitor_args(&["IP=dhcp".into()]),
            ["--net", "tap=duet0,mac=02:00:00:00:00:05"]
        );
    }
}

//! The `--net tap=NAME[,mac=MAC][,transport=virtio|hypercall]` option and the errors of attaching a TAP.

use std::io;
use thiserror::Error;

/// `/dev/net/tun`.
pub(super) const TUN_PATH: &str = "/dev/net/tun";
/// Longest interface name (IFNAMSIZ - 1).
pub(super) const NAME_MAX: usize = 15;

/// One `--net` option, parsed.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct NetConfig {
    /// The TAP interface name.
    pub tap: String,
    /// The guest's MAC address; `None` picks a locally administered one.
    pub mac: Option<[u8; 6]>,
    /// How the guest reaches it.
    pub transport: crate::devices::Transport,
}

/// Why a network device could not be set up.
#[derive(Debug, Error)]
pub enum NetError {
    /// The option is not `tap=NAME[,mac=MAC][,transport=virtio|hypercall]`.
    #[error("--net `{0}` is not tap=NAME[,mac=MAC][,transport=virtio|hypercall] (e.g. --net tap=tap0,mac=02:00:00:00:00:01)")]
    BadSpec(String),
    /// The interface name is unusable.
    #[error(
        "`{0}` is not a usable interface name: use 1 to 15 characters, no `/`, whitespace or `:`"
    )]
    BadName(String),
    /// The MAC address is malformed.
    #[error("`{0}` is not a unicast MAC address: use six hex bytes separated by `:`, first byte even (e.g. 02:00:00:00:00:01)")]
    BadMac(String),
    /// The same TAP twice.
    #[error("tap {0} is given twice with --net; each TAP backs one guest NIC")]
    Duplicate(String),
    /// Too many devices for the boot info.
    #[error("too many devices: the boot info holds {0}")]
    TooMany(usize),
    /// `/dev/net/tun` cannot be opened.
    #[error("cannot open {TUN_PATH} for tap {tap}; load the tun module (`modprobe tun`) and check the node's permissions")]
    NoTun {
        /// The TAP name.
        tap: String,
        /// The error.
        source: io::Error,
    },
    /// `/dev/net/tun` is refused to this user.
    #[error("cannot open {TUN_PATH} for tap {0}: permission denied; the node must be readable and writable by this user (uid {uid}): as root, `chmod 0666 {TUN_PATH}` (its usual mode: a TAP made with `ip tuntap add ... user UID` stays reserved to that user)", uid = crate::access::uid())]
    TunDenied(String),
    /// Not allowed to create or attach.
    #[error("tap {0} does not exist and this process may not create it, or it belongs to another user; create it first as root for this user (uid {uid}): `ip tuntap add dev {0} mode tap user {uid}`", uid = crate::access::uid())]
    Permission(String),
    /// In use or of the wrong kind.
    #[error("cannot attach to {0}: it is in use by another process, or it is not a TAP without packet info (create it with `ip tuntap add dev {0} mode tap`)")]
    Busy(String),
    /// Any other attach failure.
    #[error("cannot attach to tap {tap}")]
    Attach {
        /// The TAP name.
        tap: String,
        /// The error.
        source: io::Error,
    },
}

/// Parses `tap=NAME[,mac=MAC][,transport=virtio|hypercall]`.
pub fn parse_spec(s: &str) -> Result<NetConfig, NetError> {
    let mut tap = None;
    let mut mac = None;
    let mut transport = None;
    for part in s.split(',') {
        match part.split_once('=') {
            Some(("tap", name)) if tap.is_none() => {
                if name.is_empty()
                    || name.len() > NAME_MAX
                    || name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
                {
                    return Err(NetError::BadName(name.into()));
                }
                tap = Some(name.to_string());
            }
            Some(("mac", m)) if mac.is_none() => mac = Some(parse_mac(m)?),
            Some(("transport", t)) if transport.is_none() => {
                transport = Some(
                    crate::devices::Transport::parse(t)
                        .ok_or_else(|| NetError::BadSpec(s.into()))?,
                )
            }
            _ => return Err(NetError::BadSpec(s.into())),
        }
    }
    match tap {
        Some(tap) => Ok(NetConfig {
            tap,
            mac,
            transport: transport.unwrap_or_default(),
        }),
        None => Err(NetError::BadSpec(s.into())),
    }
}

/// Parses `aa:bb:cc:dd:ee:ff` (a unicast address).
pub fn parse_mac(s: &str) -> Result<[u8; 6], NetError> {
    let bad = || NetError::BadMac(s.into());
    let mut mac = [0u8; 6];
    let mut parts = s.split(':');
    for b in &mut mac {
        let p = parts.next().ok_or_else(bad)?;
        if p.len() != 2 {
            return Err(bad());
        }
        *b = u8::from_str_radix(p, 16).map_err(|_| bad())?;
    }
    if parts.next().is_some() || mac[0] & 1 != 0 || mac == [0; 6] {
        return Err(bad());
    }
    Ok(mac)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn specs() {
        assert_eq!(
            parse_spec("tap=tap0").unwrap(),
            NetConfig {
                tap: "tap0".into(),
                mac: None,
                transport: Default::default(),
            }
        );
        assert_eq!(
            parse_spec("tap=t1,mac=02:aa:bb:cc:dd:0f").unwrap().mac,
            Some([2, 0xaa, 0xbb, 0xcc, 0xdd, 0x0f])
        );
        for bad in [
            "",
            "tap=",
            "mac=02:00:00:00:00:01",
            "tap=a,tap=b",
            "tap=x,foo=1",
            "tap=x,transport=pci",
        ] {
            assert!(parse_spec(bad).is_err(), "{bad}");
        }
        assert!(matches!(
            parse_spec("tap=abcdefghijklmnop"),
            Err(NetError::BadName(_))
        ));
    }

    #[test]
    fn macs() {
        for bad in [
            "02:00:00:00:00",
            "02:00:00:00:00:00:00",
            "02:00:00:00:00:0g",
            "2:0:0:0:0:1",
            "01:00:00:00:00:01",
            "00:00:00:00:00:00",
            "02-00-00-00-00-01",
        ] {
            assert!(matches!(parse_mac(bad), Err(NetError::BadMac(_))), "{bad}");
        }
        assert_eq!(parse_mac("52:54:00:12:34:56").unwrap()[5], 0x56);
    }
}

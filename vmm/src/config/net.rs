//! The network part of the schema: `--net` (virtio-net on a tap) and `--vsock` (virtio-vsock
//! with a Unix-socket backend), in Cloud Hypervisor's spelling.

use std::fmt;
use std::net::Ipv4Addr;
use std::path::PathBuf;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::{de_bool, de_opt_u64, ConfigError, Transport};

/// Longest interface name Linux accepts (IFNAMSIZ less the terminating NUL).
pub const MAX_TAP_NAME: usize = 15;
/// Most queue pairs a virtio-net device has (`num_queues` up to twice this).
pub const MAX_QUEUE_PAIRS: u16 = 8;

/// An Ethernet address, written `aa:bb:cc:dd:ee:ff`.
#[derive(Clone, Copy, PartialEq, Eq, Hash)]
pub struct MacAddr(pub [u8; 6]);

impl MacAddr {
    /// Parses `aa:bb:cc:dd:ee:ff` (six hex pairs separated by colons).
    pub fn parse(s: &str) -> Result<MacAddr, String> {
        let mut out = [0u8; 6];
        let parts: Vec<&str> = s.split(':').collect();
        if parts.len() != 6 {
            return Err(format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"));
        }
        for (o, p) in out.iter_mut().zip(parts) {
            if p.len() != 2 {
                return Err(format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"));
            }
            *o = u8::from_str_radix(p, 16)
                .map_err(|_| format!("'{s}' is not a MAC address (aa:bb:cc:dd:ee:ff)"))?;
        }
        if out[0] & 1 != 0 {
            return Err(format!("'{s}' is a multicast address"));
        }
        Ok(MacAddr(out))
    }

    /// A random locally administered unicast address (what a device without `mac=` gets).
    pub fn random() -> MacAddr {
        let mut b = [0u8; 6];
        let _ = getrandom_fill(&mut b);
        b[0] = (b[0] & 0xfe) | 0x02;
        MacAddr(b)
    }
}

fn getrandom_fill(buf: &mut [u8]) -> std::io::Result<()> {
    use std::io::Read;
    std::fs::File::open("/dev/urandom")?.read_exact(buf)
}

impl fmt::Display for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let b = self.0;
        write!(
            f,
            "{:02x}:{:02x}:{:02x}:{:02x}:{:02x}:{:02x}",
            b[0], b[1], b[2], b[3], b[4], b[5]
        )
    }
}

impl fmt::Debug for MacAddr {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        fmt::Display::fmt(self, f)
    }
}

impl Serialize for MacAddr {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_str(&self.to_string())
    }
}

impl<'de> Deserialize<'de> for MacAddr {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<MacAddr, D::Error> {
        let s = String::deserialize(d)?;
        MacAddr::parse(&s).map_err(serde::de::Error::custom)
    }
}

fn default_num_queues() -> u16 {
    2
}

fn default_queue_size() -> u16 {
    256
}

fn de_u16<'de, D: Deserializer<'de>>(d: D) -> Result<u16, D::Error> {
    let n = de_opt_u64(d)?.unwrap_or(0);
    u16::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is more than 65535")))
}

fn de_opt_u16<'de, D: Deserializer<'de>>(d: D) -> Result<Option<u16>, D::Error> {
    match de_opt_u64(d)? {
        None => Ok(None),
        Some(n) => u16::try_from(n)
            .map(Some)
            .map_err(|_| serde::de::Error::custom(format!("{n} is more than 65535"))),
    }
}

fn de_u32<'de, D: Deserializer<'de>>(d: D) -> Result<u32, D::Error> {
    let n = de_opt_u64(d)?.unwrap_or(0);
    u32::try_from(n).map_err(|_| serde::de::Error::custom(format!("{n} is more than 2^32-1")))
}

/// A virtio-net device on a tap (Cloud Hypervisor's `--net` spelling).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetConfig {
    /// The tap: attached if it exists, created (and removed when the VM ends) if it does not;
    /// without it Strata creates one with a generated name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub tap: Option<String>,
    /// The host side's IPv4 address (set on the tap).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip: Option<Ipv4Addr>,
    /// The host side's netmask (with `ip`; 255.255.255.0 when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mask: Option<Ipv4Addr>,
    /// The guest's MAC address (a random locally administered one when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub mac: Option<MacAddr>,
    /// The MTU: set on the tap and offered to the guest (VIRTIO_NET_F_MTU).
    #[serde(
        default,
        deserialize_with = "de_opt_u16",
        skip_serializing_if = "Option::is_none"
    )]
    pub mtu: Option<u16>,
    /// Receive plus transmit queues: 2N for N queue pairs (multiqueue with N > 1: one tap
    /// queue per pair, VIRTIO_NET_F_MQ and a control queue).
    #[serde(default = "default_num_queues", deserialize_with = "de_u16")]
    pub num_queues: u16,
    /// Entries of each queue (a power of two, 2 to 32768).
    #[serde(default = "default_queue_size", deserialize_with = "de_u16")]
    pub queue_size: u16,
    /// Offer checksum offload (VIRTIO_NET_F_CSUM, GUEST_CSUM).
    #[serde(default = "super::default_true", deserialize_with = "de_bool")]
    pub offload_csum: bool,
    /// Offer TCP segmentation offload (HOST_TSO4/6, GUEST_TSO4/6; needs offload_csum).
    #[serde(default = "super::default_true", deserialize_with = "de_bool")]
    pub offload_tso: bool,
    /// The device's name (`net0`, `net1`, ... by default); its worker thread is `virtio-<id>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// This device's transport (the machine's `transport` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

impl Default for NetConfig {
    fn default() -> Self {
        NetConfig {
            tap: None,
            ip: None,
            mask: None,
            mac: None,
            mtu: None,
            num_queues: default_num_queues(),
            queue_size: default_queue_size(),
            offload_csum: true,
            offload_tso: true,
            id: None,
            transport: None,
        }
    }
}

fn invalid(reason: String) -> ConfigError {
    ConfigError::Invalid {
        field: "net",
        reason,
    }
}

/// Tap names fit IFNAMSIZ and are used once, ids are unique, queue counts and sizes and MTUs
/// are ones the device can have.
pub(super) fn validate_net(nets: &[NetConfig]) -> Result<(), ConfigError> {
    let mut taps = std::collections::BTreeSet::new();
    let mut ids = std::collections::BTreeSet::new();
    for (i, n) in nets.iter().enumerate() {
        let id = n.id.clone().unwrap_or_else(|| format!("net{i}"));
        if !ids.insert(id.clone()) {
            return Err(invalid(format!("id {id} is used twice")));
        }
        if let Some(tap) = &n.tap {
            if tap.is_empty() || tap.len() > MAX_TAP_NAME {
                return Err(invalid(format!(
                    "tap name '{tap}' must be 1 to {MAX_TAP_NAME} bytes long"
                )));
            }
            if tap.contains(['/', ' ', ':', '\0']) || tap == "." || tap == ".." {
                return Err(invalid(format!(
                    "tap name '{tap}' is not an interface name"
                )));
            }
            if !taps.insert(tap.clone()) {
                return Err(invalid(format!(
                    "tap {tap} is given to two devices (one device per tap)"
                )));
            }
        }
        if n.num_queues == 0 || n.num_queues % 2 != 0 || n.num_queues > 2 * MAX_QUEUE_PAIRS {
            return Err(invalid(format!(
                "num_queues={} must be an even number from 2 to {} (a receive and a transmit \
                 queue per pair)",
                n.num_queues,
                2 * MAX_QUEUE_PAIRS
            )));
        }
        if !n.queue_size.is_power_of_two() || n.queue_size < 2 || n.queue_size > 32768 {
            return Err(invalid(format!(
                "queue_size={} is not a power of two from 2 to 32768",
                n.queue_size
            )));
        }
        if n.mtu.is_some_and(|m| m < 68) {
            return Err(invalid(format!(
                "mtu={} is below IPv4's minimum of 68",
                n.mtu.unwrap_or(0)
            )));
        }
        if n.mask.is_some() && n.ip.is_none() {
            return Err(invalid("mask= needs ip=".into()));
        }
        if n.offload_tso && !n.offload_csum {
            return Err(invalid("offload_tso=on needs offload_csum=on".into()));
        }
    }
    Ok(())
}

/// A virtio-vsock device whose host side is a Unix socket (Firecracker's hybrid convention,
/// Cloud Hypervisor's `--vsock cid=N,socket=PATH` spelling).
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct VsockConfig {
    /// The guest's context ID (3 or more).
    #[serde(deserialize_with = "de_u32")]
    pub cid: u32,
    /// The Unix socket the VMM listens on (host-initiated connections: `CONNECT <port>\n`);
    /// guest-initiated connections to host port P go to `<socket>_P`.
    pub socket: PathBuf,
    /// The device's name (`vsock0` by default).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// This device's transport (the machine's `transport` when absent).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub transport: Option<Transport>,
}

impl VsockConfig {
    /// The CID is one a guest may have; the socket's directory exists.
    pub(super) fn validate(&self) -> Result<(), ConfigError> {
        let invalid = |reason: String| ConfigError::Invalid {
            field: "vsock",
            reason,
        };
        if self.cid < 3 || self.cid == u32::MAX {
            return Err(invalid(format!(
                "cid={} is reserved (a guest's CID is 3 to 4294967294)",
                self.cid
            )));
        }
        let dir = match self.socket.parent() {
            Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
            _ => PathBuf::from("."),
        };
        if !dir.is_dir() {
            return Err(invalid(format!(
                "socket={}: directory {} does not exist",
                self.socket.display(),
                dir.display()
            )));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::VmConfig;
    use super::*;

    fn config(json: &str) -> VmConfig {
        serde_json::from_str(json).unwrap()
    }

    #[test]
    fn test_mac_parse_valid_and_invalid() {
        assert_eq!(
            MacAddr::parse("52:54:00:12:34:56").unwrap().0,
            [0x52, 0x54, 0, 0x12, 0x34, 0x56]
        );
        assert!(MacAddr::parse("52:54:00:12:34").is_err());
        assert!(MacAddr::parse("52:54:00:12:34:zz").is_err());
        assert!(MacAddr::parse("01:00:5e:00:00:01").is_err());
        let r = MacAddr::random();
        assert_eq!(r.0[0] & 3, 2);
    }

    #[test]
    fn test_net_config_defaults_and_roundtrip() {
        let c = config(
            r#"{"payload":{"kernel":"k"},"net":[{"tap":"t0","mac":"52:54:00:00:00:01","ip":"10.0.0.1","mtu":"1400"}]}"#,
        );

        let n = &c.net[0];
        let back: VmConfig = serde_json::from_value(serde_json::to_value(&c).unwrap()).unwrap();

        assert_eq!(n.num_queues, 2);
        assert_eq!(n.queue_size, 256);
        assert_eq!(n.mtu, Some(1400));
        assert_eq!(n.ip, Some(Ipv4Addr::new(10, 0, 0, 1)));
        assert_eq!(back, c);
        assert!(c.validate().is_ok());
    }

    #[test]
    fn test_net_config_bad_values_rejected_naming_net() {
        let long = config(r#"{"payload":{"kernel":"k"},"net":[{"tap":"abcdefghijklmnop"}]}"#);
        let twice = config(r#"{"payload":{"kernel":"k"},"net":[{"tap":"t"},{"tap":"t"}]}"#);
        let odd = config(r#"{"payload":{"kernel":"k"},"net":[{"num_queues":3}]}"#);
        let zero = config(r#"{"payload":{"kernel":"k"},"net":[{"num_queues":0}]}"#);
        let many = config(r#"{"payload":{"kernel":"k"},"net":[{"num_queues":18}]}"#);
        let mq = config(r#"{"payload":{"kernel":"k"},"net":[{"num_queues":4}]}"#);
        let bad_mac = serde_json::from_str::<VmConfig>(r#"{"payload":{},"net":[{"mac":"nope"}]}"#);

        let long = long.validate().unwrap_err().to_string();
        let twice = twice.validate().unwrap_err().to_string();
        let odd = odd.validate().unwrap_err().to_string();
        let zero = zero.validate().unwrap_err().to_string();
        let many = many.validate().unwrap_err().to_string();

        assert!(long.starts_with("invalid net: tap name"), "{long}");
        assert!(twice.contains("given to two devices"), "{twice}");
        assert!(
            odd.starts_with("invalid net: num_queues=3 must be an even"),
            "{odd}"
        );
        assert!(
            zero.starts_with("invalid net: num_queues=0 must be an even"),
            "{zero}"
        );
        assert!(
            many.contains("num_queues=18 must be an even number from 2 to 16"),
            "{many}"
        );
        assert!(mq.validate().is_ok());
        assert!(bad_mac
            .unwrap_err()
            .to_string()
            .contains("not a MAC address"));
    }

    #[test]
    fn test_vsock_config_cid_and_socket_directory_checked() {
        let ok = config(r#"{"payload":{"kernel":"k"},"vsock":{"cid":"3","socket":"/tmp/v.sock"}}"#);
        let low = config(r#"{"payload":{"kernel":"k"},"vsock":{"cid":2,"socket":"/tmp/v.sock"}}"#);
        let nodir = config(
            r#"{"payload":{"kernel":"k"},"vsock":{"cid":3,"socket":"/nonexistent-dir/v.sock"}}"#,
        );

        assert!(ok.validate().is_ok());
        assert!(low
            .validate()
            .unwrap_err()
            .to_string()
            .contains("invalid vsock: cid=2"));
        assert!(nodir
            .validate()
            .unwrap_err()
            .to_string()
            .contains("directory /nonexistent-dir does not exist"));
    }
}

//! Address ranges for `trusted_proxies` settings: a single address
//! (`10.0.0.5`, `::1`) or a CIDR range (`10.0.0.0/8`, `fd00::/8`).

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

use serde::{Deserialize, Deserializer, Serialize, Serializer};

/// IPv4-mapped IPv6 addresses (`::ffff:10.0.0.1`) as plain IPv4.
pub fn canonical(ip: IpAddr) -> IpAddr {
    match ip {
        IpAddr::V6(v6) => v6.to_ipv4_mapped().map_or(ip, IpAddr::V4),
        v4 => v4,
    }
}

/// An address or a CIDR range of addresses.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IpRange {
    network: IpAddr,
    prefix: u8,
}

impl IpRange {
    /// Whether `ip` lies in the range (IPv4-mapped IPv6 counts as IPv4).
    pub fn contains(&self, ip: IpAddr) -> bool {
        match (self.network, canonical(ip)) {
            (IpAddr::V4(net), IpAddr::V4(ip)) => {
                masked(u128::from(u32::from(net)), 32, self.prefix)
                    == masked(u128::from(u32::from(ip)), 32, self.prefix)
            }
            (IpAddr::V6(net), IpAddr::V6(ip)) => {
                masked(u128::from(net), 128, self.prefix)
                    == masked(u128::from(ip), 128, self.prefix)
            }
            _ => false,
        }
    }
}

/// The top `prefix` bits of a `bits`-wide address.
fn masked(value: u128, bits: u8, prefix: u8) -> u128 {
    let host_bits = u32::from(bits - prefix.min(bits));
    if host_bits >= 128 {
        0
    } else {
        value >> host_bits
    }
}

/// Whether `ip` lies in any of `ranges`.
pub fn in_any(ranges: &[IpRange], ip: IpAddr) -> bool {
    ranges.iter().any(|r| r.contains(ip))
}

impl From<IpAddr> for IpRange {
    fn from(ip: IpAddr) -> Self {
        let ip = canonical(ip);
        let prefix = if ip.is_ipv4() { 32 } else { 128 };
        Self {
            network: ip,
            prefix,
        }
    }
}

impl FromStr for IpRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, String> {
        let s = s.trim();
        let bad = || format!("{s:?} is not an IP address or a CIDR range such as 10.0.0.0/8");
        let Some((addr, prefix)) = s.split_once('/') else {
            return s.parse::<IpAddr>().map(Self::from).map_err(|_| bad());
        };
        let network = canonical(addr.trim().parse::<IpAddr>().map_err(|_| bad())?);
        let max = if network.is_ipv4() { 32 } else { 128 };
        let prefix: u8 = prefix.trim().parse().map_err(|_| bad())?;
        if prefix > max {
            return Err(format!("{s:?}: the prefix length must be at most {max}"));
        }
        Ok(Self { network, prefix })
    }
}

impl fmt::Display for IpRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let full = if self.network.is_ipv4() { 32 } else { 128 };
        if self.prefix == full {
            write!(f, "{}", self.network)
        } else {
            write!(f, "{}/{}", self.network, self.prefix)
        }
    }
}

impl Serialize for IpRange {
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.collect_str(self)
    }
}

impl<'de> Deserialize<'de> for IpRange {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        let s = String::deserialize(d)?;
        s.parse().map_err(serde::de::Error::custom)
    }
}

/// Whether `url` is an absolute `http://` or `https://` address with a host.
pub fn is_http_url(url: &str) -> bool {
    reqwest::Url::parse(url.trim()).is_ok_and(|u| {
        matches!(u.scheme(), "http" | "https") && u.host_str().is_some_and(|h| !h.is_empty())
    })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    fn r(s: &str) -> IpRange {
        s.parse().unwrap()
    }

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn http_urls() {
        assert!(is_http_url("http://127.0.0.1:8103"));
        assert!(is_http_url("https://fw.example.com/base/"));
        assert!(!is_http_url("ftp://fw.example.com"));
        assert!(!is_http_url("127.0.0.1:8103"));
        assert!(!is_http_url(""));
    }

    #[test]
    fn addresses_and_ranges() {
        assert!(r("127.0.0.1").contains(ip("127.0.0.1")));
        assert!(!r("127.0.0.1").contains(ip("127.0.0.2")));
        assert!(r("10.0.0.0/8").contains(ip("10.200.3.4")));
        assert!(!r("10.0.0.0/8").contains(ip("11.0.0.1")));
        assert!(r("10.1.2.3/8").contains(ip("10.9.9.9")));
        assert!(r("0.0.0.0/0").contains(ip("203.0.113.9")));
        assert!(!r("0.0.0.0/0").contains(ip("::1")));
        assert!(r("fd00::/8").contains(ip("fd12::1")));
        assert!(!r("fd00::/8").contains(ip("fe80::1")));
        assert!(r("::/0").contains(ip("2001:db8::1")));
        // IPv4-mapped IPv6 peers match IPv4 ranges.
        assert!(r("192.168.0.0/16").contains(ip("::ffff:192.168.1.1")));
        assert!(in_any(&[r("::1"), r("10.0.0.0/8")], ip("10.0.0.1")));
        assert!(!in_any(&[], ip("10.0.0.1")));
    }

    #[test]
    fn parsing_and_display() {
        assert_eq!(r(" 10.0.0.0/8 ").to_string(), "10.0.0.0/8");
        assert_eq!(r("::1").to_string(), "::1");
        assert!("10.0.0.0/33".parse::<IpRange>().is_err());
        assert!("10.0.0/8".parse::<IpRange>().is_err());
        assert!("nonsense".parse::<IpRange>().is_err());
        assert!("fd00::/129".parse::<IpRange>().is_err());
        let json: Vec<IpRange> = serde_json::from_str(r#"["127.0.0.1", "10.0.0.0/8"]"#).unwrap();
        assert_eq!(json, vec![r("127.0.0.1"), r("10.0.0.0/8")]);
        assert!(serde_json::from_str::<Vec<IpRange>>(r#"["10.0.0.0/99"]"#).is_err());
    }
}

//! Parsers for the small string forms of the configuration: addresses,
//! CIDRs, port ranges and HTTP status-code sets. Errors are messages; the
//! caller adds the position.

use std::net::IpAddr;
use std::str::FromStr;

use ipnet::IpNet;
use lb_core::model::PortRange;

/// `"lo/hi"`, or `"-1/-1"` for any port.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum PortSpec {
    Any,
    Range(PortRange),
}

const PORT_FORMAT: &str =
    "expected \"lo/hi\" (e.g. \"80/80\" or \"8000/8100\"), or \"-1/-1\" for any port";

/// Parses a port range in the cloud's `lo/hi` form.
pub(crate) fn port_range(s: &str) -> Result<PortSpec, String> {
    let Some((lo, hi)) = s.split_once('/') else {
        return Err(format!("invalid port range {s:?}: {PORT_FORMAT}"));
    };
    if lo == "-1" && hi == "-1" {
        return Ok(PortSpec::Any);
    }
    let parse = |p: &str| -> Result<u16, String> {
        let n: i64 = p
            .parse()
            .map_err(|_| format!("invalid port range {s:?}: {PORT_FORMAT}"))?;
        match u16::try_from(n) {
            Ok(port) if port >= 1 => Ok(port),
            _ => Err(format!("port {n} in {s:?} is out of range 1..=65535")),
        }
    };
    let (lo, hi) = (parse(lo)?, parse(hi)?);
    if lo > hi {
        return Err(format!(
            "port range {s:?} is reversed: {lo} is greater than {hi}"
        ));
    }
    Ok(PortSpec::Range(PortRange::new(lo, hi)))
}

/// A plain address (no prefix length), normalised.
pub(crate) fn address(s: &str) -> Result<IpAddr, String> {
    if let Ok(a) = IpAddr::from_str(s) {
        return Ok(a);
    }
    if let Ok(net) = IpNet::from_str(s) {
        return Err(format!(
            "{s} must be a plain address without a prefix length (e.g. {})",
            net.addr()
        ));
    }
    Err(format!("{s:?} is not an IP address"))
}

/// An address (a /32 or /128) or a CIDR whose host bits are clear.
pub(crate) fn cidr(s: &str) -> Result<IpNet, String> {
    if let Ok(a) = IpAddr::from_str(s) {
        return Ok(IpNet::from(a));
    }
    match IpNet::from_str(s) {
        Ok(net) if net.trunc() == net => Ok(net),
        Ok(net) => Err(format!(
            "{s} has host bits set; did you mean {}?",
            net.trunc()
        )),
        Err(_) => Err(format!("{s:?} is not an IP address or CIDR")),
    }
}

/// An interface address: an address with the prefix length of its link
/// (host bits set on purpose).
pub(crate) fn interface_address(s: &str) -> Result<IpNet, String> {
    match IpNet::from_str(s) {
        Ok(net) => Ok(net),
        Err(_) => match IpAddr::from_str(s) {
            Ok(a) => {
                let example = if a.is_ipv4() { 24 } else { 64 };
                Err(format!(
                    "interface address {s} needs the prefix length of its link, e.g. {a}/{example}"
                ))
            }
            Err(_) => Err(format!(
                "{s:?} is not an interface address like \"198.18.0.1/24\""
            )),
        },
    }
}

/// True when `addr` is the network or broadcast address of an IPv4 subnet
/// that has them (prefix /30 or shorter).
pub(crate) fn is_v4_network_or_broadcast(net: &IpNet, addr: IpAddr) -> bool {
    match (net, addr) {
        (IpNet::V4(n), IpAddr::V4(a)) => {
            n.prefix_len() <= 30 && (a == n.network() || a == n.broadcast())
        }
        _ => false,
    }
}

/// One `expected_codes` entry: `"2xx"`, `"200"` or `"200-299"`.
pub(crate) fn status_codes(s: &str) -> Result<(u16, u16), String> {
    let bad =
        || format!("invalid status code {s:?}: expected e.g. \"2xx\", \"200\" or \"200-299\"");
    let code = |p: &str| -> Result<u16, String> {
        let n: u16 = p.trim().parse().map_err(|_| bad())?;
        if (100..=599).contains(&n) {
            Ok(n)
        } else {
            Err(format!("status code {n} is out of range 100..=599"))
        }
    };
    let lower = s.to_ascii_lowercase();
    if let Some(d) = lower.strip_suffix("xx") {
        let d: u16 = d.parse().map_err(|_| bad())?;
        if !(1..=5).contains(&d) {
            return Err(format!("status class {s:?} is out of range 1xx..=5xx"));
        }
        return Ok((d * 100, d * 100 + 99));
    }
    if let Some((lo, hi)) = s.split_once('-') {
        let (lo, hi) = (code(lo)?, code(hi)?);
        if lo > hi {
            return Err(format!(
                "status code range {s:?} is reversed: {lo} is greater than {hi}"
            ));
        }
        return Ok((lo, hi));
    }
    let c = code(s)?;
    Ok((c, c))
}

/// A Linux interface name as the kernel accepts it (`dev_valid_name`).
pub(crate) fn interface_name(s: &str) -> Result<(), String> {
    if s.is_empty() || s.len() > 15 {
        return Err(format!("interface name {s:?} must be 1 to 15 bytes long"));
    }
    if s == "." || s == ".." || s.chars().any(|c| c == '/' || c == ':' || c.is_whitespace()) {
        return Err(format!("{s:?} is not a valid interface name"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn port_ranges() {
        assert_eq!(port_range("-1/-1"), Ok(PortSpec::Any));
        assert_eq!(
            port_range("80/80"),
            Ok(PortSpec::Range(PortRange::single(80)))
        );
        assert_eq!(
            port_range("1/65535"),
            Ok(PortSpec::Range(PortRange::new(1, 65535)))
        );
        assert_eq!(
            port_range("0/80"),
            Err("port 0 in \"0/80\" is out of range 1..=65535".to_string())
        );
        assert_eq!(
            port_range("90/80"),
            Err("port range \"90/80\" is reversed: 90 is greater than 80".to_string())
        );
        assert!(port_range("80").is_err());
        assert!(port_range("-1/80").is_err());
        assert!(port_range("80/65536").is_err());
        assert!(port_range("a/b").is_err());
    }

    #[test]
    fn normalises_addresses() {
        assert_eq!(
            address("2408:180:0000::1").map(|a| a.to_string()),
            Ok("2408:180::1".to_string())
        );
        assert_eq!(
            cidr("2408:4321:180:0000::/64").map(|a| a.to_string()),
            Ok("2408:4321:180::/64".to_string())
        );
        assert_eq!(
            cidr("192.0.2.7").map(|a| a.to_string()),
            Ok("192.0.2.7/32".to_string())
        );
        assert_eq!(
            cidr("2001:db8::7").map(|a| a.to_string()),
            Ok("2001:db8::7/128".to_string())
        );
        assert_eq!(
            cidr("192.168.1.5/24"),
            Err("192.168.1.5/24 has host bits set; did you mean 192.168.1.0/24?".to_string())
        );
        assert_eq!(
            cidr("2001:db8:1::1/64"),
            Err("2001:db8:1::1/64 has host bits set; did you mean 2001:db8:1::/64?".to_string())
        );
        assert_eq!(
            address("192.0.2.1/32"),
            Err(
                "192.0.2.1/32 must be a plain address without a prefix length (e.g. 192.0.2.1)"
                    .to_string()
            )
        );
        assert_eq!(
            interface_address("2001:db8:18:0::1/64").map(|a| a.to_string()),
            Ok("2001:db8:18::1/64".to_string())
        );
        assert!(interface_address("198.18.0.1").is_err());
        assert!(cidr("010.0.0.1").is_err());
    }

    #[test]
    fn status_code_forms() {
        assert_eq!(status_codes("2xx"), Ok((200, 299)));
        assert_eq!(status_codes("3XX"), Ok((300, 399)));
        assert_eq!(status_codes("204"), Ok((204, 204)));
        assert_eq!(status_codes("200-302"), Ok((200, 302)));
        assert!(status_codes("6xx").is_err());
        assert!(status_codes("302-200").is_err());
        assert!(status_codes("99").is_err());
        assert!(status_codes("ok").is_err());
    }

    #[test]
    fn interface_names() {
        assert!(interface_name("lb-ext").is_ok());
        assert!(interface_name("").is_err());
        assert!(interface_name("a-very-long-interface").is_err());
        assert!(interface_name("eth0:1").is_err());
    }
}

//! The device under test's side: lbd's configuration and EAL arguments
//! on the memif links, the binaries, and lbd's counters.

use super::*;

pub(super) fn mac_str(m: [u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

pub(super) fn memif(n: u16, role: &str, socket: &Path, mac: [u8; 6]) -> String {
    format!(
        "--vdev=net_memif{n},role={role},id=0,socket={},socket-abstract=no,mac={}",
        socket.display(),
        mac_str(mac)
    )
}

/// The configuration of `lbd` for the benchmark: the seed scenario's
/// load balancer (VIP 198.18.0.10, port 80 allowed, port 81 denied by its
/// security group, two backends, FULLNAT from 198.19.1.190-253) on two memif
/// ports, `idle = "busy"`, health checks off (the backends are played by
/// the traffic process), SYN proxy off (it measures forwarding). memif has
/// no RSS: with several workers, the traffic process spreads the frames
/// over the queues as a NIC would (`dpdk_rss = "software"`).
pub fn lbd_config(
    workers: u16,
    eal: &[String],
    cores: Option<&[u16]>,
    max_sessions: usize,
) -> String {
    let eal = eal
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let cores = cores.map_or(String::new(), |c| {
        format!(
            "cores = [{}]\n",
            c.iter().map(u16::to_string).collect::<Vec<_>>().join(", ")
        )
    });
    // 64 local addresses: FULLNAT takes a local port per session and
    // backend, and 2 s of new connections at millions a second need more
    // than one address's 64 K ports.
    let locals = (190..254)
        .map(|i| format!("\"198.19.1.{i}\""))
        .collect::<Vec<_>>()
        .join(", ");
    format!(
        r#"[platform]
backend_sg_policy = "bypass"

[dataplane]
io = "dpdk"
workers = {workers}
{cores}idle = "busy"
max_sessions = {max_sessions}
eal_args = [{eal}]

[[port]]
name = "ext"
dpdk_port = 0
dpdk_rss = "software"
addresses = ["198.18.0.1/24"]

[[port]]
name = "int"
dpdk_port = 1
dpdk_rss = "software"
addresses = ["198.19.1.1/24"]

[[security_group]]
id = "sg-web"
type = "basic"
internal_access = "accept"

[[security_group]]
id = "sg-alb"
type = "basic"

[[security_group.rule]]
direction = "ingress"
action = "allow"
priority = 1
protocol = "tcp"
port_range = "80/80"
source = "0.0.0.0/0"

[[security_group.rule]]
direction = "ingress"
action = "deny"
priority = 1
protocol = "tcp"
port_range = "81/81"
source = "0.0.0.0/0"

[[subnet]]
id = "vsw-be"
cidr = "198.19.1.0/24"

[[instance]]
id = "ecs01"
subnet = "vsw-be"
addresses = ["198.19.1.11"]
security_groups = ["sg-web"]

[[instance]]
id = "ecs02"
subnet = "vsw-be"
addresses = ["198.19.1.12"]
security_groups = ["sg-web"]

[[server_group]]
id = "sgp-web"
scheduler = "wrr"

[server_group.health_check]
enabled = false

[[server_group.server]]
instance = "ecs01"
port = 80
weight = 100

[[server_group.server]]
instance = "ecs02"
port = 80
weight = 100

[[load_balancer]]
id = "alb-1"
vips = ["198.18.0.10"]
security_groups = ["sg-alb"]
local_addresses = [{locals}]

[[load_balancer.listener]]
protocol = "http"
port = 80
server_group = "sgp-web"
syn_proxy = "off"

[[load_balancer.listener]]
protocol = "http"
port = 81
server_group = "sgp-web"
syn_proxy = "off"
"#
    )
}

pub(super) fn exe_dir() -> Result<PathBuf> {
    let exe = std::env::current_exe().context("locating this binary")?;
    Ok(exe.parent().map(Path::to_path_buf).unwrap_or_default())
}

/// Whether `prog` can be run (a path, or a name on PATH).
pub(super) fn runnable(prog: &Path) -> bool {
    if prog.components().count() > 1 {
        return prog.is_file();
    }
    std::env::var_os("PATH")
        .is_some_and(|paths| std::env::split_paths(&paths).any(|d| d.join(prog).is_file()))
}

/// What `bench dataplane` needs and does not find, if anything.
pub fn missing(a: &DataplaneArgs) -> Option<String> {
    if !cfg!(feature = "dpdk") {
        return Some(
            "bench was built without DPDK: cargo build --release -p lb-bench --features dpdk"
                .into(),
        );
    }
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (DPDK's runtime directory under /var/run/dpdk)".into());
    }
    let (lbd, lbctl) = binaries(a).ok()?;
    for (p, hint) in [
        (
            &lbd,
            "cargo build --release -p lb-dataplane --features dpdk --bins",
        ),
        (
            &lbctl,
            "cargo build --release -p lb-dataplane --features dpdk --bins",
        ),
    ] {
        if !p.is_file() {
            return Some(format!("{} is missing: {hint}", p.display()));
        }
    }
    if !a.no_reference && !runnable(&a.testpmd) {
        return Some(format!(
            "{} is missing: apt-get install dpdk-dev (or --no-reference)",
            a.testpmd.display()
        ));
    }
    None
}

pub(super) fn binaries(a: &DataplaneArgs) -> Result<(PathBuf, PathBuf)> {
    let dir = exe_dir()?;
    Ok((
        a.lbd.clone().unwrap_or_else(|| dir.join("lbd")),
        a.lbctl.clone().unwrap_or_else(|| dir.join("lbctl")),
    ))
}

/// `lbctl stats --json` of the lbd behind `sock`.
pub(super) fn lbd_counters(a: &DataplaneArgs, sock: &Path) -> Result<LbdCounters> {
    let (_, lbctl) = binaries(a)?;
    let o = Command::new(lbctl)
        .args(["stats", "--json", "--control"])
        .arg(sock)
        .output()
        .context("running lbctl stats")?;
    if !o.status.success() {
        bail!("lbctl stats failed: {}", String::from_utf8_lossy(&o.stderr));
    }
    let v: serde_json::Value =
        serde_json::from_slice(&o.stdout).context("parsing lbctl stats --json")?;
    Ok(LbdCounters::from_json(&v))
}

/// The EAL arguments of lbd on memif server ports in `dir`.
pub(super) fn lbd_eal(dir: &Path, prefix: &str) -> Vec<String> {
    [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "-m",
        "512",
        "-l",
        "0",
        "--file-prefix",
        prefix,
        &memif(0, "server", &dir.join("ext.sock"), LBD_EXT_MAC),
        &memif(1, "server", &dir.join("int.sock"), LBD_INT_MAC),
    ]
    .iter()
    .map(|s| s.to_string())
    .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lbd_config_compiles() {
        let eal = vec![
            "--no-huge".to_string(),
            "--vdev=net_memif0,role=server".into(),
        ];
        let text = lbd_config(2, &eal, Some(&[1]), 4 << 20);
        // One core for two workers is refused; none is accepted.
        assert!(lb_config::parse_str(&text, "bench.toml").is_err());
        let cfg =
            lb_config::parse_str(&lbd_config(2, &eal, None, 4 << 20), "bench.toml").expect("valid");
        assert_eq!(cfg.dataplane.workers, 2);
        assert_eq!(cfg.dataplane.eal_args, eal);
    }
}

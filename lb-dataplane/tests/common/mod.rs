//! A namespace topology (scripts/netns.sh) with `lbd` running in it, for
//! the end-to-end tests. Everything is torn down on drop, also when a test
//! fails.

#![allow(dead_code)]

pub mod skip;

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// One topology at a time: the machine has two cores.
pub static SERIAL: Mutex<()> = Mutex::new(());

/// Takes [`SERIAL`] (also after a test that held it failed).
pub fn lock() -> std::sync::MutexGuard<'static, ()> {
    SERIAL.lock().unwrap_or_else(|p| p.into_inner())
}

/// Waits until the health checker has seen both backends of the seed
/// configuration up.
pub fn wait_healthy(t: &Topo) {
    t.wait_for(15, "both backends healthy", |t| {
        t.server_up("sgp-web", "ecs01") == Some(true)
            && t.server_up("sgp-web", "ecs02") == Some(true)
    });
}

/// A UDP load balancer (VIPs 198.18.0.20 and 2001:db8:18::20, port 53)
/// over the echo servers `netns.sh udp-up` starts on both backends (port
/// 5353), with UDP health checks: to append to [`seed_config`].
pub const UDP_LISTENER: &str = r#"
[[server_group]]
id = "sgp-udp"

[server_group.health_check]
protocol = "udp"
port = 5353
interval_s = 1
timeout_s = 1
healthy_threshold = 2
unhealthy_threshold = 2

[[server_group.server]]
instance = "ecs01"
port = 5353

[[server_group.server]]
instance = "ecs02"
port = 5353

[[load_balancer]]
id = "nlb-1"
vips = ["198.18.0.20", "2001:db8:18::20"]
local_addresses = ["198.19.1.251", "2001:db8:19:1::251"]

[[load_balancer.listener]]
protocol = "udp"
port = 53
server_group = "sgp-udp"
"#;

/// Waits until the health checker has seen both UDP servers of
/// [`UDP_LISTENER`] up.
pub fn wait_udp_healthy(t: &Topo) {
    t.wait_for(15, "UDP servers healthy", |t| {
        t.server_up("sgp-udp", "ecs01") == Some(true)
            && t.server_up("sgp-udp", "ecs02") == Some(true)
    });
}

static NEXT: AtomicU32 = AtomicU32::new(0);

pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

/// Why this machine cannot run the end-to-end tests, if it cannot.
pub fn unsupported() -> Option<String> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        return Some("needs root (network namespaces)".into());
    }
    for tool in ["ip", "ethtool", "curl", "nginx", "ping", "python3"] {
        let found = Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {tool}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false);
        if !found {
            return Some(format!("needs {tool} (CI installs it: .ci/run)"));
        }
    }
    None
}

/// Returns from the test with a visible SKIPPED line when the machine
/// cannot run it; fails it instead under CI (see [`skip::skip`]).
#[macro_export]
macro_rules! require_netns {
    () => {
        if let Some(why) = common::unsupported() {
            common::skip::skip(&why);
            return;
        }
    };
}

#[derive(Debug)]
pub struct Topo {
    pub prefix: String,
    pub run: PathBuf,
    pub config: PathBuf,
    pub control: PathBuf,
    lbd: Option<Child>,
}

impl Topo {
    /// Builds the namespaces and starts nginx on both backends.
    pub fn up() -> Topo {
        Topo::up_with(&[])
    }

    /// As [`Topo::up`], with extra environment for netns.sh.
    pub fn up_with(env: &[(&str, &str)]) -> Topo {
        let prefix = format!(
            "lbe{}x{}",
            std::process::id() % 100_000,
            NEXT.fetch_add(1, Ordering::Relaxed)
        );
        let run = PathBuf::from(format!("/tmp/{prefix}"));
        let t = Topo {
            config: run.join("lbd.toml"),
            control: run.join("lbd.sock"),
            prefix,
            run,
            lbd: None,
        };
        t.netns_env(&["up"], env);
        t.netns(&["nginx-up"]);
        t
    }

    pub fn netns(&self, args: &[&str]) {
        self.netns_env(args, &[]);
    }

    pub fn netns_env(&self, args: &[&str], env: &[(&str, &str)]) {
        let out = Command::new("bash")
            .arg(repo().join("scripts/netns.sh"))
            .args(args)
            .envs(env.iter().copied())
            .env("LBT_PREFIX", &self.prefix)
            .env("LBT_RUN", &self.run)
            .output()
            .expect("run netns.sh");
        assert!(
            out.status.success(),
            "netns.sh {args:?}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    pub fn ns(&self, host: &str) -> String {
        format!("{}-{host}", self.prefix)
    }

    pub fn exec(&self, host: &str, args: &[&str]) -> Output {
        Command::new("ip")
            .args(["netns", "exec", &self.ns(host)])
            .args(args)
            .output()
            .expect("ip netns exec")
    }

    /// Writes the configuration `lbd` reads (also for reloads).
    pub fn write_config(&self, text: &str) {
        std::fs::write(&self.config, text).expect("write config");
    }

    /// Starts `lbd` in the load-balancer namespace and waits for its
    /// control socket.
    pub fn start_lbd(&mut self, config: &str) {
        self.start_lbd_with(config, &[]);
    }

    /// Sends `sig` to `lbd`.
    pub fn signal(&self, sig: i32) {
        // `ip netns exec` execs lbd in place, so the child is lbd itself.
        let pid = self.lbd.as_ref().map(|c| c.id()).expect("lbd running");
        // SAFETY: kill has no memory-safety preconditions.
        unsafe {
            libc::kill(i32::try_from(pid).unwrap_or(0), sig);
        }
    }

    /// Kills `lbd` with SIGKILL (no clean-up of its own) and reaps it.
    pub fn kill_lbd(&mut self) {
        if let Some(mut c) = self.lbd.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    pub fn start_lbd_with(&mut self, config: &str, args: &[&str]) {
        self.write_config(config);
        let log = std::fs::File::create(self.run.join("lbd.log")).expect("log file");
        let child = Command::new("ip")
            .args(["netns", "exec", &self.ns("lb")])
            .arg(env!("CARGO_BIN_EXE_lbd"))
            .arg("--config")
            .arg(&self.config)
            .arg("--control")
            .arg(&self.control)
            .args(args)
            .env("LBD_LOG", "info")
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("start lbd");
        self.lbd = Some(child);
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            if self.lbctl(&["stats", "--json"]).status.success() {
                return;
            }
            if let Some(Ok(Some(status))) = self.lbd.as_mut().map(|c| c.try_wait()) {
                panic!("lbd exited with {status}:\n{}", self.log());
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        panic!("lbd did not come up:\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.run.join("lbd.log")).unwrap_or_default()
    }

    pub fn lbctl(&self, args: &[&str]) -> Output {
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_lbctl"));
        cmd.args(args);
        if matches!(args.first(), Some(&"stats") | Some(&"reload")) {
            cmd.arg("--control").arg(&self.control);
        }
        cmd.output().expect("run lbctl")
    }

    pub fn stats(&self) -> serde_json::Value {
        let out = self.lbctl(&["stats", "--json"]);
        assert!(
            out.status.success(),
            "lbctl stats: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        serde_json::from_slice(&out.stdout).expect("stats JSON")
    }

    /// `/metrics` of an `lbd` started with `--metrics 127.0.0.1:9464`.
    pub fn metrics(&self) -> String {
        let out = self.exec(
            "lb",
            &[
                "curl",
                "-s",
                "--max-time",
                "2",
                "http://127.0.0.1:9464/metrics",
            ],
        );
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// Applies `config` to the running `lbd` through `lbctl reload`.
    pub fn reload(&self, config: &str) -> Output {
        self.write_config(config);
        self.lbctl(&["reload"])
    }

    /// `curl` from the client: the body, or `None` when the request failed.
    pub fn curl(&self, url: &str) -> Option<String> {
        let out = self.exec(
            "client",
            &[
                "curl",
                "-s",
                "-g",
                "--max-time",
                "2",
                "--connect-timeout",
                "2",
                "-H",
                "Connection: close",
                url,
            ],
        );
        out.status
            .success()
            .then(|| String::from_utf8_lossy(&out.stdout).trim().to_string())
    }

    /// Which backend answered `url` (ECS01 / ECS02), if any.
    pub fn backend_of(&self, url: &str) -> Option<String> {
        let body = self.curl(url)?;
        ["ECS01", "ECS02"]
            .into_iter()
            .find(|b| body.contains(b))
            .map(str::to_string)
    }

    /// Polls `cond` every 200 ms until it holds or `secs` pass.
    pub fn wait_for(&self, secs: u64, what: &str, mut cond: impl FnMut(&Topo) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(secs);
        while Instant::now() < deadline {
            if cond(self) {
                return;
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        panic!("timed out waiting for {what}\nlbd log:\n{}", self.log());
    }

    /// Whether `lbctl stats` shows `server` of `group` up (and checked).
    pub fn server_up(&self, group: &str, server: &str) -> Option<bool> {
        let s = self.stats();
        s["servers"].as_array()?.iter().find_map(|v| {
            (v["group"] == group && v["server"] == server && v["checked"] == true)
                .then(|| v["up"] == true)
        })
    }
}

impl Topo {
    /// Waits until the health checker has seen both backends of the seed's
    /// `sgp-web` up.
    pub fn wait_healthy(&self) {
        self.wait_for(15, "both backends healthy", |t| {
            t.server_up("sgp-web", "ecs01") == Some(true)
                && t.server_up("sgp-web", "ecs02") == Some(true)
        });
    }
}

impl Drop for Topo {
    fn drop(&mut self) {
        if let Some(mut c) = self.lbd.take() {
            // SIGTERM first: lbd stops cleanly.
            // SAFETY: kill has no memory-safety preconditions.
            unsafe {
                libc::kill(i32::try_from(c.id()).unwrap_or(0), libc::SIGTERM);
            }
            let deadline = Instant::now() + Duration::from_secs(3);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
        if std::thread::panicking() {
            eprintln!("lbd log:\n{}", self.log());
        }
        let _ = Command::new("bash")
            .arg(repo().join("scripts/netns.sh"))
            .arg("down")
            .env("LBT_PREFIX", &self.prefix)
            .env("LBT_RUN", &self.run)
            .output();
    }
}

/// The configuration of the seed scenario on this topology. `lb_groups`
/// is inserted into the load balancer (e.g. `security_groups = ["sg-alb"]`),
/// `extra` appended at the end (e.g. the security group itself).
pub fn seed_config(lb_groups: &str, extra: &str, weights: (u8, u8)) -> String {
    format!(
        r#"
[dataplane]
workers = 2
max_sessions = 65536

[[port]]
name = "ext"
interface = "lb-ext"
addresses = ["198.18.0.1/24", "2001:db8:18::1/64"]

[[port]]
name = "int"
interface = "lb-int"
addresses = ["198.19.1.1/24", "2001:db8:19:1::1/64"]

[[security_group]]
id = "sg-web"
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
action = "allow"
priority = 1
protocol = "tcp"
port_range = "80/80"
source = "::/0"

[[security_group.rule]]
direction = "ingress"
action = "allow"
priority = 1
protocol = "tcp"
port_range = "8080/8080"
source = "0.0.0.0/0"

[[network_acl]]
id = "nacl-be"

[[network_acl.rule]]
direction = "ingress"
action = "allow"
priority = 1
protocol = "tcp"
port_range = "80/80"
source = "0.0.0.0/0"

[[network_acl.rule]]
direction = "ingress"
action = "allow"
priority = 1
protocol = "all"
port_range = "-1/-1"
source = "::/0"

[[network_acl.rule]]
direction = "ingress"
action = "allow"
priority = 2
protocol = "all"
port_range = "-1/-1"
source = "198.19.1.0/24"

[[network_acl.rule]]
direction = "egress"
action = "allow"
priority = 1
protocol = "all"
port_range = "-1/-1"
destination = "0.0.0.0/0"

[[network_acl.rule]]
direction = "egress"
action = "allow"
priority = 1
protocol = "all"
port_range = "-1/-1"
destination = "::/0"

[[subnet]]
id = "vsw-be"
cidr = "198.19.1.0/24"
ipv6_cidr = "2001:db8:19:1::/64"
network_acl = "nacl-be"

[[instance]]
id = "ecs01"
subnet = "vsw-be"
addresses = ["198.19.1.11", "2001:db8:19:1::11"]
security_groups = ["sg-web"]

[[instance]]
id = "ecs02"
subnet = "vsw-be"
addresses = ["198.19.1.12", "2001:db8:19:1::12"]
security_groups = ["sg-web"]

[[server_group]]
id = "sgp-web"
scheduler = "wrr"

[server_group.health_check]
protocol = "http"
path = "/"
interval_s = 1
timeout_s = 1
healthy_threshold = 2
unhealthy_threshold = 2

[[server_group.server]]
instance = "ecs01"
port = 80
weight = {w1}

[[server_group.server]]
instance = "ecs02"
port = 80
weight = {w2}

[[server_group]]
id = "sgp-nat"

[server_group.health_check]
protocol = "tcp"
interval_s = 1
timeout_s = 1

[[server_group.server]]
instance = "ecs01"
port = 8080

[[load_balancer]]
id = "alb-1"
vips = ["198.18.0.10", "2001:db8:18::10"]
local_addresses = ["198.19.1.250", "2001:db8:19:1::250"]
{lb_groups}

[[load_balancer.listener]]
protocol = "http"
port = 80
server_group = "sgp-web"

[[load_balancer.listener]]
protocol = "http"
port = 81
server_group = "sgp-web"

[[load_balancer.listener]]
protocol = "tcp"
port = 8080
server_group = "sgp-nat"
transfer_client_ip = true
{extra}
"#,
        w1 = weights.0,
        w2 = weights.1
    )
}

/// The load balancer's group of the seed's step 6 (deny 81) or step 7
/// (deny 80 and 81).
pub fn sg_alb(deny80: bool) -> String {
    let a80 = if deny80 { "deny" } else { "allow" };
    let mut s = String::from("\n[[security_group]]\nid = \"sg-alb\"\ntype = \"basic\"\n");
    for (action, port, src) in [
        (a80, 80, "0.0.0.0/0"),
        (a80, 80, "::/0"),
        ("deny", 81, "0.0.0.0/0"),
        ("deny", 81, "::/0"),
    ] {
        s.push_str(&format!(
            "\n[[security_group.rule]]\ndirection = \"ingress\"\naction = \"{action}\"\npriority = 1\nprotocol = \"tcp\"\nport_range = \"{port}/{port}\"\nsource = \"{src}\"\n"
        ));
    }
    s
}

/// `config` (from [`seed_config`]) with `io = "dpdk"`: the `[dataplane]`
/// table replaced by one with `eal_args`, and each port's `interface`
/// replaced by `dpdk_port` = its index (vdevs are numbered in command-line
/// order, so list them in port order).
pub fn dpdk_config(config: &str, eal_args: &[String]) -> String {
    let start = config.find("[dataplane]").expect("a [dataplane] table");
    let end = config[start..]
        .find("[[port]]")
        .map(|i| start + i)
        .expect("ports after [dataplane]");
    let args = eal_args
        .iter()
        .map(|a| format!("{a:?}"))
        .collect::<Vec<_>>()
        .join(", ");
    let dataplane = format!(
        "[dataplane]\nio = \"dpdk\"\nworkers = 2\nmax_sessions = 65536\neal_args = [{args}]\n\n"
    );
    let mut out = format!("{}{dataplane}{}", &config[..start], &config[end..]);
    let mut port = 0;
    while let Some(at) = out.find("interface = \"") {
        let line_end = at + out[at..].find('\n').expect("a line end");
        out.replace_range(at..line_end, &format!("dpdk_port = {port}"));
        port += 1;
    }
    out
}

/// EAL arguments of `lbd` in the load-balancer namespace: no hugepages, no
/// PCI, no shared config or telemetry, `mem_mb` MB, lcore 0, then `vdevs`
/// (one per port, in port order).
pub fn lbd_eal_args(file_prefix: &str, mem_mb: u32, vdevs: &[&str]) -> Vec<String> {
    let mem = mem_mb.to_string();
    let base = [
        "--no-huge",
        "--no-pci",
        "--no-shconf",
        "--no-telemetry",
        "-m",
        &mem,
        "-l",
        "0",
        "--file-prefix",
        file_prefix,
    ];
    base.iter().chain(vdevs).map(|s| s.to_string()).collect()
}

/// Removes an EAL runtime directory on drop, also when the test fails.
pub struct RuntimeDir(pub PathBuf);

impl Drop for RuntimeDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Where DPDK keeps the runtime files of `file_prefix` (as root).
pub fn dpdk_runtime_dir(file_prefix: &str) -> PathBuf {
    PathBuf::from("/var/run/dpdk").join(file_prefix)
}

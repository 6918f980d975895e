//! One run of a device with a worker count, the traffic process against
//! it.

use super::*;

/// Runs `dut` with `workers` and the traffic process against it.
pub(super) fn run_dut(
    a: &DataplaneArgs,
    scratch: &mut Scratch,
    dut: Dut,
    workers: u16,
    raw: &mut Vec<String>,
) -> Result<DutRun> {
    let deadline = Instant::now() + a.max_time;
    scratch.clean_run();
    let dir = scratch.dir.clone();
    let (ext, int) = (dir.join("ext.sock"), dir.join("int.sock"));
    let log = dir.join(format!("{}-w{workers}.log", dut.name()));
    let logf = std::fs::File::create(&log).context("creating the device's log")?;
    let dut_prefix = scratch.prefix(&dut.name()[..1]);
    let other_cpu = if a.gen_cpu == 0 { 1 } else { 0 };
    let mut queues = workers;
    let mut proc = match dut {
        Dut::Lbd => {
            let (lbd, _) = binaries(a)?;
            let eal = lbd_eal(&dir, &dut_prefix);
            let cores = (workers == 1).then_some([other_cpu]);
            let conf = dir.join(format!("lbd-w{workers}.toml"));
            std::fs::write(
                &conf,
                lbd_config(
                    workers,
                    &eal,
                    cores.as_ref().map(|c| &c[..]),
                    a.max_sessions,
                ),
            )
            .context("writing lbd's configuration")?;
            Proc::spawn(
                "lbd",
                Command::new(lbd)
                    .arg("--config")
                    .arg(&conf)
                    .arg("--control")
                    .arg(dir.join("lbd.sock"))
                    .stdin(Stdio::null())
                    .stdout(logf.try_clone()?)
                    .stderr(logf),
            )?
        }
        Dut::Testpmd => {
            // Main lcore on the traffic process's CPU (it sleeps), the
            // forwarding lcores on the other CPU first.
            let lcores = match workers {
                1 => format!("0@{},1@{other_cpu}", a.gen_cpu),
                n => {
                    let mut l = format!("0@{}", a.gen_cpu);
                    for i in 1..=n {
                        let cpu = if i % 2 == 1 { other_cpu } else { a.gen_cpu };
                        let _ = write!(l, ",{i}@{cpu}");
                    }
                    l
                }
            };
            let n = workers.to_string();
            Proc::spawn(
                "dpdk-testpmd",
                Command::new(&a.testpmd)
                    .args(["--lcores", &lcores, "--main-lcore", "0"])
                    .args(["--no-huge", "-m", "1024", "--no-pci", "--no-telemetry"])
                    .args(["--file-prefix", &dut_prefix])
                    .arg(memif(0, "server", &ext, LBD_EXT_MAC))
                    .arg(memif(1, "server", &int, LBD_INT_MAC))
                    .args(["--", "--forward-mode=io", "--no-mlockall"])
                    .args(["--nb-cores", &n, "--rxq", &n, "--txq", &n])
                    .args(["--total-num-mbufs=32768", "--stats-period", "1"])
                    .stdin(Stdio::null())
                    .stdout(logf.try_clone()?)
                    .stderr(logf),
            )?
        }
    };
    wait_for(
        &[ext.clone(), int.clone()],
        &mut proc,
        Instant::now() + Duration::from_secs(20),
        &log,
    )?;
    if dut == Dut::Lbd {
        // A port with fewer queues gives lbd fewer workers:
        // ask lbd how many run once its control socket is up.
        let sock = dir.join("lbd.sock");
        wait_for(
            std::slice::from_ref(&sock),
            &mut proc,
            Instant::now() + Duration::from_secs(20),
            &log,
        )?;
        // The socket file comes a moment before lbd answers on it, and
        // its workers report as they start: wait (a bounded time) for all
        // that were asked for.
        let by = Instant::now() + Duration::from_secs(10);
        let all_by = Instant::now() + Duration::from_secs(3);
        let c = loop {
            match lbd_counters(a, &sock) {
                Ok(c) if c.workers >= usize::from(workers) || Instant::now() > all_by => break c,
                Ok(_) => std::thread::sleep(Duration::from_millis(50)),
                Err(e) if Instant::now() > by || !proc.alive() => return Err(e),
                Err(_) => std::thread::sleep(Duration::from_millis(50)),
            }
        };
        queues = u16::try_from(c.workers).unwrap_or(1).clamp(1, workers);
    }
    let gen_prefix = scratch.prefix("g");
    let eal = format!(
        "--no-huge --no-pci --no-shconf --no-telemetry -m 1024 -l {} --file-prefix {gen_prefix} {} {}",
        a.gen_cpu,
        memif(0, "client", &ext, GEN_EXT_MAC),
        memif(1, "client", &int, GEN_INT_MAC)
    );
    let phases: Vec<String> = match dut {
        Dut::Lbd => a.phases.clone(),
        Dut::Testpmd => a
            .phases
            .iter()
            .filter(|p| matches!(p.as_str(), "est" | "lat"))
            .cloned()
            .collect(),
    };
    let remaining = deadline.saturating_duration_since(Instant::now());
    let traffic = Proc::spawn(
        "bench dataplane-traffic",
        Command::new(std::env::current_exe()?)
            .arg("dataplane-traffic")
            .arg("--eal")
            .arg(&eal)
            .arg("--queues")
            .arg(queues.to_string())
            .arg("--flows")
            .arg(a.flows.to_string())
            .arg("--duration")
            .arg(format!("{}ms", a.duration.as_millis()))
            .arg("--phases")
            .arg(phases.join(","))
            .arg("--max-time")
            .arg(format!(
                "{}ms",
                remaining
                    .saturating_sub(Duration::from_secs(5))
                    .as_millis()
                    .max(1)
            ))
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit()),
    )?;
    let out = traffic.output_by(deadline)?;
    let lbd = if dut == Dut::Lbd {
        Some(lbd_counters(a, &dir.join("lbd.sock"))?)
    } else {
        None
    };
    proc.stop(Duration::from_secs(5));
    drop(proc);
    scratch.clean_run();
    let phases: Vec<PhaseResult> = out.lines().filter_map(PhaseResult::from_line).collect();
    let warmup = out
        .lines()
        .find(|l| l.starts_with("warm-up"))
        .unwrap_or("warm-up: ?")
        .to_string();
    for l in out.lines().filter(|l| l.starts_with("generator ports")) {
        eprintln!("  {} w{workers}: {l}", dut.name());
    }
    for l in out.lines().filter(|l| l.starts_with("phase ")) {
        raw.push(format!("raw {} w{workers} {l}", dut.name()));
    }
    Ok(DutRun {
        dut,
        workers: queues.max(1),
        phases,
        warmup,
        lbd,
    })
}

/// Runs of a device before the last one, which counts whatever it gives.
const RETRIES: usize = 3;

/// [`run_dut`], again (up to [`RETRIES`] times) if it failed, ran fewer
/// workers than asked, or nothing went through the device: memif links
/// with several queues have been seen not to come up, and a link that
/// connected but never passed a frame has been seen.
pub(super) fn run_dut_retried(
    a: &DataplaneArgs,
    scratch: &mut Scratch,
    dut: Dut,
    workers: u16,
    raw: &mut Vec<String>,
) -> Result<DutRun> {
    for _ in 0..RETRIES {
        let mut attempt = Vec::new();
        match run_dut(a, scratch, dut, workers, &mut attempt) {
            Ok(r) if r.workers == workers && r.phases.iter().any(|p| p.rev > 0) => {
                raw.extend(attempt);
                return Ok(r);
            }
            Ok(r) if r.workers != workers => eprintln!(
                "  {} w{workers}: ran {} worker(s); once more",
                dut.name(),
                r.workers
            ),
            Ok(r) => eprintln!(
                "  {} w{workers}: nothing came back through the device ({}); once more",
                dut.name(),
                r.warmup
            ),
            Err(e) => eprintln!("  {} w{workers}: {e:#}; once more", dut.name()),
        }
    }
    run_dut(a, scratch, dut, workers, raw)
}

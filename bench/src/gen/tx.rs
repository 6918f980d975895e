//! The sending side: the warm-up, the measured phase, and the frames of
//! each burst.

use std::collections::HashSet;
use std::fmt;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use lb_dataplane::io::PacketIo;

use super::pacer::pause;
use super::{answer_neighbor, Class, Opts, Pacer, Stamp, Templates, CLASSES, PORTS, PORT_BASE};

/// Longest warm-up (opening the established flows).
const MAX_WARMUP: Duration = Duration::from_secs(10);
/// Rounds of warm-up SYNs: the first, and resends of those that did not
/// arrive.
const WARMUP_ROUNDS: usize = 4;

/// A tiny deterministic PRNG (xorshift64*).
#[derive(Debug)]
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn new(seed: u64) -> Rng {
        Rng(seed.wrapping_mul(0x9e37_79b9_7f4a_7c15) | 1)
    }

    pub(crate) fn next(&mut self) -> u64 {
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_f491_4f6c_dd1d)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

/// The sending side: templates, flows and counters.
pub(super) struct Sender {
    pub(super) port: Box<dyn PacketIo>,
    pub(super) tpl: Templates,
    pub(super) mac: [u8; 6],
    pub(super) sources: Vec<IpAddr>,
    pub(super) own: HashSet<IpAddr>,
    pub(super) flows: u64,
    pub(super) tuples: u64,
    pub(super) pattern: Vec<Class>,
    pub(super) next: usize,
    pub(super) rng: Rng,
    pub(super) run: u8,
    pub(super) epoch: Instant,
    pub(super) seq: u32,
    pub(super) new_flows: u64,
    /// Where this run's new flows start in the tuple space.
    pub(super) new_base: u64,
    pub(super) denied_flows: u64,
    pub(super) sent: [u64; CLASSES],
    pub(super) tx_dropped: [u64; CLASSES],
    pub(super) tx_bytes: u64,
    pub(super) neighbor_replies: u64,
    pub(super) last_dropped: u64,
    pub(super) buf: Vec<u8>,
    pub(super) burst: Vec<(Class, usize)>,
    pub(super) replies: Vec<Vec<u8>>,
}

impl fmt::Debug for Sender {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Sender")
            .field("sent", &self.sent)
            .finish_non_exhaustive()
    }
}

impl Sender {
    fn tuple(&self, i: u64) -> (IpAddr, u16) {
        let n = self.sources.len() as u64;
        let a = self.sources[(i % n) as usize];
        (a, PORT_BASE + ((i / n) % PORTS) as u16)
    }

    fn next_class(&mut self) -> Class {
        let c = self.pattern[self.next];
        self.next += 1;
        if self.next == self.pattern.len() {
            self.next = 0;
        }
        c
    }

    /// Answers ARP / neighbour solicitations waiting on the TX port.
    pub(super) fn service(&mut self) -> Result<()> {
        let (own, mac, replies) = (&self.own, self.mac, &mut self.replies);
        self.port.recv_burst(256, &mut |f, _| {
            if let Some(r) = answer_neighbor(f, own, mac) {
                replies.push(r);
            }
        });
        if self.replies.is_empty() {
            return Ok(());
        }
        for r in self.replies.drain(..) {
            self.port.send(&r);
            self.neighbor_replies += 1;
        }
        self.port.flush().context("sending a neighbour reply")?;
        self.last_dropped = self.port.stats().tx_dropped;
        Ok(())
    }

    /// Sends `n` frames of the mix, or with `warmup` = (flows, cursor) the
    /// SYNs of the established flows `flows[*cursor..]` (stamped with the
    /// flow's index as the sequence number).
    fn send_burst(&mut self, n: usize, warmup: Option<(&[u64], &mut usize)>) -> Result<()> {
        self.burst.clear();
        let mut warm = warmup;
        for _ in 0..n {
            let class = match warm {
                Some(_) => Class::Warmup,
                None => self.next_class(),
            };
            let mut seq = self.seq;
            let tuple = match class {
                Class::Warmup => {
                    let (flows, c) = warm.as_mut().expect("warm-up flows");
                    let flow = flows[**c];
                    **c += 1;
                    seq = flow as u32;
                    self.tuple(flow)
                }
                Class::Established => {
                    let i = self.rng.below(self.flows);
                    self.tuple(i)
                }
                Class::New => {
                    let i =
                        self.flows + (self.new_base + self.new_flows) % (self.tuples - self.flows);
                    self.new_flows += 1;
                    self.tuple(i)
                }
                Class::Denied => {
                    let i = self.denied_flows % self.tuples;
                    self.denied_flows += 1;
                    self.tuple(i)
                }
            };
            let stamp = Stamp {
                run: self.run,
                class,
                seq,
                tx_ns: self.epoch.elapsed().as_nanos() as u32,
            };
            if class != Class::Warmup {
                self.seq = self.seq.wrapping_add(1);
            }
            let len = self.tpl.fill(&mut self.buf, tuple.0, tuple.1, &stamp);
            self.port.send(&self.buf[..len]);
            self.burst.push((class, len));
        }
        self.port
            .flush()
            .context("sending on the TX interface failed")?;
        // Frames the port could not take are the last ones of the batch.
        let dropped = self.port.stats().tx_dropped;
        let mut d = dropped.saturating_sub(self.last_dropped);
        self.last_dropped = dropped;
        for &(class, len) in self.burst.iter().rev() {
            if d > 0 {
                self.tx_dropped[class as usize] += 1;
                d -= 1;
            } else {
                self.sent[class as usize] += 1;
                if class != Class::Warmup {
                    self.tx_bytes += len as u64;
                }
            }
        }
        Ok(())
    }
}

/// Sends the SYNs of the established flows: one per flow, at the run's
/// rate but fast enough to finish within a few seconds; with a receiver
/// (`opened`: the flows whose SYN arrived), SYNs that did not arrive are
/// sent again, up to [`WARMUP_ROUNDS`] rounds in [`MAX_WARMUP`]. Returns
/// how many flows remain unopened (with a receiver).
fn warm_up(o: &Opts, s: &mut Sender, opened: Option<&[AtomicU64]>) -> Result<Option<u64>> {
    let deadline = Instant::now() + MAX_WARMUP;
    let mut todo: Vec<u64> = (0..s.flows).collect();
    for _ in 0..WARMUP_ROUNDS {
        let rate = o.rate.map(|r| r.max(todo.len() as u64 / 2 + 1));
        let mut pacer = Pacer::new(rate, Instant::now());
        let mut cursor = 0usize;
        while cursor < todo.len() {
            let now = Instant::now();
            if now > deadline {
                break;
            }
            s.service()?;
            let n = pacer.grant(now).min(todo.len() - cursor);
            if n == 0 {
                pause(pacer.until_next());
                continue;
            }
            s.send_burst(n, Some((&todo, &mut cursor)))?;
        }
        // Let the sessions settle (and the SYNs arrive).
        let settle = Instant::now() + Duration::from_millis(200);
        while Instant::now() < settle {
            s.service()?;
            std::thread::sleep(Duration::from_millis(1));
        }
        let Some(opened) = opened else {
            return Ok(None);
        };
        let is_open =
            |f: u64| opened[(f / 64) as usize].load(Ordering::Relaxed) & (1 << (f % 64)) != 0;
        todo.retain(|&f| !is_open(f));
        if todo.is_empty() || Instant::now() > deadline {
            break;
        }
    }
    Ok(opened.map(|_| todo.len() as u64))
}

/// The warm-up and the measured phase; returns the measured time and the
/// flows the warm-up could not open (with a receiver).
pub(super) fn send_all(
    o: &Opts,
    s: &mut Sender,
    opened: Option<&[AtomicU64]>,
) -> Result<(Duration, Option<u64>)> {
    let unopened = if s.flows > 0 {
        warm_up(o, s, opened)?
    } else {
        None
    };

    let start = Instant::now();
    let end = start + o.duration;
    let mut pacer = Pacer::new(o.rate, start);
    let mut last = start;
    loop {
        let now = Instant::now();
        if now >= end {
            break;
        }
        s.service()?;
        let n = pacer.grant(now);
        if n == 0 {
            pause(pacer.until_next().min(end - now));
            continue;
        }
        s.send_burst(n, None)?;
        last = Instant::now();
    }
    Ok((last - start, unopened))
}

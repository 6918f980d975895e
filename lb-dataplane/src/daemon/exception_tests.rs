//! A worker loop with an exception path (queues only, no TAP): what goes
//! up from a burst, and the kernel's frames put on the port before the
//! burst's own answers.

use lb_core::model::{proto, IdlePolicy};
use lb_core::packet::{build_arp_reply, build_frame, ArpOp, ArpRepr, FrameSpec, MacAddr};

use super::rss_tests::{QueueRx, QueueTx};
use super::*;
use crate::exception::{ExceptionPort, Exceptions};
use crate::io::{RxQueue, TxQueue};

const CONFIG: &str = r#"
[dataplane]
workers = 1

[[port]]
name = "ext"
interface = "lb-ext"
addresses = ["198.18.0.1/24"]
tap = "lbd-ext"
"#;

const MAC: [u8; 6] = [2, 0, 0, 0, 0, 1];
const PEER: [u8; 6] = [2, 0, 0, 0, 0, 9];

/// What the worker sent.
type Sent = Arc<Mutex<Vec<Vec<u8>>>>;

fn to_port(proto: u8, dport: u16, icmp: Option<(u8, u8)>) -> Vec<u8> {
    build_frame(&FrameSpec {
        src_mac: MacAddr(PEER),
        dst_mac: MacAddr(MAC),
        src: "198.18.0.2".parse().expect("v4"),
        dst: "198.18.0.1".parse().expect("v4"),
        proto,
        sport: 40000,
        dport,
        icmp,
        ..FrameSpec::default()
    })
}

/// A worker of `CONFIG` reading `frames`, its exception path, and what it
/// sent.
fn worker(frames: Vec<Vec<u8>>) -> (WorkerLoop, Arc<Shared>, Arc<ExceptionPort>, Sent) {
    worker_of(CONFIG, frames)
}

/// [`worker`] of configuration `config`.
fn worker_of(
    config: &str,
    frames: Vec<Vec<u8>>,
) -> (WorkerLoop, Arc<Shared>, Arc<ExceptionPort>, Sent) {
    let cfg = lb_config::parse_str(config, "t.toml").expect("valid");
    let (health_tx, _) = bounded(16);
    let mut shared = Shared::assemble(
        Path::new("t.toml"),
        Arc::new(Snapshot::compile(cfg, 1)),
        1,
        vec!["lb-ext".into()],
        health_tx,
        vec![u32::MAX],
    );
    let ep = Arc::new(ExceptionPort::new("lbd-ext", None, 64, 2048));
    shared.exception = Arc::new(Exceptions::new(vec![Some(ep.clone())]).expect("eventfd"));
    let shared = Arc::new(shared);
    let sent: Sent = Arc::default();
    let ports = super::ports::WorkerPorts {
        rx: vec![Box::new(QueueRx {
            rx: Arc::new(Mutex::new(frames.into())),
            burst: Vec::new(),
        }) as Box<dyn RxQueue>],
        tx: vec![Box::new(QueueTx {
            tx: sent.clone(),
            mac: MAC,
        }) as Box<dyn TxQueue>],
    };
    let w = WorkerLoop::new(0, shared.clone(), ports, IdlePolicy::Busy, [1024, 1024]);
    (w, shared, ep, sent)
}

#[test]
fn a_burst_sends_up_what_the_kernel_serves_and_answers_the_rest() {
    let request = ArpRepr {
        op: ArpOp::Request,
        sender_mac: MacAddr(MAC),
        sender_ip: "198.18.0.1".parse().expect("v4"),
        target_mac: MacAddr::ZERO,
        target_ip: "198.18.0.2".parse().expect("v4"),
    };
    let frames = vec![
        to_port(proto::TCP, 179, None),
        to_port(proto::UDP, 3784, None),
        to_port(proto::ICMP, 0, None), // an echo request: answered here
        build_arp_reply(&request, MacAddr(PEER), None),
    ];
    let (mut w, shared, ep, sent) = worker(frames.clone());
    let rt = shared.runtime.load_full();
    assert_eq!(w.forward_once(&rt), 4);
    let mut up = Vec::new();
    while let Some(b) = ep.pop_up() {
        up.push(b.data().to_vec());
    }
    assert_eq!(
        up,
        vec![frames[0].clone(), frames[1].clone(), frames[3].clone()]
    );
    let sent = sent.lock().expect("not poisoned");
    assert_eq!(sent.len(), 1, "the echo reply only");
    let p = lb_core::packet::parse(&sent[0]).expect("a frame");
    assert_eq!(p.icmp, Some((0, 0)));
}

#[test]
fn the_kernels_frames_leave_before_the_rounds_answers() {
    // A round's worth of pings, and 40 frames from the kernel waiting.
    let pings: Vec<Vec<u8>> = (0..BURST).map(|_| to_port(proto::ICMP, 0, None)).collect();
    let (mut w, shared, ep, sent) = worker(pings);
    let kernel = |i: u8| {
        let mut f = to_port(proto::TCP, 179, None);
        f[0..6].copy_from_slice(&PEER);
        f[6..12].copy_from_slice(&MAC);
        f.push(i);
        f
    };
    for i in 0..40 {
        assert!(ep.push_down(&kernel(i)));
    }
    let rt = shared.runtime.load_full();
    w.forward_once(&rt);
    {
        let sent = sent.lock().expect("not poisoned");
        assert_eq!(sent.len(), BURST + BURST, "a burst of each");
        for (i, f) in sent[..BURST].iter().enumerate() {
            assert_eq!(
                f,
                &kernel(u8::try_from(i).expect("small")),
                "kernel frame {i} first"
            );
        }
        for f in &sent[BURST..] {
            let p = lb_core::packet::parse(f).expect("a frame");
            assert_eq!(p.icmp, Some((0, 0)), "then the echo replies");
        }
    }
    w.forward_once(&rt);
    let sent = sent.lock().expect("not poisoned");
    assert_eq!(sent.len(), 2 * BURST + 8, "the other 8 in the next round");
    assert_eq!(
        ep.counters.from_kernel.load(Ordering::Relaxed),
        40,
        "counted as sent"
    );
}

#[test]
fn on_a_vlan_port_the_kernels_frames_leave_tagged() {
    let config = CONFIG.replace("tap = \"lbd-ext\"\n", "tap = \"lbd-ext\"\nvlan = 100\n");
    let (mut w, shared, ep, sent) = worker_of(&config, Vec::new());
    let untagged = to_port(proto::TCP, 179, None);
    assert!(ep.push_down(&untagged));
    w.forward_once(&shared.runtime.load_full());
    let sent = sent.lock().expect("not poisoned");
    assert_eq!(sent.len(), 1);
    assert_eq!(
        &sent[0][12..16],
        &[0x81, 0x00, 0x00, 100],
        "802.1Q, VLAN 100"
    );
    assert_eq!(&sent[0][16..], &untagged[12..]);
}

//! DPDK backend (feature `dpdk`): poll-mode ports behind [`PacketIo`].
//!
//! Lifecycle: [`Eal::init`] once per process, one [`Mempool`] per NUMA
//! socket, [`DpdkPort::open`] per port (one RX and one TX queue per worker,
//! RSS with a symmetric key so both directions of a flow reach the same
//! queue), then [`DpdkPort::queue`] hands each worker its [`DpdkQueue`].
//! Handles keep what they need alive: a queue keeps its port (stopped and
//! closed when the port and all its queues are gone), a port its mempool,
//! everything the EAL (cleaned up, and its runtime directory removed, when
//! the last handle goes).
//!
//! Foreign memory is touched through [`Mbuf`] only: [`Mbuf::from_raw`] is
//! the one unsafe constructor, and every view after it ([`Mbuf::data`],
//! [`Mbuf::data_mut`]) is a plain, bounds-checked slice.
//!
//! ```no_run
//! use lb_dataplane::io::dpdk::{DpdkPort, DpdkPortOpts, Eal, Mempool};
//! use lb_dataplane::io::PacketIo;
//!
//! let args: Vec<String> = ["--no-huge", "--no-pci", "-m", "128", "--vdev=net_ring0"]
//!     .iter()
//!     .map(|s| s.to_string())
//!     .collect();
//! let _eal = Eal::init(&args)?;
//! let pool = Mempool::new("pool0", 8191, 256, Mempool::DEFAULT_DATA_ROOM, None)?;
//! let port = DpdkPort::open(0, 1, &pool, &DpdkPortOpts::default())?;
//! let mut queue = port.queue(0)?;
//! queue.send(&[0u8; 60]);
//! queue.flush()?;
//! queue.recv_burst(32, &mut |frame, _meta| frame[0] ^= 1);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

mod eal;
mod error;
mod mbuf;
mod mempool;
mod port;
mod queue;
mod rss;
pub mod steering;

pub use lb_dpdk_sys as sys;

pub use eal::{Eal, ThreadRegistration};
pub use error::DpdkError;
pub use mbuf::Mbuf;
pub use mempool::Mempool;
pub use port::{DpdkPort, DpdkPortOpts, EthStats, LinkStatus};
pub use queue::{DpdkQueue, DpdkRx, DpdkTx};
pub use rss::{symmetric_rss_key, toeplitz_hash, SYMMETRIC_RSS_KEY};

/// Most frames one [`DpdkQueue::recv_burst`] takes from the PMD.
pub const MAX_BURST: usize = 64;

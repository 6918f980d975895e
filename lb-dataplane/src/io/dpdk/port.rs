//! Ethernet ports: configured, started, stopped and closed.

use std::ffi::{c_char, CStr, CString};
use std::fmt;
use std::ptr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};

use super::error::{check, Convention};
use super::rss::RSS_HF;
use super::*;

/// Settings of [`DpdkPort::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DpdkPortOpts {
    /// RX descriptors per queue (adjusted to the PMD's limits).
    pub rx_desc: u16,
    /// TX descriptors per queue (adjusted to the PMD's limits).
    pub tx_desc: u16,
    /// Frames [`PacketIo::send`](crate::io::PacketIo::send) batches before it flushes by itself
    /// (1..=[`MAX_BURST`]).
    pub tx_batch: usize,
    /// Further `rte_eth_tx_burst` calls [`PacketIo::flush`](crate::io::PacketIo::flush) makes while the
    /// TX ring is full, before it drops the rest.
    pub tx_retries: u32,
    /// Receive every frame, whatever its destination MAC.
    pub promiscuous: bool,
    /// MTU to set; `None` keeps the PMD's (usually 1500).
    pub mtu: Option<u16>,
    /// The link's peer spreads frames over the queues (software RSS, see
    /// `lb_core::model::DpdkRss::Software`): open one queue per worker
    /// without asking the PMD for RSS.
    pub software_rss: bool,
}

impl Default for DpdkPortOpts {
    fn default() -> Self {
        DpdkPortOpts {
            rx_desc: 1024,
            tx_desc: 1024,
            tx_batch: 32,
            tx_retries: 4,
            promiscuous: true,
            mtu: None,
            software_rss: false,
        }
    }
}

/// Link state, for logs and stats.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct LinkStatus {
    pub up: bool,
    /// Mb/s; `None` when the PMD does not know (virtual devices).
    pub speed_mbps: Option<u32>,
    pub full_duplex: bool,
    pub autoneg: bool,
}

impl fmt::Display for LinkStatus {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if !self.up {
            return f.write_str("down");
        }
        match self.speed_mbps {
            Some(s) => write!(f, "up {s} Mb/s")?,
            None => f.write_str("up, speed unknown")?,
        }
        f.write_str(if self.full_duplex {
            " full-duplex"
        } else {
            " half-duplex"
        })
    }
}

/// Port-wide counters (`rte_eth_stats_get`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct EthStats {
    pub ipackets: u64,
    pub opackets: u64,
    pub ibytes: u64,
    pub obytes: u64,
    /// RX frames the hardware dropped (queue full).
    pub imissed: u64,
    pub ierrors: u64,
    pub oerrors: u64,
    /// RX mbuf allocation failures.
    pub rx_nombuf: u64,
}

pub(super) struct PortInner {
    pub(super) port_id: u16,
    name: String,
    driver: String,
    pub(super) mac: [u8; 6],
    rss: bool,
    /// The peer spreads frames over the queues (software RSS).
    software_rss: bool,
    pub(super) tx_batch: usize,
    pub(super) tx_retries: u32,
    /// One flag per queue: handed out to a [`DpdkQueue`].
    pub(super) taken: Vec<AtomicBool>,
    /// Control-path calls (stats, link) are not thread-safe in DPDK.
    control: Mutex<()>,
    pub(super) pool: Mempool,
    _eal: Eal,
}

impl PortInner {
    fn control(&self) -> MutexGuard<'_, ()> {
        self.control
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub(super) fn eth_stats(&self) -> Result<EthStats, DpdkError> {
        let _guard = self.control();
        let mut s = sys::rte_eth_stats::default();
        // SAFETY: the port is valid and started; `s` is a writable
        // rte_eth_stats; control calls are serialised by the lock.
        let ret = unsafe { sys::rte_eth_stats_get(self.port_id, &mut s) };
        check("rte_eth_stats_get", ret, Convention::NegErrno)?;
        Ok(EthStats {
            ipackets: s.ipackets,
            opackets: s.opackets,
            ibytes: s.ibytes,
            obytes: s.obytes,
            imissed: s.imissed,
            ierrors: s.ierrors,
            oerrors: s.oerrors,
            rx_nombuf: s.rx_nombuf,
        })
    }
}

impl Drop for PortInner {
    fn drop(&mut self) {
        let _guard = self.control();
        // SAFETY: no queue handle is left (each holds this value), so no
        // thread is in a burst call on the port; the EAL is alive (held).
        let ret = unsafe { sys::rte_eth_dev_stop(self.port_id) };
        if let Err(e) = check("rte_eth_dev_stop", ret, Convention::NegErrno) {
            tracing::warn!("port {} ({}): {e}", self.port_id, self.name);
        }
        // SAFETY: as above; close releases the queues and their mbufs
        // back to the pool, which is still alive (held).
        let ret = unsafe { sys::rte_eth_dev_close(self.port_id) };
        if let Err(e) = check("rte_eth_dev_close", ret, Convention::NegErrno) {
            tracing::warn!("port {} ({}): {e}", self.port_id, self.name);
        }
    }
}

/// A started DPDK Ethernet port; a cheap, cloneable handle. Stopped and
/// closed when it and all its queues are dropped.
#[derive(Clone)]
pub struct DpdkPort {
    inner: Arc<PortInner>,
}

impl fmt::Debug for DpdkPort {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("DpdkPort")
            .field("port_id", &self.inner.port_id)
            .field("name", &self.inner.name)
            .field("driver", &self.inner.driver)
            .field("queues", &self.inner.taken.len())
            .field("rss", &self.inner.rss)
            .field("software_rss", &self.inner.software_rss)
            .finish()
    }
}

fn c_str_or_empty(p: *const c_char) -> String {
    if p.is_null() {
        return String::new();
    }
    // SAFETY: non-NULL, NUL-terminated string owned by DPDK, copied at once.
    unsafe { CStr::from_ptr(p) }.to_string_lossy().into_owned()
}

impl DpdkPort {
    /// Ports EAL found (PCI devices it may drive, and `--vdev`s in
    /// command-line order), numbered from 0.
    pub fn count() -> u16 {
        // SAFETY: plain query; returns 0 before EAL init.
        unsafe { sys::rte_eth_dev_count_avail() }
    }

    /// The id of the port named `name` (a PCI address such as
    /// `0000:03:00.0`, or a vdev name such as `net_ring0`).
    pub fn id_by_name(name: &str) -> Result<u16, DpdkError> {
        Eal::current().ok_or(DpdkError::EalNotInitialized)?;
        let c_name = CString::new(name)
            .map_err(|_| DpdkError::InvalidArgument(format!("port name {name:?}")))?;
        let mut id = 0u16;
        // SAFETY: EAL is initialised; c_name is a valid C string and `id`
        // a writable u16.
        let ret = unsafe { sys::rte_eth_dev_get_port_by_name(c_name.as_ptr(), &mut id) };
        check("rte_eth_dev_get_port_by_name", ret, Convention::NegErrno)?;
        Ok(id)
    }

    /// Configures and starts port `port_id` with `queues` RX and TX queue
    /// pairs (one per worker), RX buffers from `mempool`.
    ///
    /// With more than one queue, RSS spreads IPv4/IPv6 TCP/UDP flows with
    /// [`SYMMETRIC_RSS_KEY`]. A PMD without RSS, or with fewer queues,
    /// gets fewer queues (logged): check [`DpdkPort::queue_count`]. With
    /// [`DpdkPortOpts::software_rss`], the PMD's RSS is not used and only
    /// its queue limit applies: the link's peer spreads the frames.
    pub fn open(
        port_id: u16,
        queues: u16,
        mempool: &Mempool,
        opts: &DpdkPortOpts,
    ) -> Result<DpdkPort, DpdkError> {
        let eal = Eal::current().ok_or(DpdkError::EalNotInitialized)?;
        if queues == 0 {
            return Err(DpdkError::InvalidArgument(
                "a port needs at least one queue".into(),
            ));
        }
        if opts.tx_batch == 0 || opts.tx_batch > MAX_BURST {
            return Err(DpdkError::InvalidArgument(format!(
                "tx_batch must be between 1 and {MAX_BURST}"
            )));
        }
        // SAFETY: plain query on any port id.
        if unsafe { sys::rte_eth_dev_is_valid_port(port_id) } == 0 {
            return Err(DpdkError::NoSuchPort(port_id));
        }
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port; `info` is a writable rte_eth_dev_info.
        let ret = unsafe { sys::rte_eth_dev_info_get(port_id, &mut info) };
        check("rte_eth_dev_info_get", ret, Convention::NegErrno)?;
        let driver = c_str_or_empty(info.driver_name);
        let mut name_buf = [0 as c_char; sys::RTE_ETH_NAME_MAX_LEN as usize];
        // SAFETY: valid port; the buffer holds RTE_ETH_NAME_MAX_LEN bytes,
        // the most DPDK writes (NUL included).
        let ret = unsafe { sys::rte_eth_dev_get_name_by_port(port_id, name_buf.as_mut_ptr()) };
        let name = if ret == 0 {
            c_str_or_empty(name_buf.as_ptr())
        } else {
            format!("port{port_id}")
        };

        let hf = RSS_HF & info.flow_type_rss_offloads;
        let max_queues = info.max_rx_queues.min(info.max_tx_queues).max(1);
        let mut n = queues;
        if n > 1 && hf == 0 && !opts.software_rss {
            tracing::warn!(
                "port {port_id} ({name}, {driver}) does not support RSS on IP TCP/UDP: \
                 using 1 queue instead of {queues}"
            );
            n = 1;
        } else if n > max_queues {
            tracing::warn!(
                "port {port_id} ({name}, {driver}) supports {max_queues} queue(s): \
                 using {max_queues} instead of {queues}"
            );
            n = max_queues;
        }
        let software_rss = n > 1 && opts.software_rss;
        let rss = n > 1 && !software_rss;

        let key_len = match info.hash_key_size {
            0 => SYMMETRIC_RSS_KEY.len(),
            k => usize::from(k),
        };
        let mut key = symmetric_rss_key(key_len);
        let mut conf = sys::rte_eth_conf::default();
        if rss {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_RSS;
            conf.rx_adv_conf.rss_conf.rss_key = key.as_mut_ptr();
            conf.rx_adv_conf.rss_conf.rss_key_len =
                u8::try_from(key.len()).expect("key_len comes from a u8 or is 40");
            conf.rx_adv_conf.rss_conf.rss_hf = hf;
        } else {
            conf.rxmode.mq_mode = sys::RTE_ETH_MQ_RX_NONE;
        }
        // SAFETY: valid, stopped port; `conf` (and the key it points to,
        // which the PMD copies) is valid for the call.
        let ret = unsafe { sys::rte_eth_dev_configure(port_id, n, n, &conf) };
        check("rte_eth_dev_configure", ret, Convention::NegErrno)?;

        let (mut rx_desc, mut tx_desc) = (opts.rx_desc, opts.tx_desc);
        // SAFETY: valid, configured port; both pointers are writable u16s.
        let ret =
            unsafe { sys::rte_eth_dev_adjust_nb_rx_tx_desc(port_id, &mut rx_desc, &mut tx_desc) };
        check(
            "rte_eth_dev_adjust_nb_rx_tx_desc",
            ret,
            Convention::NegErrno,
        )?;

        // SAFETY: plain query on a valid port.
        let socket = unsafe { sys::rte_eth_dev_socket_id(port_id) };
        // SOCKET_ID_ANY (-1) travels as an unsigned int, as DPDK does it.
        let socket = socket as u32;
        for q in 0..n {
            // SAFETY: valid, configured port; q < n queues configured; NULL
            // rx_conf means the PMD's defaults; the pool outlives the port
            // (PortInner holds it).
            let ret = unsafe {
                sys::rte_eth_rx_queue_setup(
                    port_id,
                    q,
                    rx_desc,
                    socket,
                    ptr::null(),
                    mempool.as_ptr(),
                )
            };
            check("rte_eth_rx_queue_setup", ret, Convention::NegErrno)?;
            // SAFETY: as above, for the TX side.
            let ret =
                unsafe { sys::rte_eth_tx_queue_setup(port_id, q, tx_desc, socket, ptr::null()) };
            check("rte_eth_tx_queue_setup", ret, Convention::NegErrno)?;
        }
        if let Some(mtu) = opts.mtu {
            // SAFETY: valid, configured port.
            let ret = unsafe { sys::rte_eth_dev_set_mtu(port_id, mtu) };
            check("rte_eth_dev_set_mtu", ret, Convention::NegErrno)?;
        }
        if opts.promiscuous {
            // SAFETY: valid, configured port.
            let ret = unsafe { sys::rte_eth_promiscuous_enable(port_id) };
            if let Err(e) = check("rte_eth_promiscuous_enable", ret, Convention::NegErrno) {
                tracing::warn!("port {port_id} ({name}): {e}");
            }
        }
        let mut mac = sys::rte_ether_addr::default();
        // SAFETY: valid port; `mac` is a writable rte_ether_addr.
        let ret = unsafe { sys::rte_eth_macaddr_get(port_id, &mut mac) };
        check("rte_eth_macaddr_get", ret, Convention::NegErrno)?;

        // SAFETY: valid port with all its queues set up.
        let ret = unsafe { sys::rte_eth_dev_start(port_id) };
        check("rte_eth_dev_start", ret, Convention::NegErrno)?;
        tracing::info!(
            "DPDK port {port_id} ({name}, {driver}) started: {n} queue(s), RSS {}, {rx_desc}/{tx_desc} descriptors",
            if rss {
                "symmetric"
            } else if software_rss {
                "by the peer (software)"
            } else {
                "off"
            }
        );
        Ok(DpdkPort {
            inner: Arc::new(PortInner {
                port_id,
                name,
                driver,
                mac: mac.addr_bytes,
                rss,
                software_rss,
                tx_batch: opts.tx_batch,
                tx_retries: opts.tx_retries,
                taken: (0..n).map(|_| AtomicBool::new(false)).collect(),
                control: Mutex::new(()),
                pool: mempool.clone(),
                _eal: eal,
            }),
        })
    }

    /// The handle of queue `queue` (one per worker; a queue has one handle
    /// at a time, free again when it drops). TX buffers come from the
    /// port's mempool.
    pub fn queue(&self, queue: u16) -> Result<DpdkQueue, DpdkError> {
        let inner = &self.inner;
        let queues = self.queue_count();
        let flag = inner
            .taken
            .get(usize::from(queue))
            .ok_or(DpdkError::NoSuchQueue {
                port: inner.port_id,
                queue,
                queues,
            })?;
        if flag.swap(true, Ordering::AcqRel) {
            return Err(DpdkError::QueueTaken {
                port: inner.port_id,
                queue,
            });
        }
        Ok(DpdkQueue::new(Arc::clone(inner), queue))
    }

    pub fn port_id(&self) -> u16 {
        self.inner.port_id
    }

    /// Serialises a control-path call on the port (DPDK's are not
    /// thread-safe).
    pub(super) fn control(&self) -> MutexGuard<'_, ()> {
        self.inner.control()
    }

    /// The device name (`net_ring0`, `0000:03:00.0`…).
    pub fn name(&self) -> &str {
        &self.inner.name
    }

    /// The PMD's name (`net_ring`, `net_ixgbe`…).
    pub fn driver(&self) -> &str {
        &self.inner.driver
    }

    /// RX/TX queue pairs actually configured (may be fewer than asked).
    pub fn queue_count(&self) -> u16 {
        u16::try_from(self.inner.taken.len()).expect("configured from a u16")
    }

    /// Whether RSS (symmetric key) spreads flows over the queues.
    pub fn rss(&self) -> bool {
        self.inner.rss
    }

    /// Whether the link's peer spreads flows over the queues (software
    /// RSS: the symmetric key over an even table, see
    /// `lb_core::nat::rss::RssSteering::software`).
    pub fn software_rss(&self) -> bool {
        self.inner.software_rss
    }

    pub fn mac(&self) -> [u8; 6] {
        self.inner.mac
    }

    /// The link as the PMD reports it now (does not wait).
    pub fn link_status(&self) -> Result<LinkStatus, DpdkError> {
        let _guard = self.inner.control();
        let mut link = sys::rte_eth_link::default();
        // SAFETY: valid port; `link` is a writable rte_eth_link.
        let ret = unsafe { sys::rte_eth_link_get_nowait(self.inner.port_id, &mut link) };
        check("rte_eth_link_get_nowait", ret, Convention::NegErrno)?;
        let speed = link.link_speed;
        Ok(LinkStatus {
            up: u32::from(link.link_status()) == sys::RTE_ETH_LINK_UP,
            speed_mbps: (speed != 0 && speed != sys::RTE_ETH_SPEED_NUM_UNKNOWN).then_some(speed),
            full_duplex: u32::from(link.link_duplex()) == sys::RTE_ETH_LINK_FULL_DUPLEX,
            autoneg: link.link_autoneg() != 0,
        })
    }

    /// The port's MTU now (the largest IP packet it sends).
    pub fn mtu(&self) -> Result<u16, DpdkError> {
        let _guard = self.inner.control();
        let mut mtu = 0u16;
        // SAFETY: valid port; `mtu` is a writable u16.
        let ret = unsafe { sys::rte_eth_dev_get_mtu(self.inner.port_id, &mut mtu) };
        check("rte_eth_dev_get_mtu", ret, Convention::NegErrno)?;
        Ok(mtu)
    }

    /// The port-wide hardware counters.
    pub fn eth_stats(&self) -> Result<EthStats, DpdkError> {
        self.inner.eth_stats()
    }

    /// The pool RX buffers (and [`DpdkQueue`] TX copies) come from.
    pub fn mempool(&self) -> &Mempool {
        &self.inner.pool
    }
}

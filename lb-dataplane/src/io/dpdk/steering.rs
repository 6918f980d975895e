//! What a port's RSS does, read back from the PMD (key, hash types,
//! redirection table), as the [`RssSteering`] the pipeline uses to pick
//! FULLNAT local ports whose replies reach the session's worker.

use std::sync::Arc;

use lb_core::nat::rss::{RssSteering, MIN_KEY};

use super::error::{check, Convention};
use super::{symmetric_rss_key, sys, DpdkError, DpdkPort};

/// The hash types steering needs: TCP and UDP hashed with their ports,
/// both families.
const L4_HF: u64 = sys::LB_RTE_ETH_RSS_NONFRAG_IPV4_TCP
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV4_UDP
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV6_TCP
    | sys::LB_RTE_ETH_RSS_NONFRAG_IPV6_UDP;

/// Entries of one `rte_eth_rss_reta_entry64`.
const RETA_GROUP: usize = 64;

impl DpdkPort {
    /// How the port spreads frames over its queues, queue `q` being polled
    /// by worker `queue_workers[q]`: the key, hash types and redirection
    /// table the PMD runs with (a PMD that kept its own key is first given
    /// the symmetric one, and a table that leaves a queue without entries
    /// is first set to spread evenly, entry `i` to queue `i % queues`). `Ok(None)` when the port has no RSS, or
    /// does not hash TCP and UDP ports of both families (then no local
    /// port can steer a reply).
    /// With software RSS, the steering is [`RssSteering::software`]: what
    /// the peer is expected to do.
    pub fn rss_steering(&self, queue_workers: &[u16]) -> Result<Option<RssSteering>, DpdkError> {
        if self.software_rss() {
            return RssSteering::software(self.queue_count(), queue_workers)
                .map(Some)
                .map_err(|e| DpdkError::InvalidArgument(format!("port {}: {e}", self.port_id())));
        }
        if !self.rss() {
            return Ok(None);
        }
        let port_id = self.port_id();
        let _guard = self.control();
        let mut info = sys::rte_eth_dev_info::default();
        // SAFETY: valid port; `info` is a writable rte_eth_dev_info;
        // control calls are serialised by the lock.
        let ret = unsafe { sys::rte_eth_dev_info_get(port_id, &mut info) };
        check("rte_eth_dev_info_get", ret, Convention::NegErrno)?;

        let key_len = usize::from(info.hash_key_size).max(MIN_KEY);
        let (mut key, mut rss_hf) = query_hash(port_id, key_len)?;
        let symmetric = symmetric_rss_key(key.len());
        if key != symmetric {
            // The PMD kept its own key (net_null does): set the symmetric
            // one, so both directions of a flow share a queue.
            let mut wanted = symmetric;
            let mut conf = sys::rte_eth_rss_conf {
                rss_key: wanted.as_mut_ptr(),
                rss_key_len: u8::try_from(wanted.len()).unwrap_or(u8::MAX),
                rss_hf,
            };
            // SAFETY: valid, started port; `conf` points to `wanted`,
            // `rss_key_len` readable bytes the PMD copies.
            let ret = unsafe { sys::rte_eth_dev_rss_hash_update(port_id, &mut conf) };
            check("rte_eth_dev_rss_hash_update", ret, Convention::NegErrno)?;
            (key, rss_hf) = query_hash(port_id, key_len)?;
        }
        if rss_hf & L4_HF != L4_HF {
            tracing::warn!(
                "port {port_id} ({}): RSS does not hash TCP/UDP ports of both families \
                 (rss_hf {:#x}): FULLNAT replies are not steered",
                self.name(),
                rss_hf
            );
            return Ok(None);
        }

        let queues = self.queue_count();
        let mut reta = query_reta(port_id, info.reta_size)?;
        if (0..queues).any(|q| !reta.contains(&q)) {
            // Some queue gets no frames (net_null starts with every entry
            // on queue 0): spread the entries evenly, as most PMDs do.
            let even: Vec<u16> = (0..info.reta_size).map(|i| i % queues).collect();
            let mut groups = reta_groups(&even);
            // SAFETY: valid, started port; `groups` holds the entries and
            // masks of `reta_size` entries, which the PMD only reads.
            let ret = unsafe {
                sys::rte_eth_dev_rss_reta_update(port_id, groups.as_mut_ptr(), info.reta_size)
            };
            check("rte_eth_dev_rss_reta_update", ret, Convention::NegErrno)?;
            reta = query_reta(port_id, info.reta_size)?;
        }
        RssSteering::new(&key, &reta, queue_workers)
            .map(Some)
            .map_err(|e| DpdkError::InvalidArgument(format!("port {port_id}: {e}")))
    }
}

/// The port's RSS key (`key_len` bytes at most) and hash types (control
/// lock held by the caller).
fn query_hash(port_id: u16, key_len: usize) -> Result<(Vec<u8>, u64), DpdkError> {
    let mut key = vec![0u8; key_len];
    let mut conf = sys::rte_eth_rss_conf {
        rss_key: key.as_mut_ptr(),
        rss_key_len: u8::try_from(key.len()).unwrap_or(u8::MAX),
        rss_hf: 0,
    };
    // SAFETY: valid port; `conf` points to `key`, which holds
    // `rss_key_len` writable bytes, at least the PMD's key size.
    let ret = unsafe { sys::rte_eth_dev_rss_hash_conf_get(port_id, &mut conf) };
    check("rte_eth_dev_rss_hash_conf_get", ret, Convention::NegErrno)?;
    key.truncate(usize::from(conf.rss_key_len).max(MIN_KEY));
    Ok((key, conf.rss_hf))
}

/// `reta` as the PMD's groups of 64 entries, every entry selected.
fn reta_groups(reta: &[u16]) -> Vec<sys::rte_eth_rss_reta_entry64> {
    reta.chunks(RETA_GROUP)
        .map(|chunk| {
            let mut group = sys::rte_eth_rss_reta_entry64 {
                mask: if chunk.len() == RETA_GROUP {
                    u64::MAX
                } else {
                    (1u64 << chunk.len()) - 1
                },
                ..Default::default()
            };
            group.reta[..chunk.len()].copy_from_slice(chunk);
            group
        })
        .collect()
}

/// The port's redirection table of `reta_size` entries (control lock
/// held by the caller).
fn query_reta(port_id: u16, reta_size: u16) -> Result<Vec<u16>, DpdkError> {
    let mut groups = reta_groups(&vec![0; usize::from(reta_size)]);
    // SAFETY: valid port; `groups` holds reta_size / 64 (rounded up)
    // writable entries, all the PMD writes for `reta_size`.
    let ret = unsafe { sys::rte_eth_dev_rss_reta_query(port_id, groups.as_mut_ptr(), reta_size) };
    check("rte_eth_dev_rss_reta_query", ret, Convention::NegErrno)?;
    Ok(groups
        .iter()
        .flat_map(|g| g.reta)
        .take(usize::from(reta_size))
        .collect())
}

/// Each port's steering for `workers` workers, worker `w` polling queue
/// `w` of every port; `None` for a port without usable RSS (its replies
/// are handed over in software), with the reason logged.
pub fn steerings(ports: &[DpdkPort], workers: usize) -> Vec<Option<Arc<RssSteering>>> {
    let queue_workers: Vec<u16> = (0..u16::try_from(workers).unwrap_or(u16::MAX)).collect();
    ports
        .iter()
        .map(|port| {
            if workers < 2 {
                return None;
            }
            let polled = queue_workers
                .get(..usize::from(port.queue_count()))
                .unwrap_or(&queue_workers);
            match port.rss_steering(polled) {
                Ok(Some(s)) => {
                    tracing::info!(
                        "DPDK port {} ({}): FULLNAT local ports steer replies over a {}-entry RETA",
                        port.port_id(),
                        port.name(),
                        s.reta_len()
                    );
                    Some(Arc::new(s))
                }
                Ok(None) => None,
                Err(e) => {
                    tracing::warn!(
                        "DPDK port {} ({}): FULLNAT replies are not steered: {e}",
                        port.port_id(),
                        port.name()
                    );
                    None
                }
            }
        })
        .collect()
}

/*
 * What the Rust side binds: DPDK's public headers, plus the shim that
 * exports the static-inline fast path (and the thread-local rte_errno)
 * as real symbols. Compiled with the raw `pkg-config --cflags libdpdk`.
 */
#ifndef LB_DPDK_SHIM_H
#define LB_DPDK_SHIM_H

#include <stdint.h>

#include <rte_acl.h>
#include <rte_eal.h>
#include <rte_errno.h>
#include <rte_ethdev.h>
#include <rte_lcore.h>
#include <rte_mbuf.h>
#include <rte_mempool.h>
#include <rte_thash.h>

/*
 * Flag macros built from function-like macros (RTE_BIT64) are invisible to
 * bindgen; these constants carry their values across.
 */
static const uint64_t LB_RTE_ETH_RSS_IPV4 = RTE_ETH_RSS_IPV4;
static const uint64_t LB_RTE_ETH_RSS_NONFRAG_IPV4_TCP = RTE_ETH_RSS_NONFRAG_IPV4_TCP;
static const uint64_t LB_RTE_ETH_RSS_NONFRAG_IPV4_UDP = RTE_ETH_RSS_NONFRAG_IPV4_UDP;
static const uint64_t LB_RTE_ETH_RSS_IPV6 = RTE_ETH_RSS_IPV6;
static const uint64_t LB_RTE_ETH_RSS_NONFRAG_IPV6_TCP = RTE_ETH_RSS_NONFRAG_IPV6_TCP;
static const uint64_t LB_RTE_ETH_RSS_NONFRAG_IPV6_UDP = RTE_ETH_RSS_NONFRAG_IPV6_UDP;
static const uint64_t LB_RTE_ETH_RX_OFFLOAD_CHECKSUM = RTE_ETH_RX_OFFLOAD_CHECKSUM;
static const uint64_t LB_RTE_ETH_TX_OFFLOAD_MULTI_SEGS = RTE_ETH_TX_OFFLOAD_MULTI_SEGS;

/* Fast path (static inline in DPDK). */
uint16_t lb_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t lb_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

/* Mbufs (static inline in DPDK). */
struct rte_mbuf *lb_rte_pktmbuf_alloc(struct rte_mempool *mp);
int lb_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                              unsigned int count);
void lb_rte_pktmbuf_free(struct rte_mbuf *m);
char *lb_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *lb_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *lb_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int lb_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void *lb_rte_pktmbuf_mtod(const struct rte_mbuf *m);
uint16_t lb_rte_pktmbuf_data_len(const struct rte_mbuf *m);
uint32_t lb_rte_pktmbuf_pkt_len(const struct rte_mbuf *m);
void lb_rte_pktmbuf_set_data_len(struct rte_mbuf *m, uint16_t len);
void lb_rte_pktmbuf_set_pkt_len(struct rte_mbuf *m, uint32_t len);
uint16_t lb_rte_pktmbuf_nb_segs(const struct rte_mbuf *m);
uint16_t lb_rte_pktmbuf_headroom(const struct rte_mbuf *m);
uint16_t lb_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
uint64_t lb_rte_pktmbuf_ol_flags(const struct rte_mbuf *m);

/* Thread-locals and lcore helpers. */
int lb_rte_errno(void);
unsigned int lb_rte_lcore_id(void);

/* RSS: DPDK's software Toeplitz hash (static inline), over `input_len`
 * 32-bit words in CPU byte order, as a NIC hashes their big-endian bytes. */
uint32_t lb_rte_softrss(const uint32_t *input_tuple, uint32_t input_len,
                        const uint8_t *rss_key);

#endif

/*
 * Exports DPDK's static-inline functions (and the thread-local rte_errno,
 * which Rust cannot read as an extern static) as ordinary symbols. Each is
 * a one-line forward; the semantics are DPDK's.
 */
#include "shim.h"

uint16_t lb_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t lb_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                             struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *lb_rte_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

int lb_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                              unsigned int count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void lb_rte_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

char *lb_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_append(m, len);
}

char *lb_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_prepend(m, len);
}

char *lb_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_adj(m, len);
}

int lb_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_trim(m, len);
}

void *lb_rte_pktmbuf_mtod(const struct rte_mbuf *m)
{
	return rte_pktmbuf_mtod(m, void *);
}

uint16_t lb_rte_pktmbuf_data_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_data_len(m);
}

uint32_t lb_rte_pktmbuf_pkt_len(const struct rte_mbuf *m)
{
	return rte_pktmbuf_pkt_len(m);
}

void lb_rte_pktmbuf_set_data_len(struct rte_mbuf *m, uint16_t len)
{
	m->data_len = len;
}

void lb_rte_pktmbuf_set_pkt_len(struct rte_mbuf *m, uint32_t len)
{
	m->pkt_len = len;
}

uint16_t lb_rte_pktmbuf_nb_segs(const struct rte_mbuf *m)
{
	return m->nb_segs;
}

uint16_t lb_rte_pktmbuf_headroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_headroom(m);
}

uint16_t lb_rte_pktmbuf_tailroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_tailroom(m);
}

uint64_t lb_rte_pktmbuf_ol_flags(const struct rte_mbuf *m)
{
	return m->ol_flags;
}

int lb_rte_errno(void)
{
	return rte_errno;
}

unsigned int lb_rte_lcore_id(void)
{
	return rte_lcore_id();
}

uint32_t lb_rte_softrss(const uint32_t *input_tuple, uint32_t input_len,
                        const uint8_t *rss_key)
{
	return rte_softrss((uint32_t *)input_tuple, input_len, rss_key);
}

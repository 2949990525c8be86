/*
 * Out-of-line copies of DPDK's static inline functions and macros, so Rust
 * can call them. Each mtcp_X forwards to DPDK's X unchanged. Also the log
 * stream DPDK writes its messages to (mtcp_rte_log_to).
 */
#define _GNU_SOURCE /* fopencookie */
#include <stdio.h>
#include <sys/types.h>

#include <rte_log.h>

#include "wrapper.h"

uint16_t mtcp_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **rx_pkts, uint16_t nb_pkts)
{
	return rte_eth_rx_burst(port_id, queue_id, rx_pkts, nb_pkts);
}

uint16_t mtcp_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **tx_pkts, uint16_t nb_pkts)
{
	return rte_eth_tx_burst(port_id, queue_id, tx_pkts, nb_pkts);
}

struct rte_mbuf *mtcp_rte_pktmbuf_alloc(struct rte_mempool *mp)
{
	return rte_pktmbuf_alloc(mp);
}

int mtcp_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp,
                                struct rte_mbuf **mbufs, unsigned int count)
{
	return rte_pktmbuf_alloc_bulk(mp, mbufs, count);
}

void mtcp_rte_pktmbuf_free(struct rte_mbuf *m)
{
	rte_pktmbuf_free(m);
}

unsigned int mtcp_pktmbuf_recycle(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                                  unsigned int n, struct rte_mbuf **keep,
                                  unsigned int room)
{
	unsigned int kept = 0, freed = 0;

	for (unsigned int i = 0; i < n; i++) {
		struct rte_mbuf *m = mbufs[i];

		if (kept < room && m->pool == mp && RTE_MBUF_DIRECT(m) &&
		    m->next == NULL && m->nb_segs == 1 &&
		    rte_mbuf_refcnt_read(m) == 1) {
			rte_pktmbuf_reset(m);
			keep[kept++] = m;
		} else {
			mbufs[freed++] = m;
		}
	}
	if (freed > 0)
		rte_pktmbuf_free_bulk(mbufs, freed);
	return kept;
}





uint16_t mtcp_rte_pktmbuf_tailroom(const struct rte_mbuf *m)
{
	return rte_pktmbuf_tailroom(m);
}

char *mtcp_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_append(m, len);
}

char *mtcp_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_prepend(m, len);
}

char *mtcp_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_adj(m, len);
}

int mtcp_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len)
{
	return rte_pktmbuf_trim(m, len);
}

void mtcp_rte_pktmbuf_refcnt_update(struct rte_mbuf *m, int16_t v)
{
	rte_pktmbuf_refcnt_update(m, v);
}

uint16_t mtcp_rte_mbuf_refcnt_read(const struct rte_mbuf *m)
{
	return rte_mbuf_refcnt_read(m);
}

int mtcp_rte_errno(void)
{
	return rte_errno;
}

unsigned int mtcp_rte_lcore_id(void)
{
	return rte_lcore_id();
}

static mtcp_log_sink log_sink;

static ssize_t log_write(void *cookie, const char *buf, size_t size)
{
	(void)cookie;
	log_sink(buf, size);
	return (ssize_t)size;
}

int mtcp_rte_log_to(mtcp_log_sink sink)
{
	static FILE *stream;
	cookie_io_functions_t io = { .write = log_write };

	log_sink = sink;
	if (stream == NULL)
		stream = fopencookie(NULL, "w", io);
	if (stream == NULL)
		return -1;
	return rte_openlog_stream(stream);
}

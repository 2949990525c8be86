/*
 * Headers that dpdk-sys generates Rust bindings for, plus the prototypes of
 * the out-of-line wrappers (src/wrapper.c) around DPDK's static inline
 * functions and macros. The wrappers are named mtcp_<dpdk name>.
 */
#ifndef MTCP_DPDK_WRAPPER_H
#define MTCP_DPDK_WRAPPER_H

#include <stddef.h>
#include <stdint.h>

#include <rte_config.h>
#include <rte_version.h>
#include <rte_errno.h>
#include <rte_eal.h>
#include <rte_lcore.h>
#include <rte_mempool.h>
#include <rte_mbuf.h>
#include <rte_ether.h>
#include <rte_ethdev.h>
#include <rte_interrupts.h>
#include <rte_bus_vdev.h>

uint16_t mtcp_rte_eth_rx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **rx_pkts, uint16_t nb_pkts);
uint16_t mtcp_rte_eth_tx_burst(uint16_t port_id, uint16_t queue_id,
                               struct rte_mbuf **tx_pkts, uint16_t nb_pkts);

struct rte_mbuf *mtcp_rte_pktmbuf_alloc(struct rte_mempool *mp);
int mtcp_rte_pktmbuf_alloc_bulk(struct rte_mempool *mp,
                                struct rte_mbuf **mbufs, unsigned int count);
void mtcp_rte_pktmbuf_free(struct rte_mbuf *m);

uint16_t mtcp_rte_pktmbuf_tailroom(const struct rte_mbuf *m);
char *mtcp_rte_pktmbuf_append(struct rte_mbuf *m, uint16_t len);
char *mtcp_rte_pktmbuf_prepend(struct rte_mbuf *m, uint16_t len);
char *mtcp_rte_pktmbuf_adj(struct rte_mbuf *m, uint16_t len);
int mtcp_rte_pktmbuf_trim(struct rte_mbuf *m, uint16_t len);
void mtcp_rte_pktmbuf_refcnt_update(struct rte_mbuf *m, int16_t v);
uint16_t mtcp_rte_mbuf_refcnt_read(const struct rte_mbuf *m);

/*
 * Not a DPDK function: of the `n` mbufs in `mbufs` (all owned by the caller),
 * moves up to `room` that can serve as newly allocated ones (from `mp`, direct,
 * one segment, no other reference) to `keep`, reset as rte_pktmbuf_alloc
 * resets them, and frees the others with rte_pktmbuf_free_bulk. Returns how
 * many went to `keep`. (A received frame's mbuf becomes a frame to send
 * without going through the pool: a free and an allocation less.)
 */
unsigned int mtcp_pktmbuf_recycle(struct rte_mempool *mp, struct rte_mbuf **mbufs,
                                  unsigned int n, struct rte_mbuf **keep,
                                  unsigned int room);

int mtcp_rte_errno(void);
unsigned int mtcp_rte_lcore_id(void);

/*
 * DPDK's log stream (rte_openlog_stream) set to a stream whose every write
 * goes to `sink` (buf, len: not NUL-terminated), instead of the EAL's default
 * (stderr and syslog). rte_vlog flushes after each message, so a message
 * reaches the sink whole. Returns 0, or -1 if the stream cannot be made.
 */
typedef void (*mtcp_log_sink)(const char *buf, size_t len);
int mtcp_rte_log_to(mtcp_log_sink sink);

#endif

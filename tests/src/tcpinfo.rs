//! A kernel socket's TCP_INFO, and the one-line account of it the load tools print when a
//! connection stalls (what the kernel knows of the path when no data comes).

use std::mem::{size_of, zeroed};

use libc::{c_int, socklen_t};

/// getsockopt(TCP_INFO) on `fd`: its result, the structure, and the length the kernel wrote.
pub fn tcp_info_of(fd: c_int) -> (c_int, libc::tcp_info, socklen_t) {
    // SAFETY: an all-zero tcp_info is a valid value (integers only).
    let mut info: libc::tcp_info = unsafe { zeroed() };
    let mut len = size_of::<libc::tcp_info>() as socklen_t;
    // SAFETY: a tcp_info and its size.
    let r = unsafe {
        libc::getsockopt(
            fd,
            libc::IPPROTO_TCP,
            libc::TCP_INFO,
            (&mut info as *mut libc::tcp_info).cast(),
            &mut len,
        )
    };
    (r, info, len)
}

/// "TCP_INFO (0): state=1 retransmits=0 ..." for `fd`: retransmissions, probes, backoff,
/// unacknowledged and lost segments, RTT and RTO, the last data and ACK received and the last
/// data sent, the receive space, the congestion window, the bytes written but not sent yet and
/// the peer's window.
pub fn describe(fd: c_int) -> String {
    let (r, i, _) = tcp_info_of(fd);
    format!(
        "TCP_INFO ({r}): state={} retransmits={} probes={} backoff={} unacked={} lost={} \
         retrans={} total_retrans={} rtt={}us rto={}us last_data_recv={}ms last_ack_recv={}ms \
         last_data_sent={}ms rcv_space={} snd_cwnd={} notsent_bytes={} snd_wnd={}",
        i.tcpi_state,
        i.tcpi_retransmits,
        i.tcpi_probes,
        i.tcpi_backoff,
        i.tcpi_unacked,
        i.tcpi_lost,
        i.tcpi_retrans,
        i.tcpi_total_retrans,
        i.tcpi_rtt,
        i.tcpi_rto,
        i.tcpi_last_data_recv,
        i.tcpi_last_ack_recv,
        i.tcpi_last_data_sent,
        i.tcpi_rcv_space,
        i.tcpi_snd_cwnd,
        i.tcpi_notsent_bytes,
        i.tcpi_snd_wnd
    )
}

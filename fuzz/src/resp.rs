//! The `resp` target: the input through the Redis cache's RESP parsers (requests as Redis reads
//! them, replies as Redis writes them), then through a whole `RedisCache` whose connection to
//! Redis is up: the input is cut at each 0xff byte into pieces, the first byte of each piece
//! picks what it is (bytes Redis read from a client, bytes a client sent that the cache may
//! answer, bytes Redis wrote on the cache's connection, a moment of upkeep, bytes Redis
//! writes to the client). Checks that nothing
//! panics, that what a parser says it took is inside the input, and that the cache answers only
//! whole GET requests.

use mtcpshim::cache::redis::RedisCache;
use mtcpshim::cache::resp::{command, elements, reply, set_len, skim, split_inline, Parsed, KEPT};
use mtcpshim::cache::{ControlIo, Responder};

/// The cache's kernel side: connects, takes everything, receives the handshake's replies.
struct Io(Vec<u8>);

impl ControlIo for Io {
    fn connect(&mut self, _port: u16) -> Result<i32, i32> {
        Ok(3)
    }
    fn send(&mut self, _fd: i32, bytes: &[u8]) -> Result<usize, i32> {
        Ok(bytes.len())
    }
    fn recv(&mut self, _fd: i32, buf: &mut [u8]) -> Result<usize, i32> {
        if self.0.is_empty() {
            return Err(libc_eagain());
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0.drain(..n);
        Ok(n)
    }
    fn close(&mut self, _fd: i32) {}
    fn say(&mut self, _msg: &str) {}
}

fn libc_eagain() -> i32 {
    11
}

/// One input through the `resp` target.
pub fn resp(data: &[u8]) {
    parsers(data);
    let mut cache = RedisCache::new(1 << 20, false, 0);
    // HELLO, CLIENT SETNAME, the four CONFIG GETs, MODULE LIST (tracking goes on with the
    // first fill).
    let mut io = Io(b"%1\r\n$5\r\nproto\r\n:3\r\n+OK\r\n%0\r\n%0\r\n%0\r\n%0\r\n*0\r\n".to_vec());
    cache.upkeep(&mut io, 6379, 0);
    cache.upkeep(&mut io, 6379, 0);
    cache.watching(&mut io, Some(4), 0);
    assert!(cache.up(), "the handshake's replies bring the cache up");
    cache.opened(1, 0);
    let mut now = 1;
    for piece in data.split(|&b| b == 0xff) {
        let Some((&op, bytes)) = piece.split_first() else {
            continue;
        };
        now += i64::from(op >> 4);
        match op % 5 {
            0 => {
                cache.app_read(1, bytes, &|| now);
            }
            1 => {
                let mut out = Vec::new();
                let used = cache.answer(1, bytes, &mut out, 1 << 16, now);
                assert!(used <= bytes.len());
                let mut at = 0;
                let mut n = 0;
                while at < used {
                    let Parsed::Done(c) = command(&bytes[at..]) else {
                        panic!("answered bytes that are not whole requests");
                    };
                    assert!(c.is(&bytes[at..], b"GET") && c.argc == 2 && !c.inline);
                    at += c.len;
                    n += 1;
                }
                assert_eq!(at, used);
                assert!(n == 0 || !out.is_empty());
            }
            2 => cache.control_output(bytes, now),
            3 => {
                cache.loop_turn();
                cache.upkeep(&mut io, 6379, now);
            }
            _ => {
                // The application's output, through a connection that takes a few bytes a
                // call: what the cache sends is a rewritten INFO reply or the bytes as given.
                let cap = usize::from(op >> 4) + 1;
                let mut sent = Vec::new();
                let r = cache.app_write(1, bytes, &mut |b| {
                    let n = b.len().min(cap);
                    sent.extend_from_slice(&b[..n]);
                    Ok(n)
                });
                if let Some(Ok(n)) = r {
                    assert!(n <= bytes.len());
                }
                if r.is_none() {
                    assert!(
                        !cache.rewriting(),
                        "the only connection's output is not rewritten"
                    );
                }
            }
        }
    }
    let _ = cache.stats();
}

fn parsers(data: &[u8]) {
    let mut at = 0;
    while at < data.len() {
        match command(&data[at..]) {
            Parsed::Done(c) => {
                assert!(c.len > 0 && at + c.len <= data.len());
                let here = &data[at..];
                if let Some((len, (n0, n1), argc)) = skim(here) {
                    assert_eq!((len, argc), (c.len, c.argc), "skim agrees with command");
                    assert_eq!(Some(&here[n0..n1]), c.arg(here, 0));
                }
                if let Some(len) = set_len(here) {
                    assert!(len == c.len && c.argc == 3 && c.is(here, b"SET") && !c.inline);
                }
                for &(a, b) in &c.args[..c.argc.min(KEPT)] {
                    assert!(a <= b && b as usize <= c.len);
                }
                at += c.len;
            }
            Parsed::Quoted(n) => {
                assert!(n > 0 && at + n <= data.len());
                if let Some(args) = split_inline(&data[at..at + n]) {
                    assert!(args.iter().map(Vec::len).sum::<usize>() < n);
                }
                at += n;
            }
            Parsed::Partial | Parsed::Bad => break,
        }
    }
    let mut at = 0;
    while let Ok(Some((_, n))) = reply(&data[at..]) {
        assert!(n > 0 && at + n <= data.len());
        at += n;
    }
    if let Ok(Some(el)) = elements(data) {
        for (a, b) in el {
            assert!(a <= b && b <= data.len());
        }
    }
}

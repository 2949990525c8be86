//! INFO as Redis would show it without the cache.
//!
//! The cache changes some of Redis's own figures: the GETs it answers are not counted by Redis
//! (`keyspace_hits`, `cmdstat_get`, `total_commands_processed`, the bytes in and out), and its
//! connection to Redis is a client of Redis's (`connected_clients`, `tracking_clients`,
//! `total_connections_received`, the commands of its fills and TOUCHes). [`Shown`] holds what
//! the cache changed at one moment, [`rewrite`] turns INFO's text into what Redis would have
//! shown, and [`Rewriter`] finds INFO's reply in what the application writes to a connection
//! and puts the rewritten one in its place.
//!
//! Finding the reply: when Redis reads an INFO request, the cache knows how many requests of
//! the same connection Redis read before it in the same iteration of its event loop (Redis
//! replies to each request once, in order, and writes a connection's replies after its reads);
//! if Redis had nothing left to write to the connection when the iteration began, INFO's reply
//! is that many replies into what Redis writes next. [`Scan`] counts replies in the output
//! (RESP3 pushes are not replies). A reply found there that is not INFO's text (a bulk string
//! of `# Section` headers and `name:value` lines) means the count was wrong: it is left as
//! Redis wrote it, and so is everything after it.

use std::collections::VecDeque;

/// The commands the cache sends on its own connection, as INFO names them (`cmdstat_*`).
pub const OWN_COMMANDS: [&str; 8] = [
    "get",
    "pexpiretime",
    "touch",
    "hello",
    "client|setname",
    "client|tracking",
    "config|get",
    "module|list",
];

/// What the cache changed in Redis's figures, at one moment.
#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
pub struct Shown {
    /// GETs the cache answered with a value (Redis would have counted a keyspace hit) and
    /// with nil (a miss).
    pub answered: u64,
    pub answered_nil: u64,
    /// Bytes of the requests the cache answered, and of its replies.
    pub answered_in: u64,
    pub answered_out: u64,
    /// The cache's connection is one of Redis's clients now, and has tracking on.
    pub own_client: bool,
    pub own_tracking: bool,
    /// The cache's connections Redis accepted.
    pub own_connections: u64,
    /// Calls of [`OWN_COMMANDS`] Redis executed for the cache.
    pub own_calls: [u64; OWN_COMMANDS.len()],
    /// Keyspace hits and misses those calls made.
    pub own_hits: u64,
    pub own_misses: u64,
    /// Bytes Redis read from and wrote to the cache's connection.
    pub own_in: u64,
    pub own_out: u64,
    /// How much longer the rewritten INFO replies were than Redis's (Redis counts its own in
    /// its output bytes).
    pub rewritten_out: i64,
    /// Keys Redis tracks for the cache's connection (`tracking_total_items` counts them, and
    /// `tracking_total_keys` those no other client tracks).
    pub own_tracked: u64,
}

impl Shown {
    /// The figures Redis resets on CONFIG RESETSTAT reset; what describes the present (the
    /// cache's connection is a client, with tracking on) stays.
    pub fn reset_stats(&mut self) {
        *self = Shown {
            own_client: self.own_client,
            own_tracking: self.own_tracking,
            ..Shown::default()
        };
    }

    /// The change to the calls of command `name` (as `cmdstat_` names it).
    fn calls_delta(&self, name: &str) -> i128 {
        let own = OWN_COMMANDS
            .iter()
            .position(|&c| c == name)
            .map_or(0, |i| self.own_calls[i]);
        let answered = if name == "get" {
            self.answered + self.answered_nil
        } else {
            0
        };
        i128::from(answered) - i128::from(own)
    }
}

/// A reply of text `t`: a bulk string, or RESP3's verbatim string of format `txt`.
fn text_reply(verbatim: bool, t: &[u8]) -> Vec<u8> {
    let (kind, prefix): (char, &[u8]) = if verbatim { ('=', b"txt:") } else { ('$', b"") };
    let mut new = format!("{kind}{}\r\n", prefix.len() + t.len()).into_bytes();
    new.extend_from_slice(prefix);
    new.extend_from_slice(t);
    new.extend_from_slice(b"\r\n");
    new
}

/// CLIENT LIST's reply `text` without the line of client `id` (the cache's connection);
/// `None` if `text` is not one (every line `id=...`).
pub fn without_client(text: &[u8], id: u64) -> Option<Vec<u8>> {
    let own = format!("id={id} ");
    let mut out = Vec::with_capacity(text.len());
    for line in text.split_inclusive(|&b| b == b'\n') {
        if !line.starts_with(b"id=") || !line.ends_with(b"\n") {
            return None;
        }
        if !line.starts_with(own.as_bytes()) {
            out.extend_from_slice(line);
        }
    }
    Some(out)
}

/// Whether `text` is the text of an INFO reply: empty (no such section), or lines of
/// `# Section` headers, `name:value` fields and empty lines, each ended by CRLF.
pub fn looks_like_info(text: &[u8]) -> bool {
    if text.is_empty() {
        return true;
    }
    let Some(mut rest) = text.strip_suffix(b"\r\n") else {
        return false;
    };
    if !rest.starts_with(b"# ") {
        return false;
    }
    loop {
        let (line, next) = match rest.windows(2).position(|w| w == b"\r\n") {
            Some(p) => (&rest[..p], Some(&rest[p + 2..])),
            None => (rest, None),
        };
        let field = line.iter().position(|&b| b == b':').is_some_and(|c| c > 0);
        if line.contains(&b'\r')
            || line.contains(&b'\n')
            || !(line.is_empty() || line.starts_with(b"# ") || field)
        {
            return false;
        }
        match next {
            Some(n) => rest = n,
            None => return true,
        }
    }
}

/// INFO's text as Redis would have written it without the cache (`s`: what the cache changed
/// when Redis made it).
pub fn rewrite(text: &[u8], s: &Shown) -> Vec<u8> {
    let mut out = Vec::with_capacity(text.len() + 64);
    let body = text.strip_suffix(b"\r\n").unwrap_or(text);
    if body.is_empty() {
        return text.to_vec();
    }
    let mut section: &[u8] = b"";
    let mut get_seen = false;
    let lines: Vec<&[u8]> = body.split(|&b| b == b'\n').collect();
    fn field_of<'t>(raw: &&'t [u8]) -> Option<(&'t [u8], &'t [u8])> {
        let line: &'t [u8] = raw.strip_suffix(b"\r").unwrap_or(raw);
        let c = line.iter().position(|&b| b == b':')?;
        Some((&line[..c], &line[c + 1..]))
    }
    // Whether other clients' tracking counts in `tracking_total_items` (if not, no key is
    // tracked without the cache).
    let others_track = lines
        .iter()
        .filter_map(field_of)
        .find(|(k, _)| *k == b"tracking_total_items")
        .and_then(|(_, v)| std::str::from_utf8(v).ok()?.parse::<u64>().ok())
        .is_none_or(|items| items > s.own_tracked);
    let field_value =
        |k: &[u8], v: &[u8], get_seen: &mut bool| field_value(k, v, s, others_track, get_seen);
    // Commands all of whose calls were the cache's: their lines go, in every section.
    let gone: Vec<&[u8]> = lines
        .iter()
        .filter_map(field_of)
        .filter_map(|(k, v)| {
            let name = k.strip_prefix(b"cmdstat_")?;
            let left = field_value(k, v, &mut false)?;
            left.is_none().then_some(name)
        })
        .collect();
    for (i, raw) in lines.iter().enumerate() {
        let line = raw.strip_suffix(b"\r").unwrap_or(raw);
        if let Some(name) = line.strip_prefix(b"# ") {
            section = name;
        }
        let field = field_of(raw);
        let latency_gone = field.is_some_and(|(k, _)| {
            k.strip_prefix(b"latency_percentiles_usec_")
                .is_some_and(|name| gone.contains(&name))
        });
        let adjusted = if latency_gone {
            Some(None)
        } else {
            field.and_then(|(k, v)| field_value(k, v, &mut get_seen))
        };
        match adjusted {
            Some(Some(new)) => {
                out.extend_from_slice(new.as_bytes());
                out.extend_from_slice(b"\r\n");
            }
            // A command whose calls were all the cache's: Redis lists only commands called.
            Some(None) => {}
            None => {
                out.extend_from_slice(line);
                out.extend_from_slice(b"\r\n");
            }
        }
        // GETs the cache answered while Redis executed none (after a CONFIG RESETSTAT): the
        // line Redis would have had, at the end of its section.
        let section_ends = lines
            .get(i + 1)
            .is_none_or(|next| next.is_empty() || *next == b"\r");
        if section == b"Commandstats" && section_ends && !get_seen {
            get_seen = true;
            let calls = s.answered + s.answered_nil;
            if calls > 0 {
                out.extend_from_slice(
                    format!(
                        "cmdstat_get:calls={calls},usec=0,usec_per_call=0.00,rejected_calls=0,\
                         failed_calls=0\r\n"
                    )
                    .as_bytes(),
                );
            }
        }
    }
    out
}

/// The new text of field `key` (`Some(None)`: the line goes), or `None` if it stays as it is.
/// `others_track`: clients other than the cache have keys tracked.
fn field_value(
    key: &[u8],
    value: &[u8],
    s: &Shown,
    others_track: bool,
    get_seen: &mut bool,
) -> Option<Option<String>> {
    let key = std::str::from_utf8(key).ok()?;
    let value = std::str::from_utf8(value).ok()?;
    let n = |v: &str| v.parse::<i128>().ok();
    let b = |x: bool| i128::from(x);
    let delta = match key {
        "connected_clients" => -b(s.own_client),
        "tracking_clients" => -b(s.own_tracking),
        "total_connections_received" => -i128::from(s.own_connections),
        "total_commands_processed" => {
            i128::from(s.answered + s.answered_nil)
                - s.own_calls.iter().map(|&c| i128::from(c)).sum::<i128>()
        }
        "total_net_input_bytes" => i128::from(s.answered_in) - i128::from(s.own_in),
        "total_net_output_bytes" => {
            i128::from(s.answered_out) - i128::from(s.own_out) + i128::from(s.rewritten_out)
        }
        "keyspace_hits" => i128::from(s.answered) - i128::from(s.own_hits),
        "keyspace_misses" => i128::from(s.answered_nil) - i128::from(s.own_misses),
        "tracking_total_items" | "tracking_total_keys" if !others_track => {
            return Some(Some(format!("{key}:0")));
        }
        // Each key the cache reads is one item; a key another client tracks too stays one of
        // the keys (not known here: the figure is exact when no key is tracked by both).
        "tracking_total_items" => -i128::from(s.own_tracked),
        "tracking_total_keys" => {
            let keys = n(value)?;
            let min = i128::from(keys > 0);
            return Some(Some(format!(
                "{key}:{}",
                (keys - i128::from(s.own_tracked)).max(min)
            )));
        }
        _ => {
            let name = key.strip_prefix("cmdstat_")?;
            if name == "get" {
                *get_seen = true;
            }
            let d = s.calls_delta(name);
            if d == 0 {
                return None;
            }
            return Some(cmdstat(key, value, d));
        }
    };
    if delta == 0 {
        return None;
    }
    let v = (n(value)? + delta).max(0);
    Some(Some(format!("{key}:{v}")))
}

/// A `cmdstat_*` line with `delta` calls more (or fewer): its time scaled with the calls taken
/// away (the cache's own calls took their share of it), its time per call computed again.
/// `None`: no calls left, the line goes.
fn cmdstat(key: &str, value: &str, delta: i128) -> Option<String> {
    let mut fields: Vec<(&str, String)> = Vec::new();
    for kv in value.split(',') {
        let (k, v) = kv.split_once('=')?;
        fields.push((k, v.to_string()));
    }
    let get = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| *k == name)
            .and_then(|(_, v)| v.parse::<i128>().ok())
    };
    let (calls, usec) = (get("calls")?, get("usec")?);
    let new_calls = (calls + delta).max(0);
    let new_usec = if delta < 0 && calls > 0 {
        usec * new_calls / calls
    } else {
        usec
    };
    let others = get("rejected_calls").unwrap_or(0) + get("failed_calls").unwrap_or(0);
    if new_calls == 0 && others == 0 {
        return None;
    }
    let per = if new_calls > 0 {
        new_usec as f64 / new_calls as f64
    } else {
        0.0
    };
    for (k, v) in &mut fields {
        match *k {
            "calls" => *v = new_calls.to_string(),
            "usec" => *v = new_usec.to_string(),
            "usec_per_call" => *v = format!("{per:.2}"),
            _ => {}
        }
    }
    let joined: Vec<String> = fields.iter().map(|(k, v)| format!("{k}={v}")).collect();
    Some(format!("{key}:{}", joined.join(",")))
}

/// Counts the replies in a stream of RESP (2 or 3) written by Redis, fed in pieces.
#[derive(Debug, Clone, Default)]
pub struct Scan {
    /// Top-level replies completed (pushes and attributes are not replies).
    pub replies: u64,
    /// Elements left in each open aggregate, outermost first.
    open: Vec<u64>,
    /// Whether the top-level element being read counts as a reply.
    counts: bool,
    state: ScanState,
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
enum ScanState {
    /// At the start of an element.
    #[default]
    Start,
    /// In a line that ends the element (`+`, `-`, `:`, ...); `cr`: the last byte was CR.
    Line { cr: bool },
    /// In the number of a length (`$`, `*`, ...) of type `t`: its value so far.
    Len {
        t: u8,
        neg: bool,
        v: u64,
        digits: u8,
        cr: bool,
    },
    /// In a bulk string's bytes and CRLF: this many left.
    Bulk(u64),
}

/// Larger counts are not Redis's.
const MAX_LEN: u64 = 1 << 40;

impl Scan {
    /// Whether the scan is between two top-level elements.
    pub fn at_boundary(&self) -> bool {
        self.open.is_empty() && self.state == ScanState::Start
    }

    /// Reads `data` up to the start of reply number `stop` (when at a boundary with `stop`
    /// replies done and the next byte starts a reply, not a push). Returns how many bytes it
    /// read, or `None` if the stream is not RESP.
    pub fn feed(&mut self, data: &[u8], stop: u64) -> Option<usize> {
        let mut i = 0;
        while i < data.len() {
            let c = data[i];
            match self.state {
                ScanState::Start => {
                    if self.open.is_empty() {
                        if self.replies == stop && c != b'>' && c != b'|' {
                            return Some(i);
                        }
                        self.counts = c != b'>' && c != b'|';
                    }
                    self.state = match c {
                        b'+' | b'-' | b':' | b',' | b'#' | b'_' | b'(' => {
                            ScanState::Line { cr: false }
                        }
                        b'$' | b'!' | b'=' | b'*' | b'~' | b'>' | b'%' | b'|' => ScanState::Len {
                            t: c,
                            neg: false,
                            v: 0,
                            digits: 0,
                            cr: false,
                        },
                        _ => return None,
                    };
                    i += 1;
                }
                ScanState::Line { cr } => {
                    if cr {
                        if c != b'\n' {
                            return None;
                        }
                        i += 1;
                        self.state = ScanState::Start;
                        self.element_done();
                    } else {
                        match data[i..].iter().position(|&b| b == b'\r') {
                            Some(p) => {
                                i += p + 1;
                                self.state = ScanState::Line { cr: true };
                            }
                            None => i = data.len(),
                        }
                    }
                }
                ScanState::Len {
                    t,
                    neg,
                    v,
                    digits,
                    cr,
                } => {
                    i += 1;
                    if cr {
                        if c != b'\n' || digits == 0 {
                            return None;
                        }
                        self.length(t, neg, v)?;
                    } else if c == b'\r' {
                        self.state = ScanState::Len {
                            t,
                            neg,
                            v,
                            digits,
                            cr: true,
                        };
                    } else if c == b'-' && digits == 0 && !neg {
                        self.state = ScanState::Len {
                            t,
                            neg: true,
                            v,
                            digits,
                            cr,
                        };
                    } else if c.is_ascii_digit() && v < MAX_LEN {
                        self.state = ScanState::Len {
                            t,
                            neg,
                            v: v * 10 + u64::from(c - b'0'),
                            digits: digits + 1,
                            cr,
                        };
                    } else {
                        return None;
                    }
                }
                ScanState::Bulk(left) => {
                    let take = (left as usize).min(data.len() - i);
                    let left = left - take as u64;
                    // The CRLF after the bytes.
                    if left < 2 && take > 0 {
                        let end = i + take;
                        let crlf_from = end - (2 - left as usize).min(take);
                        for (j, &b) in data[crlf_from..end].iter().enumerate() {
                            let want = if left as usize + (end - crlf_from) - j == 2 {
                                b'\r'
                            } else {
                                b'\n'
                            };
                            if b != want {
                                return None;
                            }
                        }
                    }
                    i += take;
                    if left == 0 {
                        self.state = ScanState::Start;
                        self.element_done();
                    } else {
                        self.state = ScanState::Bulk(left);
                    }
                }
            }
        }
        Some(i)
    }

    /// A length line of type `t` is complete.
    fn length(&mut self, t: u8, neg: bool, v: u64) -> Option<()> {
        self.state = ScanState::Start;
        if neg {
            // Only RESP2's nulls: `$-1`, `*-1`.
            if v != 1 || !matches!(t, b'$' | b'*') {
                return None;
            }
            self.element_done();
            return Some(());
        }
        match t {
            b'$' | b'!' | b'=' => self.state = ScanState::Bulk(v + 2),
            _ => {
                let n = if matches!(t, b'%' | b'|') { v * 2 } else { v };
                if n == 0 {
                    self.element_done();
                } else if self.open.len() >= 64 {
                    return None;
                } else {
                    self.open.push(n);
                }
            }
        }
        Some(())
    }

    /// An element ended: it counts in its aggregate, or it is a top-level reply.
    fn element_done(&mut self) {
        while let Some(left) = self.open.last_mut() {
            *left -= 1;
            if *left > 0 {
                return;
            }
            self.open.pop();
        }
        if self.counts {
            self.replies += 1;
        }
    }
}

/// A reply to change, and how.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edit {
    /// INFO's: its figures without what the cache changed in them.
    Info(Shown),
    /// OBJECT IDLETIME's: at most this many seconds (the key was answered by the cache then).
    Idle(i64),
    /// An integer reply, less this (CLIENT KILL's count, which the cache's connection was in).
    Less(i64),
    /// CLIENT KILL's count, the cache's connection closed by Redis so many times when the
    /// request was read: [`Rewriter::resolve`] turns it into [`Edit::Less`] before the reply
    /// is written.
    Kill(u64),
    /// CLIENT LIST's: without the line of the cache's connection (its client id).
    Clients(u64),
}

/// Where a [`Rewriter`] stands in the output.
#[derive(Debug, Default)]
enum Phase {
    /// Passing bytes through, counting replies.
    #[default]
    Pass,
    /// Taking the reply that should be INFO's: its bytes so far (all consumed).
    Collect(Vec<u8>),
    /// Sending `new` in place of what was taken; `hold` bytes of the application's (the end of
    /// the reply) are consumed only once it is all sent, so that the application keeps
    /// output pending, and writes again, until then.
    Flush {
        new: Vec<u8>,
        sent: usize,
        hold: usize,
    },
}

/// The longest INFO text taken (INFO everything is tens of KiB).
const MAX_INFO: usize = 4 << 20;

/// Puts rewritten INFO replies in a connection's output (see the module's documentation).
#[derive(Debug, Default)]
pub struct Rewriter {
    /// Replies to rewrite: their number in the output since the scan began, and how.
    targets: VecDeque<(u64, Edit)>,
    scan: Scan,
    phase: Phase,
    /// The loop iteration the scan began in.
    pub epoch: u64,
    /// Bytes the rewritten replies added (or took away) since [`Rewriter::take_resized`].
    resized: i64,
}

impl Rewriter {
    /// Whether it has replies to rewrite (writes must go through [`Rewriter::write`]).
    pub fn active(&self) -> bool {
        !self.targets.is_empty() || !matches!(self.phase, Phase::Pass)
    }

    /// The reply to change (`edit`) is reply number `nth` of what the application writes
    /// from now on (if it is already looking for replies, from the point it began at, which
    /// must have been in loop iteration `epoch`). Returns whether it took it.
    pub fn expect(&mut self, nth: u64, edit: Edit, epoch: u64) -> bool {
        if !self.active() {
            self.scan = Scan::default();
            self.epoch = epoch;
        } else if self.epoch != epoch {
            return false;
        }
        self.targets.push_back((nth, edit));
        true
    }

    /// Turns edits that depend on what happened since the request was read into final ones.
    pub fn resolve(&mut self, f: impl Fn(&Edit) -> Option<Edit>) {
        for (_, e) in &mut self.targets {
            if let Some(new) = f(e) {
                *e = new;
            }
        }
    }

    /// How many bytes the replies rewritten since the last call added to the output.
    pub fn take_resized(&mut self) -> i64 {
        std::mem::take(&mut self.resized)
    }

    /// Gives up (what was taken is sent as it was).
    fn give_up(&mut self) {
        self.targets.clear();
    }

    /// The application writes `data`; `send` sends on the connection (the bytes it took, or
    /// an error: `Err(e)` is returned if nothing of `data` was taken). Returns how many bytes
    /// of `data` are taken.
    pub fn write<E>(
        &mut self,
        data: &[u8],
        send: &mut dyn FnMut(&[u8]) -> Result<usize, E>,
    ) -> Result<usize, E> {
        let mut done = 0;
        let fail = |done: usize, e: E| if done > 0 { Ok(done) } else { Err(e) };
        loop {
            match &mut self.phase {
                Phase::Pass => {
                    let rest = &data[done..];
                    if rest.is_empty() {
                        return Ok(done);
                    }
                    let Some(&(nth, _)) = self.targets.front() else {
                        // Nothing to look for: the rest as it is.
                        return match send(rest) {
                            Ok(n) => Ok(done + n),
                            Err(e) => fail(done, e),
                        };
                    };
                    let mut ahead = self.scan.clone();
                    let Some(upto) = ahead.feed(rest, nth) else {
                        self.give_up();
                        continue;
                    };
                    if upto > 0 {
                        let n = match send(&rest[..upto]) {
                            Ok(n) => n,
                            Err(e) => return fail(done, e),
                        };
                        if n == upto {
                            self.scan = ahead;
                        } else if self.scan.feed(&rest[..n], nth).is_none() {
                            self.give_up();
                        }
                        done += n;
                        if n < upto {
                            return Ok(done);
                        }
                    }
                    if done < data.len() && self.scan.replies == nth && self.scan.at_boundary() {
                        self.phase = Phase::Collect(Vec::new());
                    }
                }
                Phase::Collect(taken) => {
                    let rest = &data[done..];
                    if rest.is_empty() {
                        return Ok(done);
                    }
                    let first = taken.first().or(rest.first()).copied();
                    let int_edit = match self.targets.front() {
                        Some(&(_, Edit::Idle(cap))) => Some((cap, 0)),
                        Some(&(_, Edit::Less(k))) => Some((i64::MAX, k)),
                        _ => None,
                    };
                    if let Some((cap, less)) = int_edit {
                        // An integer: its line is taken but its last byte.
                        let line_end = rest.iter().position(|&b| b == b'\n');
                        if first != Some(b':')
                            || (line_end.is_none() && taken.len() + rest.len() > 24)
                        {
                            let mut new = std::mem::take(taken);
                            self.give_up();
                            if new.is_empty() {
                                self.phase = Phase::Pass;
                            } else {
                                new.push(rest[0]);
                                self.phase = Phase::Flush {
                                    new,
                                    sent: 0,
                                    hold: 1,
                                };
                            }
                            continue;
                        }
                        let Some(p) = line_end else {
                            taken.extend_from_slice(rest);
                            return Ok(data.len());
                        };
                        taken.extend_from_slice(&rest[..p]);
                        done += p;
                        let mut whole = std::mem::take(taken);
                        whole.push(b'\n');
                        let n = whole
                            .strip_suffix(b"\r\n")
                            .and_then(|l| std::str::from_utf8(l.get(1..)?).ok())
                            .and_then(|l| l.parse::<i64>().ok());
                        self.targets.pop_front();
                        let new = match n {
                            Some(n) => {
                                format!(":{}\r\n", n.min(cap) - less.min(n.max(0))).into_bytes()
                            }
                            None => {
                                self.give_up();
                                whole.clone()
                            }
                        };
                        self.resized += new.len() as i64 - whole.len() as i64;
                        self.scan.replies += 1;
                        self.phase = Phase::Flush {
                            new,
                            sent: 0,
                            hold: 1,
                        };
                        continue;
                    }
                    // The header, from what was taken and what is offered.
                    if !matches!(first, Some(b'$' | b'=')) {
                        // Not a bulk string: the count is wrong.
                        debug_assert!(taken.is_empty());
                        self.give_up();
                        self.phase = Phase::Pass;
                        continue;
                    }
                    let mut head = taken.clone();
                    head.extend_from_slice(&rest[..rest.len().min(24)]);
                    let Some(cr) = head.iter().position(|&b| b == b'\n') else {
                        if head.len() >= 24 {
                            // No header of Redis's is this long: not INFO's.
                            let mut new = std::mem::take(taken);
                            new.push(rest[0]);
                            self.give_up();
                            self.phase = Phase::Flush {
                                new,
                                sent: 0,
                                hold: 1,
                            };
                            continue;
                        }
                        // Header not whole yet: take what is offered (the reply goes on).
                        taken.extend_from_slice(rest);
                        return Ok(data.len());
                    };
                    // (A header that ends at once, "$\n", has no length: not INFO's.)
                    let len = head
                        .get(1..cr.saturating_sub(1))
                        .and_then(|l| std::str::from_utf8(l).ok())
                        .and_then(|l| l.parse::<i64>().ok());
                    let total = match len {
                        Some(l) if l >= 0 && (l as usize) <= MAX_INFO => cr + 1 + l as usize + 2,
                        _ => {
                            // A null or an outsized bulk string: not INFO's. Its header goes
                            // as it came, and the rest after it.
                            let from_rest = cr + 1 - taken.len();
                            let mut new = std::mem::take(taken);
                            new.extend_from_slice(&rest[..from_rest]);
                            self.give_up();
                            self.phase = Phase::Flush {
                                new,
                                sent: 0,
                                hold: from_rest,
                            };
                            continue;
                        }
                    };
                    let want = total - 1 - taken.len();
                    if rest.len() <= want {
                        taken.extend_from_slice(rest);
                        return Ok(data.len());
                    }
                    // The whole reply is here but its last byte, which is held.
                    taken.extend_from_slice(&rest[..want]);
                    done += want;
                    let mut whole = std::mem::take(taken);
                    whole.push(data[done]);
                    let text = &whole[cr + 1..whole.len() - 2];
                    let ok = whole.ends_with(b"\r\n") && {
                        let body = if whole[0] == b'=' {
                            text.strip_prefix(b"txt:")
                        } else {
                            Some(text)
                        };
                        body.is_some_and(looks_like_info)
                    };
                    let new = match (ok, self.targets.pop_front()) {
                        (_, Some((_, Edit::Clients(own)))) => {
                            // RESP3 makes it a verbatim string.
                            let verbatim = whole[0] == b'=';
                            let body = if verbatim {
                                text.strip_prefix(b"txt:")
                            } else {
                                Some(text)
                            };
                            match body.and_then(|b| without_client(b, own)) {
                                Some(t) => {
                                    let new = text_reply(verbatim, &t);
                                    self.resized += new.len() as i64 - whole.len() as i64;
                                    new
                                }
                                None => {
                                    self.give_up();
                                    whole
                                }
                            }
                        }
                        (true, Some((_, Edit::Info(shown)))) => {
                            let verbatim = whole[0] == b'=';
                            let body = if verbatim { &text[4..] } else { text };
                            let new = text_reply(verbatim, &rewrite(body, &shown));
                            self.resized += new.len() as i64 - whole.len() as i64;
                            new
                        }
                        _ => {
                            self.give_up();
                            whole
                        }
                    };
                    self.scan.replies += 1;
                    self.phase = Phase::Flush {
                        new,
                        sent: 0,
                        hold: 1,
                    };
                }
                Phase::Flush { new, sent, hold } => {
                    while *sent < new.len() {
                        match send(&new[*sent..]) {
                            Ok(0) => return Ok(done),
                            Ok(n) => *sent += n,
                            Err(e) => return fail(done, e),
                        }
                    }
                    let n = (*hold).min(data.len() - done);
                    *hold -= n;
                    done += n;
                    if *hold > 0 {
                        return Ok(done);
                    }
                    self.phase = Phase::Pass;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const INFO: &str = "# Clients\r\nconnected_clients:3\r\ntracking_clients:2\r\n\r\n\
        # Stats\r\ntotal_connections_received:10\r\ntotal_commands_processed:100\r\n\
        keyspace_hits:40\r\nkeyspace_misses:5\r\n\r\n# Commandstats\r\n\
        cmdstat_get:calls=50,usec=100,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_pexpiretime:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n\
        cmdstat_set:calls=30,usec=90,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n\r\n\
        # Latencystats\r\nlatency_percentiles_usec_get:p50=1.003\r\n\
        latency_percentiles_usec_pexpiretime:p50=1.003\r\n";

    fn shown() -> Shown {
        let mut s = Shown {
            answered: 1000,
            answered_nil: 7,
            own_client: true,
            own_tracking: true,
            own_connections: 1,
            own_hits: 9,
            own_misses: 1,
            ..Shown::default()
        };
        s.own_calls[0] = 10;
        s.own_calls[1] = 10;
        s
    }

    #[test]
    fn tracked_keys_without_the_caches() {
        let info = |items: u64, keys: u64| {
            format!(
                "# Stats\r\ntracking_total_keys:{keys}\r\ntracking_total_items:{items}\r\n\
                 tracking_total_prefixes:0\r\n"
            )
        };
        let own = |n: u64| Shown {
            own_tracked: n,
            ..Shown::default()
        };
        let out = |items, keys, s: &Shown| {
            String::from_utf8(rewrite(info(items, keys).as_bytes(), s)).unwrap()
        };
        // Only the cache tracks: none.
        assert_eq!(out(5, 5, &own(5)), info(0, 0));
        // Another client tracks 3 keys the cache does not.
        assert_eq!(out(8, 8, &own(5)), info(3, 3));
        // ... and 1 of them is one of the cache's 5 too: 2 keys shown, where Redis without
        // the cache would show 3 (which keys the others track is not known here).
        assert_eq!(out(8, 7, &own(5)), info(3, 2));
        // Two clients' keys, all the cache's too: still one key, at least.
        assert_eq!(out(7, 5, &own(5)), info(2, 1));
        // The cache tracks nothing: as Redis wrote it.
        assert_eq!(out(4, 3, &own(0)), info(4, 3));
    }

    #[test]
    fn info_without_the_cache() {
        assert!(looks_like_info(INFO.as_bytes()));
        let out = String::from_utf8(rewrite(INFO.as_bytes(), &shown())).unwrap();
        let want = INFO
            .replace("connected_clients:3", "connected_clients:2")
            .replace("tracking_clients:2", "tracking_clients:1")
            .replace("total_connections_received:10", "total_connections_received:9")
            .replace("total_commands_processed:100", "total_commands_processed:1087")
            .replace("keyspace_hits:40", "keyspace_hits:1031")
            .replace("keyspace_misses:5", "keyspace_misses:11")
            .replace(
                "calls=50,usec=100,usec_per_call=2.00",
                "calls=1047,usec=100,usec_per_call=0.10",
            )
            .replace(
                "cmdstat_pexpiretime:calls=10,usec=20,usec_per_call=2.00,rejected_calls=0,failed_calls=0\r\n",
                "",
            )
            .replace("latency_percentiles_usec_pexpiretime:p50=1.003\r\n", "");
        assert_eq!(out, want);
        // Nothing to change: the same text.
        assert_eq!(rewrite(INFO.as_bytes(), &Shown::default()), INFO.as_bytes());
    }

    #[test]
    fn gets_answered_after_a_resetstat_get_their_line() {
        let text = "# Commandstats\r\ncmdstat_set:calls=3,usec=9,usec_per_call=3.00,rejected_calls=0,failed_calls=0\r\n";
        let s = Shown {
            answered: 4,
            ..Shown::default()
        };
        let out = String::from_utf8(rewrite(text.as_bytes(), &s)).unwrap();
        assert_eq!(
            out,
            format!("{text}cmdstat_get:calls=4,usec=0,usec_per_call=0.00,rejected_calls=0,failed_calls=0\r\n")
        );
    }

    #[test]
    fn what_is_not_info_text() {
        for t in [
            "hello",
            "# Server\r\nno colon\r\n",
            "# Server\nx:1\n",
            "x:1\r\n",
            "# Server\r\nx:1",
        ] {
            assert!(!looks_like_info(t.as_bytes()), "{t:?}");
        }
        assert!(looks_like_info(b""));
        assert!(looks_like_info(b"# Keyspace\r\n"));
    }

    #[test]
    fn scan_counts_replies_across_pieces_and_skips_pushes() {
        let stream: &[u8] = b"+OK\r\n$3\r\nfoo\r\n>2\r\n$10\r\ninvalidate\r\n*1\r\n$1\r\nk\r\n*2\r\n:1\r\n%1\r\n+a\r\n$-1\r\n$-1\r\n-ERR x\r\n$0\r\n\r\n";
        // Every split of the stream in two gives the same count, and the scan stops at the
        // start of reply 5 (`$0`), after the push.
        let stop_at = stream.len() - 6;
        for cut in 0..stream.len() {
            let mut s = Scan::default();
            let a = s.feed(&stream[..cut], 5).unwrap();
            let b = if a == cut {
                s.feed(&stream[cut..], 5).unwrap() + cut
            } else {
                a
            };
            assert_eq!(b, stop_at, "cut at {cut}");
            assert_eq!(s.replies, 5);
            assert!(s.at_boundary());
        }
        let mut s = Scan::default();
        assert_eq!(s.feed(stream, u64::MAX), Some(stream.len()));
        assert_eq!(s.replies, 6);
        assert_eq!(Scan::default().feed(b"$3\r\nfooXX", 9), None);
        assert_eq!(Scan::default().feed(b"hello", 9), None);
    }

    /// A sink that takes at most `cap` bytes a call.
    struct Sink {
        out: Vec<u8>,
        cap: usize,
    }

    impl Sink {
        fn send(&mut self, b: &[u8]) -> Result<usize, &'static str> {
            if self.cap == 0 {
                return Err("full");
            }
            let n = b.len().min(self.cap);
            self.out.extend_from_slice(&b[..n]);
            Ok(n)
        }
    }

    /// Writes `data` as an application retrying short writes does, `piece` bytes offered a
    /// call and the sink taking `cap` a call.
    fn write_all(w: &mut Rewriter, data: &[u8], piece: usize, cap: usize) -> Vec<u8> {
        let mut sink = Sink {
            out: Vec::new(),
            cap,
        };
        let mut at = 0;
        let mut calls = 0;
        while at < data.len() {
            let end = at.saturating_add(piece).min(data.len());
            let n = w.write(&data[at..end], &mut |b| sink.send(b)).unwrap();
            assert!(n > 0 || end == at, "no progress at {at}");
            at += n;
            calls += 1;
            assert!(calls < 100_000);
        }
        assert!(!w.active());
        sink.out
    }

    fn bulk(t: &str) -> Vec<u8> {
        format!("${}\r\n{t}\r\n", t.len()).into_bytes()
    }

    /// A bulk header that ends at once ("$" and a newline, no length; found by the resp
    /// fuzz target): not an INFO reply, it goes as it came, in any pieces.
    #[test]
    fn a_bulk_header_without_a_length_goes_as_it_came() {
        for stream in [&b"$\n+OK\r\n"[..], b"$\r\n+OK\r\n", b"=\n+OK\r\n"] {
            for (piece, cap) in [(usize::MAX, usize::MAX), (1, 1), (2, 3)] {
                let mut w = Rewriter::default();
                assert!(w.expect(0, Edit::Info(shown()), 1));
                assert_eq!(write_all(&mut w, stream, piece, cap), stream);
            }
        }
    }

    #[test]
    fn info_replies_are_replaced_in_any_pieces() {
        let mut stream = b"+OK\r\n:5\r\n".to_vec();
        stream.extend_from_slice(&bulk(INFO));
        stream.extend_from_slice(b"$3\r\nbar\r\n");
        stream.extend_from_slice(&bulk(INFO));
        let new = String::from_utf8(rewrite(INFO.as_bytes(), &shown())).unwrap();
        let mut want = b"+OK\r\n:5\r\n".to_vec();
        want.extend_from_slice(&bulk(&new));
        want.extend_from_slice(b"$3\r\nbar\r\n");
        want.extend_from_slice(&bulk(INFO));
        for (piece, cap) in [
            (usize::MAX, usize::MAX),
            (7, usize::MAX),
            (usize::MAX, 5),
            (3, 11),
            (1, 1),
        ] {
            let mut w = Rewriter::default();
            assert!(w.expect(2, Edit::Info(shown()), 1));
            assert!(w.expect(4, Edit::Info(Shown::default()), 1));
            assert_eq!(
                write_all(&mut w, &stream, piece, cap),
                want,
                "pieces of {piece}, sink {cap}"
            );
        }
        // RESP3's verbatim string.
        let mut w = Rewriter::default();
        w.expect(0, Edit::Info(shown()), 1);
        let verbatim = |t: &str| format!("={}\r\ntxt:{t}\r\n", t.len() + 4).into_bytes();
        assert_eq!(write_all(&mut w, &verbatim(INFO), 10, 10), verbatim(&new));
    }

    #[test]
    fn client_list_loses_the_caches_line_in_any_pieces() {
        let line = |id: u32, name: &str| {
            format!("id={id} addr=127.0.0.1:5{id} laddr=127.0.0.1:6379 fd=8 name={name} age=1 cmd=client|list\n")
        };
        let all = format!("{}{}{}", line(3, ""), line(4, "mtcp-cache"), line(5, "app"));
        let without = format!("{}{}", line(3, ""), line(5, "app"));
        let mut stream = b":1\r\n".to_vec();
        stream.extend_from_slice(&bulk(&all));
        let mut want = b":1\r\n".to_vec();
        want.extend_from_slice(&bulk(&without));
        for (piece, cap) in [(usize::MAX, usize::MAX), (5, 7), (1, 1)] {
            let mut w = Rewriter::default();
            assert!(w.expect(1, Edit::Clients(4), 1));
            assert_eq!(
                write_all(&mut w, &stream, piece, cap),
                want,
                "pieces of {piece}, sink {cap}"
            );
            assert!(!w.active());
        }
        // RESP3's verbatim string.
        let verbatim = |t: &str| format!("={}\r\ntxt:{t}\r\n", t.len() + 4).into_bytes();
        let mut w = Rewriter::default();
        w.expect(0, Edit::Clients(4), 1);
        assert_eq!(write_all(&mut w, &verbatim(&all), 9, 4), verbatim(&without));
        // The cache's connection is known by its id: not a user's client of the same name,
        // nor one whose id begins with the same digits.
        for other in [line(6, "mtcp-cache"), line(40, "")] {
            assert_eq!(
                without_client(other.as_bytes(), 4).as_deref(),
                Some(other.as_bytes())
            );
        }
        // A reply that is not CLIENT LIST's is left.
        let mut w = Rewriter::default();
        w.expect(0, Edit::Clients(4), 1);
        assert_eq!(
            write_all(&mut w, b"$5\r\nhello\r\n", 2, 3),
            b"$5\r\nhello\r\n"
        );
    }

    #[test]
    fn a_reply_that_is_not_info_is_left_as_it_is() {
        for other in [
            &b"$5\r\nhello\r\n:1\r\n"[..],
            b"*1\r\n$1\r\nx\r\n",
            b"$-1\r\n+OK\r\n",
            b"$-1\r\n",
        ] {
            for (piece, cap) in [(usize::MAX, usize::MAX), (2, 3), (1, 1)] {
                let mut w = Rewriter::default();
                w.expect(0, Edit::Info(shown()), 1);
                assert_eq!(write_all(&mut w, other, piece, cap), other, "{other:?}");
            }
        }
        // A full sink: the reply is taken but its last byte, which waits for the sink.
        let mut w = Rewriter::default();
        w.expect(0, Edit::Info(shown()), 1);
        let mut sink = Sink {
            out: Vec::new(),
            cap: 0,
        };
        let info = bulk(INFO);
        let n = info.len() - 1;
        assert_eq!(w.write(&info, &mut |b| sink.send(b)), Ok(n));
        assert_eq!(w.write(&info[n..], &mut |b| sink.send(b)), Err("full"));
        sink.cap = 100;
        assert_eq!(w.write(&info[n..], &mut |b| sink.send(b)), Ok(1));
        let new = String::from_utf8(rewrite(INFO.as_bytes(), &shown())).unwrap();
        assert_eq!(sink.out, bulk(&new));
        assert!(!w.active());
    }

    #[test]
    fn idle_times_are_capped_in_any_pieces() {
        let stream = b"+OK\r\n:17\r\n:3\r\n$-1\r\n";
        for (piece, cap) in [(usize::MAX, usize::MAX), (1, 1), (3, 2)] {
            let mut w = Rewriter::default();
            assert!(w.expect(1, Edit::Idle(5), 1));
            assert!(w.expect(2, Edit::Idle(5), 1));
            assert_eq!(
                write_all(&mut w, stream, piece, cap),
                b"+OK\r\n:5\r\n:3\r\n$-1\r\n"
            );
            assert_eq!(w.take_resized(), -1);
            // A count less one; never below 0.
            let mut w = Rewriter::default();
            assert!(w.expect(1, Edit::Less(1), 1));
            assert!(w.expect(2, Edit::Less(7), 1));
            assert_eq!(
                write_all(&mut w, stream, piece, cap),
                b"+OK\r\n:16\r\n:0\r\n$-1\r\n"
            );
            // Not an integer (the key is gone): as written.
            let mut w = Rewriter::default();
            assert!(w.expect(3, Edit::Idle(5), 1));
            assert_eq!(write_all(&mut w, stream, piece, cap), stream);
        }
    }

    #[test]
    fn a_later_iteration_does_not_add_to_a_scan_under_way() {
        let mut w = Rewriter::default();
        assert!(w.expect(3, Edit::Info(shown()), 1));
        assert!(!w.expect(0, Edit::Info(shown()), 2));
        assert!(w.expect(5, Edit::Info(shown()), 1));
    }
}

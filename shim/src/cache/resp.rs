//! RESP, as far as the cache reads it: requests as Redis parses them (multibulk arrays of bulk
//! strings, and inline commands), and RESP3 replies on the cache's own connection.
//!
//! Request parsing follows Redis 7's `processMultibulkBuffer` / `processInlineBuffer` on
//! well-formed input; on anything Redis would treat differently or reject (a bad length, a
//! bulk not followed by CRLF, a NUL in an inline line), the answer is [`Parsed::Bad`] and the
//! caller stops interpreting that stream. An inline line with quotes is
//! [`Parsed::Quoted`]: [`split_inline`] splits it as Redis's `sdssplitargs` does.

/// Bytes that are not RESP as Redis writes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// How many leading arguments a parsed command keeps (name, key, and two more).
pub const KEPT: usize = 4;
/// Redis's limit on the number of arguments of a multibulk request.
const MAX_MULTIBULK: i64 = 1024 * 1024;
/// Redis's default `proto-max-bulk-len`.
const MAX_BULK: i64 = 512 * 1024 * 1024;
/// Redis's limit on an inline request's line (`PROTO_INLINE_MAX_SIZE`).
const MAX_INLINE: usize = 64 * 1024;

/// One complete request at the front of a buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Cmd {
    /// Its bytes in the buffer.
    pub len: usize,
    /// How many arguments it has (name included); 0 for an empty request, which Redis skips.
    pub argc: usize,
    /// The first [`KEPT`] arguments, as ranges of the buffer.
    pub args: [(u32, u32); KEPT],
    /// An inline request (a line of text), not a multibulk array.
    pub inline: bool,
}

impl Cmd {
    /// Argument `i` (0: the name) if kept.
    pub fn arg<'b>(&self, buf: &'b [u8], i: usize) -> Option<&'b [u8]> {
        if i >= self.argc.min(KEPT) {
            return None;
        }
        let (a, b) = self.args[i];
        buf.get(a as usize..b as usize)
    }

    /// Whether the name is `name` (ASCII, upper case), as Redis compares names.
    pub fn is(&self, buf: &[u8], name: &[u8]) -> bool {
        self.arg(buf, 0)
            .is_some_and(|n| n.eq_ignore_ascii_case(name))
    }

    /// Whether argument `i` is `word`, ignoring ASCII case.
    pub fn arg_is(&self, buf: &[u8], i: usize, word: &[u8]) -> bool {
        self.arg(buf, i)
            .is_some_and(|a| a.eq_ignore_ascii_case(word))
    }
}

/// What the front of a buffer holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Parsed {
    Done(Cmd),
    /// A request that is not complete yet.
    Partial,
    /// An inline request of this many bytes whose line has quotes (see [`split_inline`]).
    Quoted(usize),
    /// Bytes the cache does not interpret the way Redis would.
    Bad,
}

/// A decimal integer as Redis's `string2ll` takes it (no sign but '-', no leading zeros but
/// "0", no spaces).
fn int(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s.split_first() {
        Some((b'-', rest)) => (true, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 || (digits.len() > 1 && digits[0] == b'0') {
        return None;
    }
    let mut v: i64 = 0;
    for &d in digits {
        if !d.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(d - b'0'))?;
    }
    if neg {
        if v == 0 {
            return None;
        }
        v = -v;
    }
    Some(v)
}

/// The line starting at `at` (up to its CR, which must be followed by LF): `(line, next)`.
/// `Ok(None)`: no CR yet.
fn line(buf: &[u8], at: usize) -> Result<Option<(&[u8], usize)>, Malformed> {
    let rest = buf.get(at..).unwrap_or_default();
    let Some(cr) = rest.iter().position(|&b| b == b'\r') else {
        return if rest.len() > MAX_INLINE {
            Err(Malformed)
        } else {
            Ok(None)
        };
    };
    match rest.get(cr + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((&rest[..cr], at + cr + 2))),
        Some(_) => Err(Malformed),
    }
}

/// The request at the front of `buf`.
pub fn command(buf: &[u8]) -> Parsed {
    match get_request(buf).or_else(|| whole_multibulk(buf)) {
        Some(c) => Parsed::Done(c),
        None => general(buf),
    }
}

/// The request at the front of `buf`, by the general parsers alone.
fn general(buf: &[u8]) -> Parsed {
    match buf.first() {
        None => Parsed::Partial,
        Some(b'*') => multibulk(buf).unwrap_or(Parsed::Bad),
        Some(_) => inline(buf),
    }
}

/// Whether `name` is GET in any case (one comparison: setting bit 5 turns exactly G, E and T
/// into g, e and t, and nothing else into them).
#[inline]
pub fn is_get(name: &[u8]) -> bool {
    match name {
        [a, b, c] => [a | 0x20, b | 0x20, c | 0x20] == *b"get",
        _ => false,
    }
}

/// The common case on its own: a whole `*2 $3 GET $n key` at the front of `buf` (the general
/// parser gives the same answer, at several times the cost).
#[inline]
fn get_request(buf: &[u8]) -> Option<Cmd> {
    let (len, key) = get_key(buf)?;
    let mut args = [(0, 0); KEPT];
    args[0] = (8, 11);
    args[1] = (key.start as u32, key.end as u32);
    Some(Cmd {
        len,
        argc: 2,
        args,
        inline: false,
    })
}

/// A whole `*2 $3 GET $n key` at the front of `buf` (GET in any case, a key length of 1 to 9
/// digits without a leading zero): `(its length, its key's range)`. `None` for anything else,
/// which [`command`] parses (also a GET it does not take).
#[inline]
pub fn get_key(buf: &[u8]) -> Option<(usize, std::ops::Range<usize>)> {
    const HEAD: &[u8; 14] = b"*2\r\n$3\r\nGET\r\n$";
    let head = buf.get(..HEAD.len())?;
    if head[..8] != HEAD[..8] || !is_get(&head[8..11]) || head[11..] != HEAD[11..] {
        return None;
    }
    // The key's length: 1 to 9 digits (longer keys take the general path), no leading zero.
    let mut at = HEAD.len();
    let mut len = 0usize;
    while let Some(&d) = buf.get(at).filter(|d| d.is_ascii_digit()) {
        if at - HEAD.len() == 9 || (len == 0 && at > HEAD.len()) {
            return None;
        }
        len = len * 10 + usize::from(d - b'0');
        at += 1;
    }
    if at == HEAD.len() || buf.get(at..at + 2)? != b"\r\n" {
        return None;
    }
    let key = at + 2;
    let end = key + len;
    if buf.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((end + 2, key..end))
}

/// A number of 1 to 9 digits (no leading zero) after the type byte at `at`, then CRLF:
/// `(value, where the next line starts)`; `None` for anything else, also an incomplete line.
#[inline(never)]
fn small_number(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let mut i = at + 1;
    let mut v = 0usize;
    while let Some(&d) = buf.get(i).filter(|d| d.is_ascii_digit()) {
        if i - at > 9 || (i > at + 1 && v == 0) {
            return None;
        }
        v = v * 10 + usize::from(d - b'0');
        i += 1;
    }
    if i == at + 1 || buf.get(i..i + 2)? != b"\r\n" {
        return None;
    }
    Some((v, i + 2))
}

/// A whole multibulk request at the front of `buf`, skimmed: `(its length, its name's range,
/// its argument count)`. For requests whose arguments nobody looks at (most of a writer's):
/// cheaper than [`command`], and `None` for anything but the common case (numbers of 1 to 9
/// digits without a leading zero, the request complete), which [`command`] then parses.
#[inline(always)]
pub fn skim(buf: &[u8]) -> Option<(usize, (usize, usize), usize)> {
    // A digit's value, or more than 9.
    let digit = |b: u8| usize::from(b.wrapping_sub(b'0'));
    let (argc, mut at) = match buf.get(..4)? {
        // `*N\r\n` with one digit, the most common count.
        &[b'*', d, b'\r', b'\n'] if (1..=9).contains(&digit(d)) => (digit(d), 4),
        _ => {
            let (n, at) = small_number(buf, 0)?;
            (buf[0] == b'*' && n > 0 && n as i64 <= MAX_MULTIBULK).then_some((n, at))?
        }
    };
    let mut name = (0, 0);
    for i in 0..argc {
        let (data, end) = bulk(buf, at)?;
        if i == 0 {
            name = (data, end - 2);
        }
        at = end;
    }
    Some((at, name, argc))
}

/// A whole bulk string whose `$` is at `at`, its length of 1 to 9 digits without a leading
/// zero: `(where its data starts, where the next line starts)`. One or two digits are looked
/// at in place.
#[inline(always)]
fn bulk(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    // A digit's value, or more than 9.
    let digit = |b: u8| usize::from(b.wrapping_sub(b'0'));
    let head: &[u8; 5] = buf.get(at..at + 5)?.try_into().ok()?;
    let (d, e) = (digit(head[1]), digit(head[2]));
    let (len, data) = if head[0] != b'$' {
        return None;
    } else if d <= 9 && head[2] == b'\r' && head[3] == b'\n' {
        (d, at + 4)
    } else if (1..=9).contains(&d) && e <= 9 && head[3] == b'\r' && head[4] == b'\n' {
        (d * 10 + e, at + 5)
    } else {
        bulk_length(buf, at)?
    };
    let end = data + len;
    if buf.get(end..end + 2)? != b"\r\n" {
        return None;
    }
    Some((data, end + 2))
}

/// A bulk's length line at `at` (`small_number`), within Redis's limit on a bulk
/// (`proto-max-bulk-len`, [`MAX_BULK`]): Redis refuses a longer one, which the general parser
/// says is [`Parsed::Bad`].
fn bulk_length(buf: &[u8], at: usize) -> Option<(usize, usize)> {
    let (len, data) = small_number(buf, at)?;
    (len as i64 <= MAX_BULK).then_some((len, data))
}

/// A whole `SET key value` (SET in any case, no option) at the front of `buf`, its lengths of
/// 1 to 9 digits without a leading zero: its length. A writer's most common request, skimmed
/// without looking at its name twice ([`skim`] gives the same length for it).
#[inline(always)]
pub fn set_len(buf: &[u8]) -> Option<usize> {
    let head: &[u8; 13] = buf.get(..13)?.try_into().ok()?;
    let a = u64::from_le_bytes(head[..8].try_into().ok()?);
    let b = u32::from_le_bytes(head[8..12].try_into().ok()?);
    // Bit 5 set turns exactly S, E and T into s, e and t (as in [`is_get`]).
    if a != u64::from_le_bytes(*b"*3\r\n$3\r\n")
        || b | 0x0020_2020 != u32::from_le_bytes(*b"set\r")
        || head[12] != b'\n'
    {
        return None;
    }
    let (_, at) = bulk(buf, 13)?;
    bulk(buf, at).map(|(_, end)| end)
}

/// A whole multibulk request with small numbers at the front of `buf`, in one tight pass (the
/// general parser, [`multibulk`], gives the same answer for it; anything else, also an
/// incomplete request, is left to that parser).
#[inline]
fn whole_multibulk(buf: &[u8]) -> Option<Cmd> {
    if buf.first() != Some(&b'*') {
        return None;
    }
    let (n, mut at) = small_number(buf, 0)?;
    if n == 0 || n as i64 > MAX_MULTIBULK {
        return None;
    }
    let mut cmd = Cmd {
        len: 0,
        argc: n,
        args: [(0, 0); KEPT],
        inline: false,
    };
    for i in 0..n {
        if buf.get(at) != Some(&b'$') {
            return None;
        }
        let (len, data) = bulk_length(buf, at)?;
        let end = data + len;
        if buf.get(end..end + 2)? != b"\r\n" {
            return None;
        }
        if i < KEPT {
            cmd.args[i] = (u32::try_from(data).ok()?, u32::try_from(end).ok()?);
        }
        at = end + 2;
    }
    cmd.len = at;
    Some(cmd)
}

/// The number on the line starting at `at`, after its type byte, read as [`int`] reads it, in
/// one pass: `(value, where the next line starts)`. `Ok(None)`: the line is not complete.
/// (Junk before the line's end is malformed at once, where Redis waits for the CR to say so.)
#[inline]
fn number_line(buf: &[u8], at: usize) -> Result<Option<(i64, usize)>, Malformed> {
    let mut i = at + 1;
    let neg = buf.get(i) == Some(&b'-');
    if neg {
        i += 1;
    }
    let start = i;
    let mut v: i64 = 0;
    loop {
        match buf.get(i) {
            None => return Ok(None),
            Some(b'\r') => break,
            Some(&d) if d.is_ascii_digit() && i - start < 19 => {
                v = v
                    .checked_mul(10)
                    .and_then(|v| v.checked_add(i64::from(d - b'0')))
                    .ok_or(Malformed)?;
                i += 1;
            }
            Some(_) => return Err(Malformed),
        }
    }
    let digits = i - start;
    if digits == 0 || (digits > 1 && buf[start] == b'0') || (neg && v == 0) {
        return Err(Malformed);
    }
    match buf.get(i + 1) {
        None => Ok(None),
        Some(b'\n') => Ok(Some((if neg { -v } else { v }, i + 2))),
        Some(_) => Err(Malformed),
    }
}

fn multibulk(buf: &[u8]) -> Result<Parsed, Malformed> {
    let Some((n, mut at)) = number_line(buf, 0)? else {
        return Ok(Parsed::Partial);
    };
    if n > MAX_MULTIBULK {
        return Err(Malformed);
    }
    let mut cmd = Cmd {
        len: 0,
        argc: n.max(0) as usize,
        args: [(0, 0); KEPT],
        inline: false,
    };
    for i in 0..cmd.argc {
        match buf.get(at) {
            None => return Ok(Parsed::Partial),
            Some(b'$') => {}
            Some(_) => return Err(Malformed),
        }
        let Some((len, data)) = number_line(buf, at)? else {
            return Ok(Parsed::Partial);
        };
        if !(0..=MAX_BULK).contains(&len) {
            return Err(Malformed);
        }
        let end = data + len as usize;
        if buf.len() < end + 2 {
            return Ok(Parsed::Partial);
        }
        if &buf[end..end + 2] != b"\r\n" {
            return Err(Malformed);
        }
        if i < KEPT {
            cmd.args[i] = (
                u32::try_from(data).map_err(|_| Malformed)?,
                u32::try_from(end).map_err(|_| Malformed)?,
            );
        }
        at = end + 2;
    }
    cmd.len = at;
    Ok(Parsed::Done(cmd))
}

fn inline(buf: &[u8]) -> Parsed {
    let Some(nl) = buf.iter().position(|&b| b == b'\n') else {
        return if buf.len() > MAX_INLINE {
            Parsed::Bad
        } else {
            Parsed::Partial
        };
    };
    let text = &buf[..nl];
    let text = text.strip_suffix(b"\r").unwrap_or(text);
    if text.contains(&0) {
        // Redis looks for the line's end with strchr(): it never sees this line whole.
        return Parsed::Bad;
    }
    if text.iter().any(|&b| b == b'"' || b == b'\'' || b == b'\r') {
        return Parsed::Quoted(nl + 1);
    }
    let mut cmd = Cmd {
        len: nl + 1,
        argc: 0,
        args: [(0, 0); KEPT],
        inline: true,
    };
    let mut i = 0;
    while i < text.len() {
        while i < text.len() && text[i].is_ascii_whitespace() {
            i += 1;
        }
        if i == text.len() {
            break;
        }
        let start = i;
        while i < text.len() && !text[i].is_ascii_whitespace() {
            i += 1;
        }
        if cmd.argc < KEPT {
            cmd.args[cmd.argc] = (start as u32, i as u32);
        }
        cmd.argc += 1;
    }
    Parsed::Done(cmd)
}

/// The arguments of inline request `line` (its bytes, the line feed and a carriage return
/// before it included) as Redis's `sdssplitargs` splits them: words separated by white space,
/// double quotes with C escapes (`\\n`, `\\r`, `\\t`, `\\b`, `\\a`, `\\xHH`; another escaped
/// character stands for itself), single quotes with `\\'`. `None` where Redis answers
/// "unbalanced quotes" and closes the connection: an unterminated quote, or a closing quote
/// followed by something other than white space.
pub fn split_inline(line: &[u8]) -> Option<Vec<Vec<u8>>> {
    let line = line.strip_suffix(b"\n").unwrap_or(line);
    let line = line.strip_suffix(b"\r").unwrap_or(line);
    // sdssplitargs sees a C string: it ends at the first NUL.
    let end = line.iter().position(|&b| b == 0).unwrap_or(line.len());
    let p = &line[..end];
    let at = |i: usize| p.get(i).copied().unwrap_or(0);
    // A closing quote at `i` must be followed by white space or by the end (or it is an
    // unterminated quote: the end of the line, where `at` gives 0).
    let closes = |i: usize| i + 1 >= p.len() || matches!(p[i + 1], b' ' | b'\t'..=b'\r');
    let mut args = Vec::new();
    let mut i = 0;
    loop {
        while i < p.len() && matches!(p[i], b' ' | b'\t' | b'\n' | 0x0b | 0x0c | b'\r') {
            i += 1;
        }
        if i == p.len() {
            return Some(args);
        }
        let mut cur = Vec::new();
        let (mut dq, mut sq) = (false, false);
        loop {
            let c = at(i);
            if dq {
                if c == b'\\'
                    && at(i + 1) == b'x'
                    && hex(at(i + 2)).is_some()
                    && hex(at(i + 3)).is_some()
                {
                    cur.push(hex(at(i + 2))? * 16 + hex(at(i + 3))?);
                    i += 3;
                } else if c == b'\\' && at(i + 1) != 0 {
                    i += 1;
                    cur.push(match at(i) {
                        b'n' => b'\n',
                        b'r' => b'\r',
                        b't' => b'\t',
                        b'b' => 0x08,
                        b'a' => 0x07,
                        o => o,
                    });
                } else if c == b'"' || c == 0 {
                    if c == 0 || !closes(i) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else if sq {
                if c == b'\\' && at(i + 1) == b'\'' {
                    cur.push(b'\'');
                    i += 1;
                } else if c == b'\'' || c == 0 {
                    if c == 0 || !closes(i) {
                        return None;
                    }
                    i += 1;
                    break;
                } else {
                    cur.push(c);
                }
            } else {
                match c {
                    b' ' | b'\n' | b'\r' | b'\t' | 0 => break,
                    b'"' => dq = true,
                    b'\'' => sq = true,
                    o => cur.push(o),
                }
            }
            i += 1;
        }
        args.push(cur);
    }
}

fn hex(c: u8) -> Option<u8> {
    (c as char).to_digit(16).map(|d| d as u8)
}

/// The top of one RESP3 reply, as the cache needs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Reply<'b> {
    /// `+...`
    Simple(&'b [u8]),
    /// `-...` or a blob error.
    Error(&'b [u8]),
    Int(i64),
    /// A bulk string (or verbatim string).
    Bulk(&'b [u8]),
    /// `_`, or RESP2's null bulk and null array.
    Null,
    /// A push: its kind (the first element, a string) and the reply as a whole.
    Push(&'b [u8]),
    /// Anything else (arrays, maps, sets, numbers of other kinds).
    Other,
}

/// Nesting deeper than this is refused (Redis's replies to our requests are shallow).
const MAX_DEPTH: usize = 16;

/// The reply at the front of `buf` and its length; `Ok(None)`: not complete yet.
pub fn reply(buf: &[u8]) -> Result<Option<(Reply<'_>, usize)>, Malformed> {
    let Some(end) = skip(buf, 0, 0)? else {
        return Ok(None);
    };
    let Some((head, next)) = line(buf, 0)? else {
        return Ok(None);
    };
    let body = &head[1..];
    let r = match head[0] {
        b'+' => Reply::Simple(body),
        b'-' => Reply::Error(body),
        b':' => Reply::Int(int(body).ok_or(Malformed)?),
        b'_' => Reply::Null,
        b'$' | b'=' | b'!' => {
            let n = int(body).ok_or(Malformed)?;
            if n < 0 {
                Reply::Null
            } else if head[0] == b'!' {
                Reply::Error(&buf[next..next + n as usize])
            } else {
                Reply::Bulk(&buf[next..next + n as usize])
            }
        }
        b'*' if int(body) == Some(-1) => Reply::Null,
        b'>' => match reply(&buf[next..])? {
            Some((Reply::Bulk(kind) | Reply::Simple(kind), _)) => Reply::Push(kind),
            _ => Reply::Push(b""),
        },
        _ => Reply::Other,
    };
    Ok(Some((r, end)))
}

/// The elements of the aggregate reply at the front of `buf` (`*`, `>`, `~`), each as a whole
/// reply: `(start, end)` ranges. `Err`: not an aggregate, or malformed; `Ok(None)`: incomplete.
pub fn elements(buf: &[u8]) -> Result<Option<Vec<(usize, usize)>>, Malformed> {
    let Some((head, mut at)) = line(buf, 0)? else {
        return Ok(None);
    };
    let (b'*' | b'>' | b'~', count) = head.split_first().ok_or(Malformed)? else {
        return Err(Malformed);
    };
    let n = int(count).ok_or(Malformed)?;
    let mut v = Vec::with_capacity(n.clamp(0, 64) as usize);
    for _ in 0..n.max(0) {
        let Some(end) = skip(buf, at, 1)? else {
            return Ok(None);
        };
        v.push((at, end));
        at = end;
    }
    Ok(Some(v))
}

/// The end of the reply starting at `at`. `Ok(None)`: not complete yet.
fn skip(buf: &[u8], at: usize, depth: usize) -> Result<Option<usize>, Malformed> {
    if depth > MAX_DEPTH {
        return Err(Malformed);
    }
    let Some((head, next)) = line(buf, at)? else {
        return Ok(None);
    };
    let Some((&kind, body)) = head.split_first() else {
        return Err(Malformed);
    };
    match kind {
        b'+' | b'-' | b':' | b'_' | b',' | b'#' | b'(' => Ok(Some(next)),
        b'$' | b'=' | b'!' => {
            let n = int(body).ok_or(Malformed)?;
            if n < 0 {
                return Ok(Some(next));
            }
            let end = next.checked_add(n as usize).ok_or(Malformed)?;
            match buf.get(end..end + 2) {
                None => Ok(None),
                Some(b"\r\n") => Ok(Some(end + 2)),
                Some(_) => Err(Malformed),
            }
        }
        b'*' | b'~' | b'>' | b'%' | b'|' => {
            let n = int(body).ok_or(Malformed)?;
            if n > MAX_MULTIBULK {
                return Err(Malformed);
            }
            let items = if matches!(kind, b'%' | b'|') {
                n * 2
            } else {
                n
            };
            let mut p = next;
            for _ in 0..items.max(0) {
                match skip(buf, p, depth + 1)? {
                    Some(e) => p = e,
                    None => return Ok(None),
                }
            }
            if kind == b'|' {
                // An attribute comes before the reply it describes.
                return skip(buf, p, depth + 1);
            }
            Ok(Some(p))
        }
        _ => Err(Malformed),
    }
}

/// Appends `args` as a multibulk request.
pub fn encode(out: &mut Vec<u8>, args: &[&[u8]]) {
    out.push(b'*');
    out.extend_from_slice(args.len().to_string().as_bytes());
    out.extend_from_slice(b"\r\n");
    for a in args {
        out.push(b'$');
        out.extend_from_slice(a.len().to_string().as_bytes());
        out.extend_from_slice(b"\r\n");
        out.extend_from_slice(a);
        out.extend_from_slice(b"\r\n");
    }
}

/// Redis's RESP2 reply to a GET that found `value` (`None`: no such key).
pub fn get_reply(value: Option<&[u8]>) -> Vec<u8> {
    match value {
        None => b"$-1\r\n".to_vec(),
        Some(v) => {
            let mut out = Vec::with_capacity(v.len() + 16);
            out.push(b'$');
            out.extend_from_slice(v.len().to_string().as_bytes());
            out.extend_from_slice(b"\r\n");
            out.extend_from_slice(v);
            out.extend_from_slice(b"\r\n");
            out
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_get_is_a_case_blind_comparison() {
        for a in 0..=255u8 {
            for b in [b'e', b'E', b'x', 0x45 ^ 0x80] {
                for c in [b't', b'T', 0x54 | 0x80, b'4'] {
                    let n = [a, b, c];
                    assert_eq!(is_get(&n), n.eq_ignore_ascii_case(b"GET"), "{n:?}");
                }
            }
        }
        assert!(!is_get(b"GETX") && !is_get(b"GE"));
    }

    fn done(buf: &[u8]) -> Cmd {
        match command(buf) {
            Parsed::Done(c) => c,
            p => panic!("{p:?} for {buf:?}"),
        }
    }

    #[test]
    fn multibulk_requests() {
        let b = b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n*1\r\n$4\r\nPING\r\n";
        let c = done(b);
        assert_eq!((c.len, c.argc), (22, 2));
        assert!(c.is(b, b"get"));
        assert_eq!(c.arg(b, 1), Some(&b"foo"[..]));
        assert_eq!(c.arg(b, 2), None);
        let rest = &b[c.len..];
        assert!(done(rest).is(rest, b"PING"));
        for cut in 0..22 {
            assert_eq!(command(&b[..cut]), Parsed::Partial, "cut at {cut}");
        }
        // Binary keys, an empty argument, more arguments than are kept.
        let b = b"*6\r\n$3\r\nSET\r\n$2\r\n\r\n\r\n$0\r\n\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n";
        let c = done(b);
        assert_eq!((c.argc, c.len), (6, b.len()));
        assert_eq!(c.arg(b, 1), Some(&b"\r\n"[..]));
        assert_eq!(c.arg(b, 2), Some(&b""[..]));
        assert_eq!(c.arg(b, 4), None);
    }

    /// A fast path answers as the general parser does, for every prefix of every case; and
    /// takes the cases `taken` names.
    fn agrees(cases: &[&[u8]], fast: fn(&[u8]) -> Option<Cmd>, taken: &[usize]) {
        for b in cases {
            for cut in 0..=b.len() {
                let buf = &b[..cut];
                if let Some(c) = fast(buf) {
                    assert_eq!(Parsed::Done(c), general(buf), "{buf:?}");
                }
                assert_eq!(command(buf), general(buf), "{buf:?}");
            }
        }
        for &i in taken {
            assert!(fast(cases[i]).is_some(), "{:?}", cases[i]);
        }
    }

    #[test]
    fn the_get_fast_path_agrees_with_the_parser() {
        let cases: [&[u8]; 7] = [
            b"*2\r\n$3\r\nGET\r\n$3\r\nfoo\r\n",
            b"*2\r\n$3\r\nget\r\n$0\r\n\r\n",
            b"*2\r\n$3\r\nGeT\r\n$12\r\nkey:00000001\r\n*1\r\n",
            b"*2\r\n$3\r\nGET\r\n$03\r\nfoo\r\n",
            b"*2\r\n$3\r\nGET\r\n$3\r\nfooxx",
            b"*2\r\n$3\r\nGET\r\n$1234567890\r\n",
            b"*2\r\n$3\r\nSET\r\n$3\r\nfoo\r\n",
        ];
        agrees(&cases, get_request, &[0, 1, 2]);
    }

    #[test]
    fn the_multibulk_fast_path_agrees_with_the_parser() {
        let cases: [&[u8]; 6] = [
            b"*3\r\n$3\r\nSET\r\n$3\r\nfoo\r\n$0\r\n\r\n",
            b"*1\r\n$4\r\nPING\r\n*1\r\n",
            b"*2\r\n$3\r\nSET\r\n$03\r\nfoo\r\n",
            b"*02\r\n$3\r\nSET\r\n",
            b"*6\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n",
            b"*1\r\n$10000000000\r\n",
        ];
        agrees(&cases, whole_multibulk, &[0, 1, 4]);
    }

    #[test]
    fn empty_multibulk_requests_are_skipped_as_redis_skips_them() {
        assert_eq!(done(b"*0\r\n").argc, 0);
        assert_eq!(done(b"*-1\r\n").len, 5);
    }

    /// A bulk longer than Redis's limit is not taken by the fast parsers (the general one
    /// says it is bad, as Redis refuses it).
    #[test]
    fn bulk_lengths_stop_at_redis_limit() {
        assert_eq!(bulk_length(b"$536870912\r\n", 0), Some((536_870_912, 12)));
        assert_eq!(bulk_length(b"$536870913\r\n", 0), None);
        assert_eq!(command(b"*1\r\n$536870913\r\n"), Parsed::Bad);
    }

    #[test]
    fn what_redis_would_parse_differently_is_bad() {
        for b in [
            &b"*1\r\n$3\r\nGETxx"[..],
            b"*1\r\n:3\r\n",
            b"*x\r\n",
            b"*01\r\n",
            b"*1\rx",
            b"*1\r\n$-1\r\n",
            b"*2000000\r\n",
            b"SET a\0b\r\n",
        ] {
            assert_eq!(command(b), Parsed::Bad, "{b:?}");
        }
    }

    #[test]
    fn inline_requests() {
        let b = b"get  foo\r\nPING\n";
        let c = done(b);
        assert!(c.inline && c.is(b, b"GET"));
        assert_eq!((c.argc, c.len), (2, 10));
        assert_eq!(c.arg(b, 1), Some(&b"foo"[..]));
        assert_eq!(done(&b[10..]).len, 5);
        assert_eq!(done(b"\r\n").argc, 0);
        assert_eq!(command(b"GET foo"), Parsed::Partial);
    }

    /// Skimming gives the length, name and argument count that parsing gives, and declines
    /// what is not a whole request of the common shape.
    #[test]
    fn skim_agrees_with_command() {
        for b in [
            &b"*3\r\n$3\r\nSET\r\n$16\r\nkey:__rand_int__\r\n$3\r\nxxx\r\n"[..],
            b"*1\r\n$4\r\nPING\r\n*1",
            b"*12\r\n$1\r\na\r\n$1\r\nb\r\n$1\r\nc\r\n$1\r\nd\r\n$1\r\ne\r\n$1\r\nf\r\n\
              $1\r\ng\r\n$1\r\nh\r\n$1\r\ni\r\n$1\r\nj\r\n$1\r\nk\r\n$0\r\n\r\n",
            b"*2\r\n$3\r\nGET\r\n$100\r\naaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa\r\n",
        ] {
            let c = done(b);
            let (len, (n0, n1), argc) = skim(b).expect("skimmed");
            assert_eq!((len, argc), (c.len, c.argc), "{b:?}");
            assert_eq!(&b[n0..n1], c.arg(b, 0).unwrap());
            assert_eq!(set_len(b), c.is(b, b"SET").then_some(c.len), "{b:?}");
        }
        // Every length of one to three digits, the request ending where its last bulk does.
        for n in 0..=1000 {
            let mut b = format!("*3\r\n$3\r\nset\r\n$1\r\nk\r\n${n}\r\n").into_bytes();
            b.extend(std::iter::repeat_n(b'v', n));
            b.extend_from_slice(b"\r\n");
            let c = done(&b);
            assert_eq!(skim(&b).map(|(len, _, argc)| (len, argc)), Some((c.len, 3)));
            assert_eq!(set_len(&b), Some(c.len));
            assert_eq!(set_len(&b[..b.len() - 1]), None);
        }
        for b in [
            &b"*3\r\n$3\r\nset\r\n$1\r\nk\r\n$10\r\n0123456789\r\n"[..],
            b"*3\r\n$3\r\nsEt\r\n$1\r\nk\r\n$0\r\n\r\n*1",
        ] {
            assert_eq!(set_len(b), Some(done(b).len), "{b:?}");
        }
        for b in [
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n"[..],
            b"*0\r\n",
            b"*01\r\n$1\r\na\r\n",
            b"*1\r\n$01\r\na\r\n",
            b"*1\r\n$-1\r\n",
            b"*1\r\n$1\r\nab\r\n",
            b"GET k\r\n",
            b"*1\r\n$1",
        ] {
            assert_eq!(skim(b), None, "{b:?}");
        }
        for b in [
            &b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\n"[..],
            b"*3\r\n$3\r\nSEX\r\n$1\r\nk\r\n$1\r\nv\r\n",
            b"*3\r\n$3\r\nS\xc5T\r\n$1\r\nk\r\n$1\r\nv\r\n",
            b"*4\r\n$3\r\nSET\r\n$1\r\nk\r\n$1\r\nv\r\n$2\r\nNX\r\n",
            b"*3\r\n$3\r\nSET\r\n$1\r\nk\r\n$01\r\nv\r\n",
        ] {
            assert_eq!(set_len(b), None, "{b:?}");
        }
    }

    /// Inline lines with quotes, split as Redis's sdssplitargs splits them (the expected
    /// arguments are what redis-server 7.0 executes for the same line).
    #[test]
    fn quoted_inline_requests() {
        let line = b"SET \"a b\" 'c\\'d' \"\\x41\\n\\q\"\r\nPING\r\n";
        let Parsed::Quoted(n) = command(line) else {
            panic!("{:?}", command(line));
        };
        assert_eq!(&line[n..], b"PING\r\n");
        let args = split_inline(&line[..n]).expect("balanced");
        let want: [&[u8]; 4] = [b"SET", b"a b", b"c'd", b"A\nq"];
        assert_eq!(args, want.map(|a| a.to_vec()));
        // Quotes inside a word join what follows them; white space is any of isspace()'s.
        let args = split_inline(b"swap\"db\"\x0b0 \t1\n").expect("balanced");
        assert_eq!(args, [&b"swapdb"[..], b"0", b"1"].map(|a| a.to_vec()));
        assert_eq!(split_inline(b"\"\"\r\n"), Some(vec![vec![]]));
        for bad in [
            &b"SET \"a\r\n"[..],
            b"SET 'a\n",
            b"SET \"a\"b\n",
            b"GET 'a'b\n",
        ] {
            assert_eq!(split_inline(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn replies() {
        assert_eq!(reply(b"+OK\r\n"), Ok(Some((Reply::Simple(b"OK"), 5))));
        assert_eq!(
            reply(b"$3\r\nbar\r\nxx"),
            Ok(Some((Reply::Bulk(b"bar"), 9)))
        );
        assert_eq!(reply(b"_\r\n"), Ok(Some((Reply::Null, 3))));
        assert_eq!(reply(b"$-1\r\n"), Ok(Some((Reply::Null, 5))));
        assert_eq!(reply(b":-2\r\n"), Ok(Some((Reply::Int(-2), 5))));
        assert_eq!(reply(b"$3\r\nba"), Ok(None));
        let push = b">2\r\n$10\r\ninvalidate\r\n*2\r\n$1\r\na\r\n$2\r\nbc\r\n";
        assert_eq!(
            reply(push),
            Ok(Some((Reply::Push(b"invalidate"), push.len())))
        );
        let el = elements(push).unwrap().unwrap();
        assert_eq!(el.len(), 2);
        let keys = elements(&push[el[1].0..el[1].1]).unwrap().unwrap();
        assert_eq!(keys.len(), 2);
        let hello = b"%2\r\n$6\r\nserver\r\n$5\r\nredis\r\n$5\r\nproto\r\n:3\r\n";
        assert_eq!(reply(hello), Ok(Some((Reply::Other, hello.len()))));
        assert_eq!(
            reply(b"|1\r\n+a\r\n+b\r\n:1\r\n").map(|r| r.map(|x| x.1)),
            Ok(Some(16))
        );
        assert!(reply(b"?\r\n").is_err());
        // An empty line (found by fuzzing: `elements` indexed its first byte).
        assert_eq!(elements(b"\r\n:-1\r\n"), Err(Malformed));
        assert!(reply(b"\r\n").is_err());
        assert!(reply(b"$3\r\nbarxx").is_err());
    }

    #[test]
    fn encoding() {
        let mut out = Vec::new();
        encode(&mut out, &[b"GET", b"k"]);
        assert_eq!(out, b"*2\r\n$3\r\nGET\r\n$1\r\nk\r\n");
        assert_eq!(get_reply(Some(b"v")), b"$1\r\nv\r\n");
        assert_eq!(get_reply(None), b"$-1\r\n");
    }
}

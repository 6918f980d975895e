//! Bounds shared by the control socket and the metrics server: a cap on
//! the clients served at once, and requests read against a deadline and a
//! size limit, so that an idle, slow or oversized client costs one bounded
//! thread for a bounded time and never holds up the others.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// At most `max` clients served at a time.
#[derive(Debug)]
pub struct Slots {
    used: AtomicUsize,
    max: usize,
}

/// One client's place among the [`Slots`]; given back on drop.
#[derive(Debug)]
pub struct Slot(Arc<Slots>);

impl Slots {
    pub fn new(max: usize) -> Arc<Slots> {
        Arc::new(Slots {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// A place for one more client, or `None` when all are taken.
    pub fn take(self: &Arc<Self>) -> Option<Slot> {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| Slot(self.clone()))
    }

    /// How many places are taken.
    pub fn in_use(&self) -> usize {
        self.used.load(Ordering::Acquire)
    }
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.0.used.fetch_sub(1, Ordering::AcqRel);
    }
}

/// A stream whose reads and writes can time out (Unix and TCP streams).
pub trait Timed: Read + Write {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()>;
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()>;
}

impl Timed for UnixStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        UnixStream::set_write_timeout(self, t)
    }
}

impl Timed for std::net::TcpStream {
    fn set_read_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_read_timeout(self, t)
    }
    fn set_write_timeout(&self, t: Option<Duration>) -> io::Result<()> {
        std::net::TcpStream::set_write_timeout(self, t)
    }
}

/// Why a request could not be read.
#[derive(Debug, PartialEq, Eq)]
pub enum ReadError {
    /// More than the limit arrived without the request's end.
    TooLong,
    /// The deadline passed first.
    TimedOut,
    /// The client closed its side first, after sending these bytes.
    Closed(Vec<u8>),
    /// Any other I/O error.
    Io(io::ErrorKind),
}

/// Reads from `s` until `end(buf)` finds the request's end (the length of
/// the request) or `max` bytes have arrived without it; the whole request
/// must arrive before `deadline`, however the client paces its bytes.
pub fn read_request<S: Timed>(
    s: &mut S,
    deadline: Instant,
    max: usize,
    end: impl Fn(&[u8]) -> Option<usize>,
) -> Result<Vec<u8>, ReadError> {
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(ReadError::TimedOut);
        }
        s.set_read_timeout(Some(left))
            .map_err(|e| ReadError::Io(e.kind()))?;
        // Never more than one byte past the limit.
        let want = chunk.len().min(max + 1 - buf.len());
        match s.read(&mut chunk[..want]) {
            Ok(0) => return Err(ReadError::Closed(buf)),
            Ok(n) => {
                let from = buf.len();
                buf.extend_from_slice(&chunk[..n]);
                // Only the new bytes (and a few before them) can hold the end.
                if let Some(len) = end(&buf[from.saturating_sub(3)..]) {
                    let len = from.saturating_sub(3) + len;
                    if len > max {
                        return Err(ReadError::TooLong);
                    }
                    buf.truncate(len);
                    return Ok(buf);
                }
                if buf.len() > max {
                    return Err(ReadError::TooLong);
                }
            }
            Err(e)
                if matches!(
                    e.kind(),
                    io::ErrorKind::WouldBlock | io::ErrorKind::TimedOut
                ) =>
            {
                return Err(ReadError::TimedOut)
            }
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(ReadError::Io(e.kind())),
        }
    }
}

/// Writes all of `data` before `deadline`, however slowly the client
/// takes it.
pub fn write_by<S: Timed>(s: &mut S, data: &[u8], deadline: Instant) -> io::Result<()> {
    let mut at = 0;
    while at < data.len() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(io::ErrorKind::TimedOut.into());
        }
        s.set_write_timeout(Some(left))?;
        match s.write(&data[at..]) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => at += n,
            Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

/// Before closing a connection whose client may still be sending (a
/// refusal, a request too long): stops writing, then reads and drops what
/// comes for at most `wait` and `max` bytes. Closing with unread input
/// would reset the connection, and the client could lose the reply.
pub fn linger<S: Timed>(s: &mut S, wait: Duration, max: usize) {
    let deadline = Instant::now() + wait;
    let mut chunk = [0u8; 4096];
    let mut read = 0;
    while read < max {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() || s.set_read_timeout(Some(left)).is_err() {
            return;
        }
        match s.read(&mut chunk) {
            Ok(0) | Err(_) => return,
            Ok(n) => read += n,
        }
    }
}

/// The end of a line: up to and including the first `\n`.
pub fn line_end(buf: &[u8]) -> Option<usize> {
    buf.iter().position(|&b| b == b'\n').map(|i| i + 1)
}

/// The end of an HTTP request head: up to and including the first empty
/// line (`\r\n\r\n`, or `\n\n` from lenient clients).
pub fn http_head_end(buf: &[u8]) -> Option<usize> {
    (0..buf.len()).find_map(|i| {
        let rest = &buf[i..];
        if rest.starts_with(b"\r\n\r\n") {
            Some(i + 4)
        } else if rest.starts_with(b"\n\n") {
            Some(i + 2)
        } else {
            None
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client that sends `data` in `step`-byte pieces.
    struct Paced {
        data: Vec<u8>,
        at: usize,
        step: usize,
    }

    impl Read for Paced {
        fn read(&mut self, out: &mut [u8]) -> io::Result<usize> {
            let n = self.step.min(out.len()).min(self.data.len() - self.at);
            out[..n].copy_from_slice(&self.data[self.at..self.at + n]);
            self.at += n;
            Ok(n)
        }
    }

    /// Takes `step` bytes a write.
    impl Write for Paced {
        fn write(&mut self, data: &[u8]) -> io::Result<usize> {
            let n = self.step.min(data.len());
            self.data.extend_from_slice(&data[..n]);
            Ok(n)
        }
        fn flush(&mut self) -> io::Result<()> {
            Ok(())
        }
    }

    impl Timed for Paced {
        fn set_read_timeout(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
        fn set_write_timeout(&self, _: Option<Duration>) -> io::Result<()> {
            Ok(())
        }
    }

    fn read(data: &[u8], step: usize, max: usize) -> Result<Vec<u8>, ReadError> {
        let mut p = Paced {
            data: data.to_vec(),
            at: 0,
            step,
        };
        read_request(
            &mut p,
            Instant::now() + Duration::from_secs(5),
            max,
            line_end,
        )
    }

    #[test]
    fn a_line_in_pieces() {
        assert_eq!(read(b"stats\nmore", 1, 64).as_deref(), Ok(&b"stats\n"[..]));
        assert_eq!(
            read(b"stats\nmore", 4096, 64).as_deref(),
            Ok(&b"stats\n"[..])
        );
    }

    #[test]
    fn too_long_stops_one_byte_past_the_limit() {
        let mut p = Paced {
            data: vec![b'x'; 1 << 20],
            at: 0,
            step: 4096,
        };
        let r = read_request(
            &mut p,
            Instant::now() + Duration::from_secs(5),
            10_000,
            line_end,
        );
        assert_eq!(r, Err(ReadError::TooLong));
        assert_eq!(p.at, 10_001);
        // A line of exactly the limit is fine.
        let mut line = vec![b'x'; 63];
        line.push(b'\n');
        assert_eq!(read(&line, 7, 64).map(|l| l.len()), Ok(64));
        line.insert(0, b'x');
        assert_eq!(read(&line, 7, 64), Err(ReadError::TooLong));
    }

    #[test]
    fn closed_before_the_end() {
        assert_eq!(read(b"sta", 1, 64), Err(ReadError::Closed(b"sta".to_vec())));
    }

    #[test]
    fn http_heads() {
        assert_eq!(
            http_head_end(b"GET / HTTP/1.0\r\n\r\nbody"),
            Some(18),
            "CRLF"
        );
        assert_eq!(http_head_end(b"GET / HTTP/1.0\n\n"), Some(16), "LF");
        assert_eq!(http_head_end(b"GET / HTTP/1.0\r\nHost: x\r\n"), None);
        let req = b"GET /metrics HTTP/1.1\r\nHost: a\r\n\r\n";
        for step in [1, 2, 3, 5, 4096] {
            let mut p = Paced {
                data: req.to_vec(),
                at: 0,
                step,
            };
            let r = read_request(
                &mut p,
                Instant::now() + Duration::from_secs(5),
                8192,
                http_head_end,
            );
            assert_eq!(r.as_deref(), Ok(&req[..]), "step {step}");
        }
    }

    #[test]
    fn writes_in_pieces_and_by_a_deadline() {
        let mut p = Paced {
            data: Vec::new(),
            at: 0,
            step: 3,
        };
        let soon = Instant::now() + Duration::from_secs(5);
        write_by(&mut p, b"0123456789", soon).expect("written");
        assert_eq!(p.data, b"0123456789");
        let past = Instant::now();
        std::thread::sleep(Duration::from_millis(2));
        let e = write_by(&mut p, b"more", past).expect_err("too late");
        assert_eq!(e.kind(), io::ErrorKind::TimedOut);
    }

    #[test]
    fn slots_are_bounded_and_given_back() {
        let s = Slots::new(2);
        let a = s.take().expect("first");
        let _b = s.take().expect("second");
        assert!(s.take().is_none());
        drop(a);
        assert_eq!(s.in_use(), 1);
        assert!(s.take().is_some());
    }
}

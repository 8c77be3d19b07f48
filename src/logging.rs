//! Where a server's log lines go: formatted on the thread that logs them,
//! appended to an in-memory buffer, and written to stderr by one writer
//! thread every [`FLUSH_EVERY`].
//!
//! Every request logs a line; one `write(2)` per line on the request's own
//! thread cost about a third of a JWKS request, and handing each line to
//! another thread costs as much in wake-ups. So a line only takes a short
//! lock and a copy; the writer wakes on a timer and writes everything
//! buffered with one call. Nothing is dropped: a buffer past [`MAX_BUFFER`]
//! is written at once by the thread that filled it (back-pressure), and
//! [`Flush`] (held by `serve` until it returns) writes the rest before the
//! process exits. Lines reach stderr at most [`FLUSH_EVERY`] late; what a
//! `SIGKILL` or an abort catches in the buffer is lost, as with any
//! buffered log.

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Condvar, Mutex, PoisonError};
use std::thread::JoinHandle;
use std::time::Duration;

use tracing_subscriber::fmt::MakeWriter;

/// How long a line may wait in the buffer.
pub const FLUSH_EVERY: Duration = Duration::from_millis(50);
/// A buffer this large is written at once by the thread that filled it.
pub const MAX_BUFFER: usize = 1024 * 1024;

struct Shared<W> {
    buf: Mutex<Vec<u8>>,
    /// Held while a batch is taken and written, so batches stay in order.
    out: Mutex<W>,
    stop: AtomicBool,
    wake: Condvar,
    idle: Mutex<()>,
}

impl<W: Write> Shared<W> {
    fn new(out: W) -> Self {
        Self {
            buf: Mutex::new(Vec::with_capacity(64 * 1024)),
            out: Mutex::new(out),
            stop: AtomicBool::new(false),
            wake: Condvar::new(),
            idle: Mutex::new(()),
        }
    }

    /// Append one line; write everything at once if the buffer is full.
    fn push(&self, line: &[u8]) {
        let full = {
            let mut buf = self.buf.lock().unwrap_or_else(PoisonError::into_inner);
            buf.extend_from_slice(line);
            buf.len() >= MAX_BUFFER
        };
        if full {
            self.write_out();
        }
    }

    /// Write whatever is buffered (in order with every other batch).
    fn write_out(&self) {
        let mut out = self.out.lock().unwrap_or_else(PoisonError::into_inner);
        let batch = std::mem::take(&mut *self.buf.lock().unwrap_or_else(PoisonError::into_inner));
        if !batch.is_empty() {
            let _ = out.write_all(&batch);
            let _ = out.flush();
        }
    }

    /// The writer thread: write every [`FLUSH_EVERY`] until stopped, then
    /// once more.
    fn run(&self) {
        loop {
            let idle = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
            let _ = self
                .wake
                .wait_timeout_while(idle, FLUSH_EVERY, |_| !self.stop.load(Ordering::Acquire));
            self.write_out();
            if self.stop.load(Ordering::Acquire) {
                return;
            }
        }
    }

    fn stop(&self) {
        self.stop.store(true, Ordering::Release);
        let _guard = self.idle.lock().unwrap_or_else(PoisonError::into_inner);
        self.wake.notify_all();
    }
}

/// A `MakeWriter` for `tracing_subscriber::fmt` that buffers each line.
pub struct BufferedStderr {
    shared: Arc<Shared<std::io::Stderr>>,
}

/// Writes what is buffered and stops the writer thread when dropped.
pub struct Flush {
    shared: Arc<Shared<std::io::Stderr>>,
    thread: Option<JoinHandle<()>>,
}

/// The writer for the subscriber, and the guard that flushes it.
pub fn buffered_stderr() -> (BufferedStderr, Flush) {
    let shared = Arc::new(Shared::new(std::io::stderr()));
    let thread = {
        let shared = shared.clone();
        std::thread::Builder::new()
            .name("latchkey-log".into())
            .spawn(move || shared.run())
            .ok()
    };
    (
        BufferedStderr {
            shared: shared.clone(),
        },
        Flush { shared, thread },
    )
}

impl Drop for Flush {
    fn drop(&mut self) {
        self.shared.stop();
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
        // Without a writer thread (it could not start), or for lines that
        // came in after it stopped.
        self.shared.write_out();
    }
}

/// One event's bytes, appended to the buffer as one line when it is done.
pub struct Line<'a, W: Write> {
    buf: Vec<u8>,
    shared: &'a Shared<W>,
}

impl<W: Write> Write for Line<'_, W> {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        self.buf.extend_from_slice(bytes);
        Ok(bytes.len())
    }

    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<W: Write> Drop for Line<'_, W> {
    fn drop(&mut self) {
        if !self.buf.is_empty() {
            self.shared.push(&self.buf);
        }
    }
}

impl<'a> MakeWriter<'a> for BufferedStderr {
    type Writer = Line<'a, std::io::Stderr>;

    fn make_writer(&'a self) -> Self::Writer {
        Line {
            buf: Vec::with_capacity(256),
            shared: &self.shared,
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use super::*;

    fn line<W: Write>(shared: &Shared<W>, text: &str) {
        let mut l = Line {
            buf: Vec::new(),
            shared,
        };
        l.write_all(text.as_bytes()).unwrap();
    }

    #[test]
    fn lines_wait_for_the_timer_then_arrive_in_order() {
        let shared = Arc::new(Shared::new(Vec::new()));
        let writer = {
            let shared = shared.clone();
            std::thread::spawn(move || shared.run())
        };
        for i in 0..1000 {
            line(&shared, &format!("line {i}\n"));
        }
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while shared.out.lock().unwrap().is_empty() {
            assert!(
                std::time::Instant::now() < deadline,
                "the timer never wrote"
            );
            std::thread::sleep(Duration::from_millis(5));
        }
        line(&shared, "last\n");
        shared.stop();
        writer.join().unwrap();
        let out = String::from_utf8(shared.out.lock().unwrap().clone()).unwrap();
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(lines.len(), 1001);
        for (i, l) in lines[..1000].iter().enumerate() {
            assert_eq!(*l, format!("line {i}"));
        }
        assert_eq!(lines[1000], "last", "stopping writes what is left");
    }

    #[test]
    fn a_full_buffer_is_written_by_the_thread_that_filled_it() {
        // No writer thread at all: only back-pressure writes.
        let shared = Shared::new(Vec::new());
        let big = "x".repeat(1000) + "\n";
        for _ in 0..(MAX_BUFFER / big.len()) {
            line(&shared, &big);
        }
        assert!(shared.out.lock().unwrap().is_empty());
        line(&shared, &big);
        let written = shared.out.lock().unwrap().len();
        assert!(written >= MAX_BUFFER, "{written} bytes written");
        assert!(shared.buf.lock().unwrap().is_empty());
    }
}

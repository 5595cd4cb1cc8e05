//! An instance's output: stdout and stderr, read from their pipes as they
//! come; forwarded to the worker's log line by line (tagged with the
//! instance id); a bounded tail of stderr lines for error messages; and the
//! last [`LOG_MAX_BYTES`] of both, with offsets, for a gateway that asks for
//! an invocation's log (`GET /v1/instances/{id}/log`).
//!
//! Exactness: a read from a pipe and its append to the buffer happen under
//! one lock, and [`Output::since`] checks under that lock that nothing is
//! left unread in either pipe (`FIONREAD`). So whatever a function wrote
//! before it answered an invocation is in what `since` returns after that
//! answer, with no timing guesswork. (A runtime that buffers its own output,
//! such as Python's `print` to a pipe, must flush it: the worker sets
//! `PYTHONUNBUFFERED=1`.)

use crate::api::LOG_MAX_BYTES;
use std::collections::VecDeque;
use std::os::fd::{AsRawFd, OwnedFd};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::unix::AsyncFd;

/// Lines of stderr kept per instance for error messages.
const STDERR_TAIL_LINES: usize = 20;
/// Longest single line forwarded to the log or kept, in bytes.
const LINE_MAX: usize = 512;
/// How long [`Output::since`] waits for the pipes to be drained.
const DRAIN_WAIT: Duration = Duration::from_millis(250);

#[derive(Default)]
pub struct Output {
    // Cold-path lock: taken per read of the instance's pipes and per log
    // request, never on the invocation path of the gateway.
    state: Mutex<State>,
    /// Both pipes' read ends, kept open as long as the output (so their
    /// descriptors are never reused under `FIONREAD`).
    pipes: Mutex<Vec<Arc<AsyncFd<OwnedFd>>>>,
}

#[derive(Default)]
struct State {
    recent: VecDeque<u8>,
    /// Bytes read so far, from both pipes.
    end: u64,
    stderr_tail: VecDeque<String>,
}

impl Output {
    /// Starts reading `pipe` (a child's stdout or stderr) in a task of its
    /// own; it ends at end of file.
    pub fn pump(
        self: &Arc<Self>,
        pipe: OwnedFd,
        instance: &str,
        which: &'static str,
    ) -> std::io::Result<tokio::task::JoinHandle<()>> {
        set_nonblocking(&pipe)?;
        // SAFETY: an OwnedFd is a valid open descriptor, owned by the AsyncFd
        // for its whole life and never replaced.
        let fd = unsafe { AsyncFd::register(pipe) }.map_err(std::io::Error::from)?;
        let fd = Arc::new(fd);
        self.pipes.lock().unwrap().push(fd.clone());
        let out = self.clone();
        let instance = instance.to_string();
        Ok(tokio::spawn(async move {
            let mut buf = vec![0u8; 8192];
            let mut line = Line::default();
            loop {
                let Ok(mut ready) = fd.readable().await else {
                    break;
                };
                let read = ready.try_io(|fd| {
                    let mut st = out.state.lock().unwrap();
                    let n = read(fd.get_ref(), &mut buf)?;
                    st.append(&buf[..n]);
                    Ok(n)
                });
                let n = match read {
                    Ok(Ok(0)) => break,
                    Ok(Ok(n)) => n,
                    Ok(Err(e)) if e.kind() == std::io::ErrorKind::Interrupted => continue,
                    Ok(Err(_)) => break,
                    // Spurious readiness: wait again.
                    Err(_) => continue,
                };
                for chunk in buf[..n].split_inclusive(|b| *b == b'\n') {
                    if line.push(chunk) {
                        out.emit(&instance, which, &line.0);
                        line.0.clear();
                    }
                }
            }
            if !line.0.is_empty() {
                out.emit(&instance, which, &line.0);
            }
        }))
    }

    /// `line`: at most [`LINE_MAX`] bytes, as [`Line`] keeps it.
    fn emit(&self, instance: &str, which: &'static str, line: &[u8]) {
        let text = String::from_utf8_lossy(line);
        tracing::info!(target: "instance", instance = %instance, stream = which, "{text}");
        if which == "stderr" {
            let mut st = self.state.lock().unwrap();
            if st.stderr_tail.len() == STDERR_TAIL_LINES {
                st.stderr_tail.pop_front();
            }
            st.stderr_tail.push_back(text.into_owned());
        }
    }

    /// The last lines the instance wrote to stderr.
    pub fn stderr_tail(&self) -> String {
        let st = self.state.lock().unwrap();
        let mut out = String::new();
        for l in &st.stderr_tail {
            out.push_str(l);
            out.push('\n');
        }
        out
    }

    /// The offset the output has reached and, with `from`, what was written
    /// since then (its last [`LOG_MAX_BYTES`] at most), once everything
    /// already written to the pipes has been read (bounded by a short wait).
    pub async fn since(&self, from: Option<u64>) -> (u64, Vec<u8>) {
        let Some(from) = from else {
            return (self.state.lock().unwrap().end, Vec::new());
        };
        let deadline = tokio::time::Instant::now() + DRAIN_WAIT;
        loop {
            {
                let st = self.state.lock().unwrap();
                let drained = self
                    .pipes
                    .lock()
                    .unwrap()
                    .iter()
                    .all(|p| unread(p.get_ref()) == 0);
                if drained || tokio::time::Instant::now() >= deadline {
                    return (st.end, st.from(from));
                }
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
}

/// The line being read from a pipe, kept to what the log shows of it (its
/// first [`LINE_MAX`] bytes): a line that never ends costs no memory.
#[derive(Default)]
struct Line(Vec<u8>);

impl Line {
    /// Adds `chunk` (which holds at most one `\n`, at its end); true when
    /// that ends the line.
    fn push(&mut self, chunk: &[u8]) -> bool {
        let (text, ends) = match chunk.strip_suffix(b"\n") {
            Some(text) => (text, true),
            None => (chunk, false),
        };
        let room = LINE_MAX.saturating_sub(self.0.len());
        self.0.extend_from_slice(&text[..text.len().min(room)]);
        ends
    }
}

impl State {
    fn append(&mut self, data: &[u8]) {
        self.end += data.len() as u64;
        self.recent.extend(data);
        let over = self.recent.len().saturating_sub(LOG_MAX_BYTES);
        self.recent.drain(..over);
    }

    fn from(&self, from: u64) -> Vec<u8> {
        let start = self.end - self.recent.len() as u64;
        let skip = from.saturating_sub(start).min(self.recent.len() as u64) as usize;
        self.recent.range(skip..).copied().collect()
    }
}

fn set_nonblocking(fd: &OwnedFd) -> std::io::Result<()> {
    // SAFETY: fcntl on a descriptor we own.
    let flags = unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_GETFL) };
    if flags < 0
        || unsafe { libc::fcntl(fd.as_raw_fd(), libc::F_SETFL, flags | libc::O_NONBLOCK) } < 0
    {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

fn read(fd: &OwnedFd, buf: &mut [u8]) -> std::io::Result<usize> {
    // SAFETY: reads into a buffer we own, of the length we pass.
    let n = unsafe { libc::read(fd.as_raw_fd(), buf.as_mut_ptr().cast(), buf.len()) };
    if n < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(n as usize)
    }
}

/// Bytes written to a pipe and not read yet.
fn unread(fd: &OwnedFd) -> usize {
    let mut n: libc::c_int = 0;
    // SAFETY: FIONREAD writes one int through the pointer we pass.
    let r = unsafe { libc::ioctl(fd.as_raw_fd(), libc::FIONREAD, &mut n) };
    if r < 0 { 0 } else { n as usize }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn recent_output_is_bounded_and_addressed_by_offset() {
        let mut st = State::default();
        st.append(b"hello ");
        st.append(b"world");
        assert_eq!(st.end, 11);
        assert_eq!(st.from(6), b"world");
        assert_eq!(st.from(0), b"hello world");
        assert_eq!(st.from(11), b"");
        assert_eq!(st.from(99), b"");
        st.append(&vec![b'x'; LOG_MAX_BYTES]);
        assert_eq!(st.recent.len(), LOG_MAX_BYTES);
        // What fell out of the window is gone; the rest is returned.
        assert_eq!(st.from(0).len(), LOG_MAX_BYTES);
        assert_eq!(st.from(st.end - 3), b"xxx");
    }

    #[test]
    fn a_line_without_end_is_held_only_as_far_as_the_log_shows_it() {
        let mut line = Line::default();
        for _ in 0..100 {
            assert!(!line.push(&[b'x'; 8192]));
        }
        assert_eq!(line.0.len(), LINE_MAX);
        assert!(line.push(b"tail\n"));
        assert_eq!(line.0, vec![b'x'; LINE_MAX]);
        let mut short = Line::default();
        assert!(!short.push(b"ab"));
        assert!(short.push(b"c\n"));
        assert_eq!(short.0, b"abc");
    }

    #[tokio::test]
    async fn what_was_written_before_asking_is_returned() {
        let out = Arc::new(Output::default());
        let (r, w) = std::io::pipe().unwrap();
        let done = out.pump(OwnedFd::from(r), "i-1", "stderr").unwrap();
        let (from, _) = out.since(None).await;
        let mut w = std::fs::File::from(OwnedFd::from(w));
        use std::io::Write;
        for i in 0..200 {
            writeln!(w, "line {i}").unwrap();
        }
        // No waiting here: `since` drains the pipe itself.
        let (end, text) = out.since(Some(from)).await;
        let text = String::from_utf8(text).unwrap();
        assert!(
            text.starts_with("line 0\n") && text.ends_with("line 199\n"),
            "{text}"
        );
        assert_eq!(end, text.len() as u64);
        drop(w);
        done.await.unwrap();
        assert!(out.stderr_tail().ends_with("line 199\n"));
        assert_eq!(out.stderr_tail().lines().count(), STDERR_TAIL_LINES);
    }
}

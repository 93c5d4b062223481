//! A client connection's byte stream: plain TCP until STARTTLS, TLS after it (or from the
//! first byte on a direct-TLS port).

use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio_rustls::server::TlsStream;

pub enum Transport {
    Plain(TcpStream),
    Tls(Box<TlsStream<TcpStream>>),
}

impl Transport {
    pub fn is_tls(&self) -> bool {
        matches!(self, Transport::Tls(_))
    }

    fn tcp(&self) -> &TcpStream {
        match self {
            Transport::Plain(s) => s,
            Transport::Tls(s) => s.get_ref().0,
        }
    }

    /// Waits until the socket has something to read, without holding a read buffer: an
    /// idle connection then owns no buffer at all (see `read_now`).
    pub async fn readable(&self) -> io::Result<()> {
        self.tcp().readable().await
    }

    /// Reads what can be read now into `buf` (a buffer the caller lends for this call only).
    ///
    /// TLS may hold decrypted bytes that no longer show as socket readiness, and may ask to
    /// be polled again without any socket event: `Again` says so, and the caller must call
    /// again before waiting on [`readable`](Self::readable).
    pub fn read_now(&mut self, buf: &mut [u8]) -> ReadNow {
        WOKEN.with(|w| w.set(false));
        let mut cx = Context::from_waker(flag_waker());
        let mut rb = ReadBuf::new(buf);
        match Pin::new(self).poll_read(&mut cx, &mut rb) {
            Poll::Ready(Ok(())) if rb.filled().is_empty() => ReadNow::Eof,
            Poll::Ready(Ok(())) => ReadNow::Data(rb.filled().len()),
            Poll::Ready(Err(e)) => ReadNow::Error(e),
            Poll::Pending if WOKEN.with(|w| w.get()) => ReadNow::Again,
            Poll::Pending => ReadNow::Wait,
        }
    }
}

/// The outcome of [`Transport::read_now`].
#[derive(Debug)]
pub enum ReadNow {
    Data(usize),
    Eof,
    Error(io::Error),
    /// Nothing now: wait for the socket to be readable.
    Wait,
    /// Nothing now, but the TLS layer wants to be polled again without waiting.
    Again,
}

thread_local! {
    /// Set when the waker of the current `read_now` poll is woken during the poll itself.
    static WOKEN: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

/// A waker that only records, on the polling thread, that it was woken: `read_now` polls
/// once and the caller then waits on readiness with its own waker. A wake from another
/// thread is irrelevant (the caller is about to wait on readiness anyway) and ignored.
fn flag_waker() -> &'static std::task::Waker {
    struct Flag;
    impl std::task::Wake for Flag {
        fn wake(self: std::sync::Arc<Self>) {
            WOKEN.with(|w| w.set(true));
        }
        fn wake_by_ref(self: &std::sync::Arc<Self>) {
            WOKEN.with(|w| w.set(true));
        }
    }
    static WAKER: std::sync::OnceLock<std::task::Waker> = std::sync::OnceLock::new();
    WAKER.get_or_init(|| std::task::Waker::from(std::sync::Arc::new(Flag)))
}

impl AsyncRead for Transport {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Transport {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_flush(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            Transport::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Transport::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
}

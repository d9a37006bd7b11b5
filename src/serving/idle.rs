//! Closing idle connections (`--idle-connection-timeout`): a connection with no call open
//! for that long is closed, so that a caller cannot hold connection slots (and their
//! buffers) by connecting and doing nothing.
//!
//! Idle means no call open, not no bytes: HTTP/2 keepalive pings keep bytes flowing on
//! every live connection, and a tailing `Read` or a player's `Deliver` stream is a call that
//! is legitimately quiet. So each connection counts its open calls ([`Activity`]): the
//! outermost server layer ([`IdleLayer`]) opens a [`CallGuard`] per request and moves it into
//! the response body, which hyper drops when the call ends. The connection's byte stream
//! ([`super::Served`]) then ends reading (end of file, which makes hyper close it) once no
//! call has been open for the timeout. tonic has no such setting (its `max_connection_age`
//! closes busy connections too, and hyper's HTTP/2 server has no idle timer), hence this.

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::time::{Instant, Sleep};

/// The calls open on one connection, and since when none has been.
#[derive(Debug)]
pub struct Activity {
    open: AtomicUsize,
    idle_since: Mutex<Instant>,
}

impl Activity {
    /// A connection just accepted: idle from now.
    pub fn new() -> Arc<Self> {
        Arc::new(Activity {
            open: AtomicUsize::new(0),
            idle_since: Mutex::new(Instant::now()),
        })
    }

    /// A call opens; it is open until the guard is dropped.
    pub fn open(self: &Arc<Self>) -> CallGuard {
        self.open.fetch_add(1, Ordering::SeqCst);
        CallGuard(self.clone())
    }

    /// `None` while a call is open; otherwise since when none has been.
    fn idle_since(&self) -> Option<Instant> {
        let since = *self.idle_since.lock().unwrap_or_else(|p| p.into_inner());
        (self.open.load(Ordering::SeqCst) == 0).then_some(since)
    }
}

/// One open call of a connection.
#[derive(Debug)]
pub struct CallGuard(Arc<Activity>);

impl Drop for CallGuard {
    fn drop(&mut self) {
        // The time is set before the count falls, so a reader that sees no call open also
        // sees when the last one ended.
        *self.0.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        self.0.open.fetch_sub(1, Ordering::SeqCst);
    }
}

/// The timer of one connection's byte stream.
pub struct IdleTimer {
    activity: Arc<Activity>,
    timeout: Duration,
    sleep: Pin<Box<Sleep>>,
}

impl IdleTimer {
    pub fn new(activity: Arc<Activity>, timeout: Duration) -> Self {
        IdleTimer {
            activity,
            timeout,
            sleep: Box::pin(tokio::time::sleep(timeout)),
        }
    }

    /// Whether the connection has had no call open for the timeout; otherwise the task in
    /// `cx` is woken when it next might have.
    pub fn expired(&mut self, cx: &mut Context<'_>) -> bool {
        loop {
            if self.sleep.as_mut().poll(cx).is_pending() {
                return false;
            }
            let next = match self.activity.idle_since() {
                Some(since) if since.elapsed() >= self.timeout => return true,
                Some(since) => since + self.timeout,
                None => Instant::now() + self.timeout,
            };
            self.sleep.as_mut().reset(next);
        }
    }
}

/// What tonic hands every request of a counted connection: its [`Activity`], and a way to
/// put the transport's own connection info (TLS peer, address) into the request, where the
/// rest of the server looks for it. [`IdleLayer`] takes it out and does both.
#[derive(Clone)]
pub struct Linked {
    pub(super) activity: Arc<Activity>,
    pub(super) restore: Arc<dyn Fn(&mut http::Extensions) + Send + Sync>,
}

/// The outermost layer of every server: counts each call as open on its connection until
/// its response ends.
#[derive(Clone, Copy, Default)]
pub struct IdleLayer;

impl<S> tower::Layer<S> for IdleLayer {
    type Service = Idle<S>;
    fn layer(&self, inner: S) -> Idle<S> {
        Idle { inner }
    }
}

#[derive(Clone)]
pub struct Idle<S> {
    inner: S,
}

impl<S> tower::Service<http::Request<tonic::body::Body>> for Idle<S>
where
    S: tower::Service<
            http::Request<tonic::body::Body>,
            Response = http::Response<tonic::body::Body>,
        >,
    S::Future: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = futures::future::BoxFuture<'static, Result<S::Response, S::Error>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: http::Request<tonic::body::Body>) -> Self::Future {
        let guard = req.extensions_mut().remove::<Linked>().map(|linked| {
            (linked.restore)(req.extensions_mut());
            linked.activity.open()
        });
        let call = self.inner.call(req);
        Box::pin(async move {
            let response = call.await?;
            Ok(match guard {
                Some(guard) => response.map(|body| {
                    tonic::body::Body::new(Guarded {
                        body,
                        _guard: guard,
                    })
                }),
                None => response,
            })
        })
    }
}

/// A response body that keeps its call counted as open until hyper drops it.
struct Guarded {
    body: tonic::body::Body,
    _guard: CallGuard,
}

impl http_body::Body for Guarded {
    type Data = bytes::Bytes;
    type Error = tonic::Status;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<http_body::Frame<Self::Data>, Self::Error>>> {
        Pin::new(&mut self.body).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> http_body::SizeHint {
        self.body.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn a_connection_expires_only_after_the_timeout_with_no_call_open() {
        let activity = Activity::new();
        let mut timer = IdleTimer::new(activity.clone(), Duration::from_secs(10));
        let expired = |timer: &mut IdleTimer| {
            let waker = futures::task::noop_waker();
            timer.expired(&mut Context::from_waker(&waker))
        };
        assert!(!expired(&mut timer));
        let call = activity.open();
        tokio::time::advance(Duration::from_secs(30)).await;
        assert!(!expired(&mut timer), "expired with a call open");
        drop(call);
        tokio::time::advance(Duration::from_secs(9)).await;
        assert!(
            !expired(&mut timer),
            "expired before the timeout after the call"
        );
        tokio::time::advance(Duration::from_secs(2)).await;
        assert!(expired(&mut timer));
    }
}

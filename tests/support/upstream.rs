//! Upstream servers for tests: real hyper servers on 127.0.0.1:0 that record
//! what they receive.

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use bytes::Bytes;
use http::{HeaderMap, Method, Request, Response, Uri};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use tokio::net::TcpListener;

/// What an upstream received.
#[derive(Debug, Clone)]
pub struct Seen {
    pub method: Method,
    pub uri: Uri,
    pub version: http::Version,
    pub headers: HeaderMap,
    pub body: Bytes,
}

/// A running upstream.
pub struct Upstream {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<Seen>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Upstream {
    /// Requests received so far.
    pub fn seen(&self) -> Vec<Seen> {
        self.seen.lock().unwrap().clone()
    }
    /// How many requests arrived.
    pub fn count(&self) -> usize {
        self.seen.lock().unwrap().len()
    }
    /// Stops accepting (open connections are dropped with the task).
    pub fn stop(&self) {
        self.task.abort();
    }
}

impl Drop for Upstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// A server answering every request with `handler(&Seen)`; HTTP/1.1 and h2c.
pub async fn start<F>(handler: F) -> Upstream
where
    F: Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(handler);
    let rec = seen.clone();
    let task = tokio::spawn(async move {
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let rec = rec.clone();
            let handler = handler.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let s = Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        let resp = handler(&s);
                        rec.lock().unwrap().push(s);
                        Ok::<_, Infallible>(resp)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Upstream { addr, seen, task }
}

/// An upstream that answers 200 with `name` as the body (and `x-upstream: name`).
pub async fn named(name: &'static str) -> Upstream {
    start(move |_| {
        Response::builder()
            .header("x-upstream", name)
            .body(Full::new(Bytes::from(name)))
            .unwrap()
    })
    .await
}

/// Like [`start`], with an async handler: it may wait before answering (sleep,
/// hold until released, ...). Each request is recorded as soon as its body has
/// been read, before the handler runs, so a request still being held counts.
///
/// Every connection task is owned by the accept task, so [`Upstream::kill`]
/// (or dropping the `Upstream`) closes the listener and every open connection
/// at once.
pub async fn start_async<F, Fut>(handler: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    start_async_at("127.0.0.1:0".parse().unwrap(), handler).await
}

/// [`start_async`] on a given address (e.g. the port of an upstream that was
/// killed); panics when it cannot bind.
pub async fn start_async_at<F, Fut>(addr: SocketAddr, handler: F) -> Upstream
where
    F: Fn(Seen) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Response<Full<Bytes>>> + Send + 'static,
{
    let listener = TcpListener::bind(addr)
        .await
        .unwrap_or_else(|e| panic!("bind {addr}: {e}"));
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let handler = Arc::new(handler);
    let rec = seen.clone();
    let task = tokio::spawn(async move {
        let mut conns = tokio::task::JoinSet::new();
        loop {
            let Ok((stream, _)) = listener.accept().await else {
                break;
            };
            let rec = rec.clone();
            let handler = handler.clone();
            conns.spawn(async move {
                let svc = service_fn(move |req: Request<Incoming>| {
                    let rec = rec.clone();
                    let handler = handler.clone();
                    async move {
                        let (parts, body) = req.into_parts();
                        let body = body
                            .collect()
                            .await
                            .map(|b| b.to_bytes())
                            .unwrap_or_default();
                        let s = Seen {
                            method: parts.method,
                            uri: parts.uri,
                            version: parts.version,
                            headers: parts.headers,
                            body,
                        };
                        rec.lock().unwrap().push(s.clone());
                        Ok::<_, Infallible>(handler(s).await)
                    }
                });
                let _ = auto::Builder::new(TokioExecutor::new())
                    .serve_connection_with_upgrades(TokioIo::new(stream), svc)
                    .await;
            });
            // Reap finished connections so the set does not grow without bound.
            while conns.try_join_next().is_some() {}
        }
    });
    Upstream { addr, seen, task }
}

/// Like [`start`], but [`Upstream::kill`] closes the listener and every open
/// connection at once (an endpoint that dies).
pub async fn start_killable<F>(handler: F) -> Upstream
where
    F: Fn(&Seen) -> Response<Full<Bytes>> + Send + Sync + 'static,
{
    let handler = Arc::new(handler);
    start_async(move |s| {
        let resp = handler(&s);
        async move { resp }
    })
    .await
}

impl Upstream {
    /// Stops the server. For one made by [`start_async`], [`start_async_at`] or
    /// [`start_killable`] this closes the listener and every open connection
    /// (in-flight requests are cut); for one made by [`start`] it is [`Upstream::stop`].
    pub fn kill(&self) {
        self.task.abort();
    }

    /// Requests received whose path starts with `prefix`.
    pub fn count_prefix(&self, prefix: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.path().starts_with(prefix))
            .count()
    }

    /// How many requests arrived for exactly `path`.
    pub fn count_path(&self, path: &str) -> usize {
        self.seen
            .lock()
            .unwrap()
            .iter()
            .filter(|s| s.uri.path() == path)
            .count()
    }
}

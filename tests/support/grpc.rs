//! A gRPC upstream for tests: hand-written prost messages and a hyper h2c
//! server dispatching to tonic's server-side codec machinery; plus a tonic client.
//!
//! Service `test.Echo`:
//! - `Unary(EchoRequest) -> EchoReply`: echoes `message`; a message starting with
//!   `missing` fails with NOT_FOUND `no such item: <message>`.
//! - `Stream(EchoRequest) -> stream EchoReply`: `count` replies with `seq` 0..count;
//!   when `fail_with` is non-zero, the stream then ends with that code and
//!   message `failed after <count>` (carried in the trailers).

use std::future::{Ready, ready};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use http::uri::PathAndQuery;
use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo};
use tokio::net::TcpListener;
use tonic::codegen::BoxStream;
use tonic::server::{ServerStreamingService, UnaryService};
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};
use tonic_prost::ProstCodec;

pub const UNARY: &str = "/test.Echo/Unary";
pub const STREAM: &str = "/test.Echo/Stream";

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoRequest {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub count: u32,
    #[prost(int32, tag = "3")]
    pub fail_with: i32,
}

#[derive(Clone, PartialEq, prost::Message)]
pub struct EchoReply {
    #[prost(string, tag = "1")]
    pub message: String,
    #[prost(uint32, tag = "2")]
    pub seq: u32,
}

struct UnarySvc;

impl UnaryService<EchoRequest> for UnarySvc {
    type Response = EchoReply;
    type Future = Ready<Result<tonic::Response<EchoReply>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let m = req.into_inner();
        if m.message.starts_with("missing") {
            return ready(Err(Status::not_found(format!(
                "no such item: {}",
                m.message
            ))));
        }
        let mut resp = tonic::Response::new(EchoReply {
            message: format!("echo: {}", m.message),
            seq: 0,
        });
        resp.metadata_mut()
            .insert("x-served-by", "grpc-upstream".parse().unwrap());
        ready(Ok(resp))
    }
}

struct StreamSvc;

impl ServerStreamingService<EchoRequest> for StreamSvc {
    type Response = EchoReply;
    type ResponseStream = BoxStream<EchoReply>;
    type Future = Ready<Result<tonic::Response<Self::ResponseStream>, Status>>;

    fn call(&mut self, req: tonic::Request<EchoRequest>) -> Self::Future {
        let m = req.into_inner();
        let mut items: Vec<Result<EchoReply, Status>> = (0..m.count)
            .map(|seq| {
                Ok(EchoReply {
                    message: format!("{} #{seq}", m.message),
                    seq,
                })
            })
            .collect();
        if m.fail_with != 0 {
            items.push(Err(Status::new(
                Code::from(m.fail_with),
                format!("failed after {}", m.count),
            )));
        }
        let stream: Self::ResponseStream = Box::pin(tonic::codegen::tokio_stream::iter(items));
        ready(Ok(tonic::Response::new(stream)))
    }
}

/// A request head as the upstream saw it.
#[derive(Debug, Clone)]
pub struct SeenCall {
    pub path: String,
    pub version: http::Version,
    pub headers: http::HeaderMap,
}

/// A running gRPC upstream (h2c only).
pub struct Server {
    pub addr: SocketAddr,
    seen: Arc<Mutex<Vec<SeenCall>>>,
    connections: Arc<Mutex<usize>>,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    pub fn seen(&self) -> Vec<SeenCall> {
        self.seen.lock().unwrap().clone()
    }
    /// TCP connections accepted so far.
    pub fn connections(&self) -> usize {
        *self.connections.lock().unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts the `test.Echo` service on 127.0.0.1:0, speaking h2c.
pub async fn start() -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let seen = Arc::new(Mutex::new(Vec::new()));
    let connections = Arc::new(Mutex::new(0));
    let (rec, conns) = (seen.clone(), connections.clone());
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            *conns.lock().unwrap() += 1;
            let rec = rec.clone();
            tokio::spawn(async move {
                let svc = service_fn(move |req: http::Request<hyper::body::Incoming>| {
                    rec.lock().unwrap().push(SeenCall {
                        path: req.uri().path().to_owned(),
                        version: req.version(),
                        headers: req.headers().clone(),
                    });
                    async move {
                        let mut grpc = tonic::server::Grpc::new(
                            ProstCodec::<EchoReply, EchoRequest>::default(),
                        );
                        let resp = match req.uri().path() {
                            UNARY => grpc.unary(UnarySvc, req).await,
                            STREAM => grpc.server_streaming(StreamSvc, req).await,
                            other => Status::unimplemented(format!("no method {other}"))
                                .into_http::<tonic::body::Body>(),
                        };
                        Ok::<_, std::convert::Infallible>(resp)
                    }
                });
                let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
                    .serve_connection(TokioIo::new(stream), svc)
                    .await;
            });
        }
    });
    Server {
        addr,
        seen,
        connections,
        task,
    }
}

/// A tonic client over a channel to `addr` (h2c, prior knowledge).
pub async fn client(addr: SocketAddr) -> tonic::client::Grpc<Channel> {
    let channel = Endpoint::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect_timeout(std::time::Duration::from_secs(5))
        .timeout(std::time::Duration::from_secs(10))
        .connect()
        .await
        .unwrap();
    tonic::client::Grpc::new(channel)
}

/// Calls `Unary`.
pub async fn unary(
    client: &mut tonic::client::Grpc<Channel>,
    req: tonic::Request<EchoRequest>,
) -> Result<tonic::Response<EchoReply>, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    client
        .unary(
            req,
            PathAndQuery::from_static(UNARY),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
}

/// Calls `Stream`.
pub async fn server_streaming(
    client: &mut tonic::client::Grpc<Channel>,
    req: tonic::Request<EchoRequest>,
) -> Result<tonic::Response<tonic::Streaming<EchoReply>>, Status> {
    client
        .ready()
        .await
        .map_err(|e| Status::unavailable(e.to_string()))?;
    client
        .server_streaming(
            req,
            PathAndQuery::from_static(STREAM),
            ProstCodec::<EchoRequest, EchoReply>::default(),
        )
        .await
}

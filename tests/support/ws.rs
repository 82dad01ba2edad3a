//! A WebSocket echo server (tokio-tungstenite) for tests, on 127.0.0.1:0.

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::TcpListener;
use tokio_tungstenite::tungstenite::Message;
use tokio_tungstenite::tungstenite::handshake::server::{Request, Response};

/// What the echo server saw.
#[derive(Debug, Default, Clone)]
pub struct Record {
    /// Request paths of accepted handshakes.
    pub paths: Vec<String>,
    /// Text and binary messages received, in order.
    pub messages: Vec<Message>,
    /// Close frames received (code, reason).
    pub closes: Vec<(u16, String)>,
}

/// A running echo server.
pub struct Echo {
    pub addr: SocketAddr,
    record: Arc<Mutex<Record>>,
    task: tokio::task::JoinHandle<()>,
}

impl Echo {
    /// A copy of what was seen so far.
    pub fn record(&self) -> Record {
        self.record.lock().unwrap().clone()
    }
}

impl Drop for Echo {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// Starts a server that echoes every text and binary message back and
/// answers a close with a close.
pub async fn echo() -> Echo {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let record = Arc::new(Mutex::new(Record::default()));
    let rec = record.clone();
    let task = tokio::spawn(async move {
        while let Ok((stream, _)) = listener.accept().await {
            let rec = rec.clone();
            tokio::spawn(async move {
                let rec_hdr = rec.clone();
                // The callback's error type is tungstenite's, large or not.
                #[allow(clippy::result_large_err)]
                let callback = move |req: &Request, resp: Response| {
                    rec_hdr
                        .lock()
                        .unwrap()
                        .paths
                        .push(req.uri().path().to_owned());
                    Ok(resp)
                };
                let Ok(mut ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else {
                    return;
                };
                while let Some(msg) = ws.next().await {
                    match msg {
                        Ok(m @ (Message::Text(_) | Message::Binary(_))) => {
                            rec.lock().unwrap().messages.push(m.clone());
                            if ws.send(m).await.is_err() {
                                break;
                            }
                        }
                        Ok(Message::Close(frame)) => {
                            let (code, reason) = frame
                                .map(|f| (u16::from(f.code), f.reason.to_string()))
                                .unwrap_or((1005, String::new()));
                            rec.lock().unwrap().closes.push((code, reason));
                            // tungstenite queues the closing reply; keep polling to send it.
                        }
                        Ok(_) => {}
                        Err(_) => break,
                    }
                }
            });
        }
    });
    Echo { addr, record, task }
}

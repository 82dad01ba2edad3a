//! WebSocket upgrades through the gateway: a real tokio-tungstenite echo server
//! behind an `upstream` route, a real tokio-tungstenite client in front.
// Test helpers panic on failure by design, like the tests themselves.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::time::Duration;

use bytes::Bytes;
use futures_util::{SinkExt, StreamExt};
use http::Response;
use http_body_util::Full;
use support::{Gateway, upstream, ws};
use tokio::time::timeout;
use tokio_tungstenite::tungstenite::protocol::CloseFrame;
use tokio_tungstenite::tungstenite::protocol::frame::coding::CloseCode;
use tokio_tungstenite::tungstenite::{Error as WsError, Message};

const LIMIT: Duration = Duration::from_secs(10);

fn config(upstreams: &[(&str, std::net::SocketAddr)], routes: &[(&str, &str)]) -> String {
    let mut y = String::from("listeners: [{ name: main, address: \"127.0.0.1:0\" }]\nupstreams:\n");
    for (name, addr) in upstreams {
        y.push_str(&format!("  {name}: {{ endpoints: [\"{addr}\"] }}\n"));
    }
    y.push_str("routes:\n");
    for (prefix, up) in routes {
        y.push_str(&format!(
            "  - name: {up}\n    match: {{ prefix: {prefix} }}\n    upstream: {up}\n"
        ));
    }
    y
}

#[tokio::test]
async fn echo_text_and_binary_then_clean_close() {
    let echo = ws::echo().await;
    let mut gw = Gateway::start(&config(&[("ws", echo.addr)], &[("/ws", "ws")]));
    let addr = gw.addr("main");

    let (mut client, resp) = timeout(
        LIMIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/chat")),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    assert_eq!(resp.status(), 101);
    assert!(
        resp.headers().contains_key("x-request-id"),
        "the 101 carries the request id: {:?}",
        resp.headers()
    );

    let big: Vec<u8> = (0..256 * 1024u32).map(|i| (i % 251) as u8).collect();
    let sent: Vec<Message> = vec![
        Message::text("hello"),
        Message::binary(vec![0u8, 1, 2, 3, 255]),
        Message::text("ünïcödé ✓"),
        Message::binary(big),
        Message::text(""),
        Message::binary(Vec::<u8>::new()),
    ];

    timeout(LIMIT, async {
        // One at a time: each message is echoed before the next goes out.
        for m in &sent {
            client.send(m.clone()).await.unwrap();
            let back = client.next().await.expect("stream ended").unwrap();
            assert_eq!(&back, m);
        }
        // Several in flight at once, both directions busy.
        for i in 0..20 {
            let m = if i % 2 == 0 {
                Message::text(format!("burst {i}"))
            } else {
                Message::binary(vec![i as u8; 1000 + i])
            };
            client.feed(m).await.unwrap();
        }
        client.flush().await.unwrap();
        for i in 0..20 {
            let back = client.next().await.expect("stream ended").unwrap();
            let want = if i % 2 == 0 {
                Message::text(format!("burst {i}"))
            } else {
                Message::binary(vec![i as u8; 1000 + i])
            };
            assert_eq!(back, want, "message {i} of the burst");
        }

        client
            .close(Some(CloseFrame {
                code: CloseCode::Normal,
                reason: "bye".into(),
            }))
            .await
            .unwrap();
        let mut reply = None;
        while let Some(m) = client.next().await {
            match m {
                Ok(Message::Close(f)) => reply = Some(f),
                Ok(other) => panic!("unexpected message after close: {other:?}"),
                Err(WsError::ConnectionClosed) => break,
                Err(e) => panic!("close handshake failed: {e}"),
            }
        }
        let reply = reply.expect("the server answered the close");
        assert_eq!(reply.map(|f| f.code), Some(CloseCode::Normal));
    })
    .await
    .expect("exchange timed out");

    let rec = echo.record();
    assert_eq!(rec.paths, vec!["/ws/chat".to_string()]);
    assert_eq!(rec.messages.len(), sent.len() + 20);
    assert_eq!(&rec.messages[..sent.len()], &sent[..]);
    assert_eq!(rec.closes, vec![(1000, "bye".to_string())]);
}

#[tokio::test]
async fn concurrent_sessions_do_not_mix() {
    let echo = ws::echo().await;
    let mut gw = Gateway::start(&config(&[("ws", echo.addr)], &[("/ws", "ws")]));
    let addr = gw.addr("main");

    let sessions = (0..5).map(|s| {
        tokio::spawn(async move {
            let (mut c, _) = tokio_tungstenite::connect_async(format!("ws://{addr}/ws/{s}"))
                .await
                .unwrap();
            for i in 0..10 {
                let m = Message::text(format!("session {s} message {i}"));
                c.send(m.clone()).await.unwrap();
                assert_eq!(c.next().await.unwrap().unwrap(), m);
            }
            c.close(None).await.unwrap();
            while let Some(Ok(_)) = c.next().await {}
        })
    });
    for s in sessions {
        timeout(LIMIT, s).await.expect("session timed out").unwrap();
    }
    let rec = echo.record();
    assert_eq!(rec.paths.len(), 5);
    assert_eq!(rec.messages.len(), 50);
}

#[tokio::test]
async fn refused_upgrade_passes_the_upstream_status_back() {
    let bad = upstream::start(|_| {
        Response::builder()
            .status(400)
            .header("content-type", "text/plain")
            .body(Full::new(Bytes::from("no websocket here")))
            .unwrap()
    })
    .await;
    let plain = upstream::start(|_| Response::new(Full::new(Bytes::from("plain page")))).await;
    let mut gw = Gateway::start(&config(
        &[("bad", bad.addr), ("plain", plain.addr)],
        &[("/bad", "bad"), ("/plain", "plain")],
    ));
    let addr = gw.addr("main");

    for (path, status, body) in [
        ("/bad/ws", 400, "no websocket here"),
        ("/plain/ws", 200, "plain page"),
    ] {
        let err = timeout(
            LIMIT,
            tokio_tungstenite::connect_async(format!("ws://{addr}{path}")),
        )
        .await
        .expect("handshake timed out")
        .expect_err("the upgrade must be refused");
        let WsError::Http(resp) = err else {
            panic!("expected an HTTP answer for {path}, got {err}");
        };
        assert_eq!(resp.status(), status, "{path}");
        assert_eq!(
            resp.body()
                .as_deref()
                .map(String::from_utf8_lossy)
                .as_deref(),
            Some(body),
            "{path}"
        );
    }
    // The upstreams did see the upgrade request, with its Upgrade header.
    for up in [&bad, &plain] {
        let seen = up.seen();
        assert_eq!(seen.len(), 1);
        assert_eq!(
            seen[0].headers.get("upgrade").map(|v| v.to_str().unwrap()),
            Some("websocket")
        );
    }

    // The gateway still upgrades fine afterwards, through the same listener.
    let echo = ws::echo().await;
    gw.replace_config(&config(
        &[("bad", bad.addr), ("plain", plain.addr), ("ws", echo.addr)],
        &[("/bad", "bad"), ("/plain", "plain"), ("/ws", "ws")],
    ));
    assert!(gw.wait_for_log("config reloaded", LIMIT), "{}", gw.stderr());
    let (mut c, _) = timeout(
        LIMIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws")),
    )
    .await
    .unwrap()
    .unwrap();
    c.send(Message::text("after")).await.unwrap();
    assert_eq!(
        timeout(LIMIT, c.next()).await.unwrap().unwrap().unwrap(),
        Message::text("after")
    );
}

/// An open WebSocket tunnel counts as an open connection: graceful shutdown
/// keeps it working until the deadline instead of exiting under it.
#[tokio::test]
async fn shutdown_waits_for_open_tunnels() {
    let echo = ws::echo().await;
    let mut gw = Gateway::start(&format!(
        "shutdown_timeout: 3s\n{}",
        config(&[("ws", echo.addr)], &[("/ws", "ws")])
    ));
    let addr = gw.addr("main");
    let (mut client, _) = timeout(
        LIMIT,
        tokio_tungstenite::connect_async(format!("ws://{addr}/ws/late")),
    )
    .await
    .expect("handshake timed out")
    .expect("handshake failed");
    gw.signal("TERM");
    tokio::time::sleep(Duration::from_millis(500)).await;
    client.send(Message::text("still there?")).await.unwrap();
    let reply = timeout(LIMIT, client.next())
        .await
        .expect("no echo")
        .unwrap()
        .unwrap();
    assert_eq!(reply, Message::text("still there?"));
    assert_eq!(gw.wait_exit(Duration::from_secs(10)), Some(0));
}

/// A concurrency limit counts an upgraded connection as in flight until the
/// tunnel closes, not only until the 101 is sent.
#[tokio::test]
async fn a_concurrency_limit_holds_a_slot_for_the_tunnels_life() {
    let echo = ws::echo().await;
    let yaml = format!(
        "listeners: [{{ name: main, address: \"127.0.0.1:0\" }}]\nupstreams:\n  ws: {{ endpoints: [\"{}\"] }}\nroutes:\n  - name: ws\n    match: {{ prefix: /ws }}\n    upstream: ws\n    rate_limit: [{{ key: ip, concurrency: 1 }}]\n",
        echo.addr
    );
    let mut gw = Gateway::start(&yaml);
    let url = format!("ws://{}/ws", gw.addr("main"));
    let connect = || async {
        timeout(LIMIT, tokio_tungstenite::connect_async(url.as_str()))
            .await
            .expect("handshake timed out")
    };
    let (mut first, resp) = connect().await.expect("the first tunnel opens");
    assert_eq!(resp.status(), 101);
    first.send(Message::text("ping")).await.unwrap();
    assert_eq!(
        timeout(LIMIT, first.next())
            .await
            .unwrap()
            .unwrap()
            .unwrap(),
        Message::text("ping")
    );
    match connect().await {
        Err(WsError::Http(resp)) => assert_eq!(resp.status(), 429),
        other => panic!("a second tunnel while the first is open: {other:?}"),
    }
    first.close(None).await.unwrap();
    while let Ok(Some(Ok(_))) = timeout(LIMIT, first.next()).await {}
    drop(first);
    // The slot comes back once the tunnel has closed.
    let mut reopened = false;
    for _ in 0..50 {
        if let Ok((mut again, _)) = connect().await {
            again.close(None).await.unwrap();
            reopened = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(reopened, "the slot was never given back");
}

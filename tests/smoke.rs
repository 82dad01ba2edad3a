//! The quickest end-to-end check: a proxied route and a direct response.

mod support;

use support::{Gateway, get_path, upstream};

#[tokio::test]
async fn proxies_and_answers_directly() {
    let up = upstream::named("alpha").await;
    let mut gw = Gateway::start(&format!(
        r#"
listeners: [{{ name: main, address: "127.0.0.1:0" }}]
upstreams:
  app: {{ endpoints: ["{}"] }}
routes:
  - name: hello
    match: {{ path: /hello }}
    respond: {{ status: 200, body: "hi" }}
  - name: app
    match: {{ prefix: /app }}
    upstream: app
"#,
        up.addr
    ));
    let addr = gw.addr("main");
    let r = get_path(addr, "/hello").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "hi");
    let r = get_path(addr, "/app/x").await;
    assert_eq!(r.status, 200);
    assert_eq!(r.text(), "alpha");
    assert_eq!(up.seen()[0].uri.path(), "/app/x");
    let r = get_path(addr, "/none").await;
    assert_eq!(r.status, 404);
    assert_eq!(r.header("content-type"), Some("application/problem+json"));
}

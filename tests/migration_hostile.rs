//! A misbehaving predecessor during the live-connection phase, played by the test itself with the baton-migrate
//! API, against a real `baton run` taking over: fds that are not connected TCP sockets, unknown listeners and
//! kinds are refused (the old side keeps them), a real connection with unparsed bytes is served, and the new
//! instance keeps serving throughout.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::io::{Read, Write};
use std::os::fd::AsFd;
use std::time::Duration;

use baton_migrate::{ConnVerdict, OutgoingConn};
use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_connections_from_a_predecessor_are_refused_good_ones_served() {
    let dir = TestDir::new();
    let upstream = HttpUpstream::start().await;
    // The "old instance" is this test: it holds the listener and serving.lock.
    // Garbage where the config and counters should be: ignored, never fatal.
    let state = serde_json::json!({"config": 7, "counters": {"listeners": [1, 2, {"x": -1}]}});
    let PlayedHandover {
        mut new,
        sender: mut migration,
        addr,
        admin,
    } = played_handover(&dir, upstream.addr, state).await;

    // A real client connection, accepted by "us", with a whole request already read (unparsed) by "us".
    let relay_listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let mut client = std::net::TcpStream::connect(relay_listener.local_addr().expect("addr")).expect("connect");
    let (served, _) = relay_listener.accept().expect("accept");
    let (pipe_r, _pipe_w) = nix::unistd::pipe().expect("pipe");
    let udp = std::net::UdpSocket::bind("127.0.0.1:0").expect("udp");
    let (unix_a, _unix_b) = std::os::unix::net::UnixStream::pair().expect("pair");
    let good_listener_fd = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let request = b"GET /hello HTTP/1.1\r\nHost: test\r\n\r\n".to_vec();
    let batch = [
        departing("http1", "ingress", vec![pipe_r.as_fd()], vec![request.clone()]),
        departing("http1", "ingress", vec![udp.as_fd()], vec![]),
        departing(
            "tcp",
            "ingress",
            vec![unix_a.as_fd(), served.as_fd()],
            vec![vec![], vec![]],
        ),
        departing("http1", "ingress", vec![good_listener_fd.as_fd()], vec![]),
        departing("http1", "no-such-listener", vec![served.as_fd()], vec![]),
        departing("websocket", "ingress", vec![served.as_fd()], vec![]),
        departing("http1", "ingress", vec![served.as_fd()], vec![request]),
    ];
    let verdicts = migration.send(&batch).await.expect("acknowledged");
    let refused = ConnVerdict::Refused;
    assert_eq!(
        verdicts,
        [refused, refused, refused, refused, refused, refused, ConnVerdict::Taken],
        "only the connected TCP socket of a known listener and kind may be adopted"
    );
    migration
        .end(serde_json::json!({"counters": "not an object"}))
        .await
        .expect("end");
    drop(served); // ours; the new instance holds its own copy

    // The adopted connection: the request we had read is answered by the new instance, on the same connection.
    client.set_read_timeout(Some(Duration::from_secs(5))).expect("timeout");
    let mut got = Vec::new();
    let mut buf = [0u8; 4096];
    while !got.windows(4).any(|w| w == b"\r\n\r\n") || !got.ends_with(b"ok") {
        let n = client
            .read(&mut buf)
            .expect("the new instance answers the handed-over request");
        assert!(n > 0, "closed before the response: {:?}", String::from_utf8_lossy(&got));
        got.extend_from_slice(&buf[..n]);
    }
    let text = String::from_utf8_lossy(&got);
    assert!(text.starts_with("HTTP/1.1 200"), "{text}");
    // And the connection stays a keep-alive one.
    client
        .write_all(b"GET /again HTTP/1.1\r\nHost: test\r\n\r\n")
        .expect("second request");
    let n = client.read(&mut buf).expect("second response");
    assert!(String::from_utf8_lossy(&buf[..n]).starts_with("HTTP/1.1 200"));

    // The new instance serves on, on the inherited listener and its admin port.
    proxy_ok(addr).await.expect("the new instance serves the listener");
    let st = status(admin).await.expect("status");
    assert_eq!(st["phase"], "serving", "{st}");
    new.assert_running();
}

fn departing<'a>(
    kind: &str,
    listener: &str,
    fds: Vec<std::os::fd::BorrowedFd<'a>>,
    buffers: Vec<Vec<u8>>,
) -> OutgoingConn<'a> {
    OutgoingConn {
        kind: kind.into(),
        listener: listener.into(),
        fds,
        buffers,
    }
}

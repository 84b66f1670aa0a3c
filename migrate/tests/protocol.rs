//! Both sides of the handoff in one process, over a real reconfig socket in a temp dir, with real TCP
//! listeners on loopback.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use baton_migrate::wire::{self, Hello, Message, PeerRole};
use baton_migrate::{
    conn_fits, hand_over, watch_takeover, ConnVerdict, Identity, Inheritance, ListenerTag, Offered, Ready,
    SuccessorWatch, Takeover, TakeoverOptions, UdsDir,
};
use tokio::io::AsyncWriteExt;

fn me(generation: u64, version: &str) -> Identity {
    Identity {
        generation,
        version: version.into(),
    }
}

fn opts() -> TakeoverOptions {
    let mut o = TakeoverOptions::new(Duration::from_secs(5));
    o.linger = Duration::from_millis(200);
    o
}

fn tag(name: &str, l: &TcpListener) -> ListenerTag {
    ListenerTag {
        name: name.into(),
        address: l.local_addr().expect("addr").to_string(),
        kind: "tcp".into(),
    }
}

/// Old side: hands over listener `a` (`l`) with no application state and commits; the session for live
/// connections.
async fn commit_live(stream: tokio::net::UnixStream, l: &TcpListener) -> baton_migrate::ConnSender {
    use baton_migrate::{hand_over_live, Offer};
    let offered = [Offered {
        tag: tag("a", l),
        fd: l.as_fd(),
    }];
    let offer = Offer {
        listeners: &offered,
        state: serde_json::Value::Null,
        timeout: Duration::from_secs(5),
        crash_at: None,
    };
    let (_, sender) = hand_over_live(stream, &me(1, "v1"), offer).await.expect("commit");
    sender.expect("protocol 2")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn listeners_move_with_their_queued_connections() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = UdsDir::new(tmp.path());
    dir.ensure().expect("dir");
    let serving = dir.hold_serving().expect("serving lock");

    let a = TcpListener::bind("127.0.0.1:0").expect("bind");
    let b = TcpListener::bind("127.0.0.1:0").expect("bind");
    let (a_addr, b_addr) = (a.local_addr().expect("addr"), b.local_addr().expect("addr"));
    // A client that connected before the handoff and was never accepted by the old instance.
    let mut queued = TcpStream::connect(a_addr).expect("connect");

    let mut takeover = Takeover::start(&dir, me(1, "v2"), opts()).expect("takeover");
    let mut watch = SuccessorWatch::new(&dir);
    let stream = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("successor seen");

    // Set by the new side's commit callback: when it starts accepting.
    let accepting = Arc::new(AtomicBool::new(false));
    let old = tokio::spawn({
        let accepting = accepting.clone();
        async move {
            let offered = vec![
                Offered {
                    tag: tag("a", &a),
                    fd: a.as_fd(),
                },
                Offered {
                    tag: tag("b", &b),
                    fd: b.as_fd(),
                },
            ];
            let committed = hand_over(stream, &me(7, "v1"), &offered, Duration::from_secs(5)).await;
            // The successor accepts before the old one stops: its callback ran before DONE went out.
            let successor_accepting = accepting.load(Ordering::SeqCst);
            drop(serving);
            // The old closes its copies; the queue must survive in the successor's.
            drop((a, b));
            committed.map(|c| (c, successor_accepting))
        }
    });

    let session = match takeover.receive().await.expect("receive") {
        Inheritance::Peer(s) => s,
        Inheritance::NoPeer => panic!("a live peer holds serving.lock"),
    };
    assert_eq!(session.peer.generation, 7);
    assert_eq!(session.peer.version, "v1");
    let mut session = session;
    let inherited = std::mem::take(&mut session.listeners);
    assert_eq!(inherited.len(), 2);
    assert_eq!(inherited[0].tag.name, "a");
    assert_eq!(inherited[0].check, Ok(a_addr));
    assert_eq!(inherited[1].check, Ok(b_addr));
    let ready = Ready {
        adopted: vec!["a".into(), "b".into()],
        ..Ready::default()
    };
    session
        .commit(ready.clone(), || {
            assert!(!accepting.swap(true, Ordering::SeqCst), "the accept callback runs once");
        })
        .await
        .expect("commit");
    let (committed, successor_accepting) = old.await.expect("join").expect("old side committed");
    assert!(
        successor_accepting,
        "the old side had DONE before the new side was told to accept"
    );
    assert_eq!(committed.ready, ready);
    assert_eq!(committed.generation, 8);

    let watcher = tokio::spawn({
        let dir = dir.clone();
        async move { watch_takeover(&dir, Duration::from_secs(2)).await }
    });
    takeover.finish(true, "complete", "all adopted").await;
    let report = watcher.await.expect("join").expect("watcher gets the final report");
    assert!(report.done && report.ok, "{report:?}");
    assert_eq!(report.detail, "all adopted");
    assert!(!dir.reconfig_path().exists(), "reconfig.sock removed by its owner");

    // The queued client is served through the inherited socket.
    let a_new = TcpListener::from(inherited.into_iter().next().expect("a").fd);
    queued.write_all(b"ping").expect("write");
    let (mut served, _) = a_new.accept().expect("queued connection survived");
    let mut buf = [0u8; 4];
    served.read_exact(&mut buf).expect("read");
    assert_eq!(&buf, b"ping");
}

#[tokio::test]
async fn no_live_peer_means_bind_fresh_at_once() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = UdsDir::new(tmp.path().join("created"));
    let mut takeover = Takeover::start(&dir, me(1, "v2"), opts()).expect("takeover creates the dir");
    let t0 = std::time::Instant::now();
    assert!(matches!(
        takeover.receive().await.expect("receive"),
        Inheritance::NoPeer
    ));
    assert!(t0.elapsed() < Duration::from_millis(500));
    let watcher = tokio::spawn({
        let dir = dir.clone();
        async move { watch_takeover(&dir, Duration::from_secs(2)).await }
    });
    takeover.finish(true, "fresh", "no peer").await;
    let report = watcher.await.expect("join").expect("report");
    assert_eq!(report.phase, "fresh");
}

#[tokio::test]
async fn reconfig_socket_has_one_owner_and_stale_files_are_cleaned() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = UdsDir::new(tmp.path());
    std::fs::write(dir.reconfig_path(), b"stale").expect("stale file");
    let first = dir.bind_reconfig().expect("stale file removed, socket bound");
    let mode = std::fs::metadata(dir.reconfig_path()).expect("meta");
    assert_eq!(
        std::os::unix::fs::PermissionsExt::mode(&mode.permissions()) & 0o777,
        0o600
    );
    let second = dir.bind_reconfig().expect_err("second owner refused");
    assert!(second.to_string().contains("racing"), "{second}");
    assert!(
        dir.reconfig_path().exists(),
        "the loser did not unlink the owner's socket"
    );
    drop(first);
    assert!(!dir.reconfig_path().exists());
    let _third = dir.bind_reconfig().expect("free again");
}

#[tokio::test]
async fn serving_lock_is_seen_by_a_probe() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = UdsDir::new(tmp.path());
    assert!(!dir.peer_serving().expect("probe"));
    let a = dir.hold_serving().expect("hold");
    let b = dir.hold_serving().expect("shared holds coexist");
    assert!(dir.peer_serving().expect("probe"));
    drop(a);
    assert!(dir.peer_serving().expect("probe"));
    drop(b);
    assert!(!dir.peer_serving().expect("probe"));
}

#[tokio::test]
async fn garbage_from_a_sender_is_rejected_without_harm() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = UdsDir::new(tmp.path());
    dir.ensure().expect("dir");
    let _serving = dir.hold_serving().expect("a 'live' peer");
    let mut takeover = Takeover::start(&dir, me(1, "v2"), opts()).expect("takeover");

    let mut stream = tokio::net::UnixStream::connect(dir.reconfig_path())
        .await
        .expect("connect");
    let hello = Message::Hello(Hello {
        role: PeerRole::Sender,
        min_protocol: 1,
        max_protocol: 1,
        generation: 1,
        version: "evil".into(),
    });
    stream.write_all(&hello.encode().expect("encode")).await.expect("write");
    // Then a frame claiming 4 GiB.
    stream.write_all(&[0xff, 0xff, 0xff, 0xff, 1, 2]).await.expect("write");
    let err = match takeover.receive().await {
        Err(e) => e,
        Ok(_) => panic!("garbage accepted"),
    };
    assert_eq!(err.step, "listeners");
    assert!(err.to_string().contains("exceeds"), "{err}");
}

#[tokio::test]
async fn protocol_version_skew_is_refused_cleanly() {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = UdsDir::new(tmp.path());
    dir.ensure().expect("dir");
    let _serving = dir.hold_serving().expect("a 'live' peer");
    let mut takeover = Takeover::start(&dir, me(1, "v2"), opts()).expect("takeover");
    let future_peer = tokio::spawn({
        let path = dir.reconfig_path();
        async move {
            let mut stream = tokio::net::UnixStream::connect(path).await.expect("connect");
            let hello = Message::Hello(Hello {
                role: PeerRole::Sender,
                min_protocol: 9,
                max_protocol: 12,
                generation: 1,
                version: "v9".into(),
            });
            stream.write_all(&hello.encode().expect("encode")).await.expect("write");
            let mut buf = Vec::new();
            let _ = tokio::io::AsyncReadExt::read_to_end(&mut stream, &mut buf).await;
            wire::decode(&buf).expect("decodable").map(|(m, _)| m)
        }
    });
    let err = match takeover.receive().await {
        Err(e) => e,
        Ok(_) => panic!("skewed peer accepted"),
    };
    assert!(err.to_string().contains("no common protocol version"), "{err}");
    drop(takeover);
    match future_peer.await.expect("join") {
        Some(Message::Refuse { reason }) => assert!(reason.contains("protocol"), "{reason}"),
        other => panic!("expected REFUSE, got {other:?}"),
    }
}

/// Protocol 2: the old side's state arrives with the listeners; after the commit, live connections travel with
/// their buffers, each accepted or refused by id; CONNS_END carries the final state.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_connections_move_after_the_commit() {
    use baton_migrate::{hand_over_live, Offer, OutgoingConn, Received};

    let (_tmp, dir, serving, l, mut conns) = old_with_connections(2);
    let (mut client_b, served_b) = conns.pop().expect("b");
    let (mut client_a, served_a) = conns.pop().expect("a");

    let mut takeover = Takeover::start(&dir, me(1, "v2"), opts()).expect("takeover");
    let mut watch = SuccessorWatch::new(&dir);
    let stream = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("successor seen");
    let old = tokio::spawn(async move {
        let offered = [Offered {
            tag: tag("a", &l),
            fd: l.as_fd(),
        }];
        let offer = Offer {
            listeners: &offered,
            state: serde_json::json!({"counters": 41}),
            timeout: Duration::from_secs(5),
            crash_at: None,
        };
        let (committed, sender) = hand_over_live(stream, &me(7, "v1"), offer).await.expect("commit");
        drop(serving);
        let mut sender = sender.expect("both speak protocol 2");
        let batch = [
            OutgoingConn {
                kind: "http1".into(),
                listener: "a".into(),
                fds: vec![served_a.as_fd()],
                buffers: vec![b"GET / HTTP/1.1\r\n".to_vec()],
            },
            OutgoingConn {
                kind: "unknown".into(),
                listener: "a".into(),
                fds: vec![served_b.as_fd()],
                buffers: vec![],
            },
        ];
        let taken = sender.send(&batch).await.expect("acknowledged");
        sender.end(serde_json::json!({"counters": 42})).await.expect("end");
        (committed.generation, taken, served_a, served_b)
    });

    let (peer_state, mut receiver) = commit_live_new(&mut takeover).await;
    assert_eq!(peer_state, Some(serde_json::json!({"counters": 41})));
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let Received::Conns(conns) = receiver.next(deadline).await.expect("conns") else {
        panic!("expected connections first");
    };
    assert_eq!(conns.len(), 2);
    assert_eq!(conns[0].tag.kind, "http1");
    assert_eq!(conns[0].tag.buffers, [b"GET / HTTP/1.1\r\n".to_vec()]);
    assert_eq!(conns[1].tag.kind, "unknown");
    let mut conns = conns.into_iter();
    let a = conns.next().expect("a");
    let b = conns.next().expect("b");
    let (id_a, id_b) = (a.tag.id, b.tag.id);
    let mut adopted = TcpStream::from(a.fds.into_iter().next().expect("fd"));
    drop(b); // refused: our copy closed, the old keeps it
    receiver.ack(vec![id_a], vec![id_b], deadline).await.expect("ack");
    match receiver.next(deadline).await.expect("end") {
        Received::End(state) => assert_eq!(state, serde_json::json!({"counters": 42})),
        other => panic!("expected the end, got {other:?}"),
    }
    let (generation, taken, served_a, mut served_b) = old.await.expect("old side");
    assert_eq!(generation, 8);
    assert_eq!(taken, [ConnVerdict::Taken, ConnVerdict::Refused]);
    drop(served_a); // the old closes its copy of what was taken: the connection lives on in the new
                    // The adopted connection is the same socket: bytes flow both ways with the new instance.
    client_a.write_all(b"ping").expect("write");
    let mut got = [0u8; 4];
    adopted.read_exact(&mut got).expect("read in the new instance");
    assert_eq!(&got, b"ping");
    adopted.write_all(b"pong").expect("write");
    client_a.read_exact(&mut got).expect("read from the new instance");
    assert_eq!(&got, b"pong");
    // The refused one still works with the old instance.
    client_b.write_all(b"back").expect("write");
    served_b
        .read_exact(&mut got)
        .expect("the old still serves the refused connection");
    assert_eq!(&got, b"back");
}

/// What the protocol cannot carry is not sent, and `send` says why per connection: buffers too large for one frame
/// ([`ConnVerdict::TooLarge`]), no fd ([`ConnVerdict::BadFds`]); the rest of the batch goes all the same, and the
/// successor sees only that.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unsendable_connections_are_named_not_sent() {
    use baton_migrate::{OutgoingConn, Received};

    let (_tmp, dir, serving, l, mut conns) = old_with_connections(2);
    let (_client_b, served_b) = conns.pop().expect("b");
    let (_client_a, served_a) = conns.pop().expect("a");
    let big = 500 * 1024;
    assert!(conn_fits(&[big]) && !conn_fits(&[big, big]));

    let mut takeover = Takeover::start(&dir, me(1, "v2"), opts()).expect("takeover");
    let mut watch = SuccessorWatch::new(&dir);
    let stream = tokio::time::timeout(Duration::from_secs(2), watch.next())
        .await
        .expect("successor seen");
    let old = tokio::spawn(async move {
        let mut sender = commit_live(stream, &l).await;
        drop(serving);
        let batch = [
            OutgoingConn {
                kind: "tcp".into(),
                listener: "a".into(),
                fds: vec![served_a.as_fd(), served_b.as_fd()],
                buffers: vec![vec![7; big], vec![8; big]],
            },
            OutgoingConn {
                kind: "tcp".into(),
                listener: "a".into(),
                fds: vec![],
                buffers: vec![],
            },
            OutgoingConn {
                kind: "tcp".into(),
                listener: "a".into(),
                fds: vec![served_b.as_fd()],
                buffers: vec![vec![9; big]],
            },
        ];
        let verdicts = sender.send(&batch).await.expect("acknowledged");
        sender.end(serde_json::Value::Null).await.expect("end");
        verdicts
    });

    let (_, mut receiver) = commit_live_new(&mut takeover).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let Received::Conns(conns) = receiver.next(deadline).await.expect("conns") else {
        panic!("expected connections first");
    };
    assert_eq!(conns.len(), 1, "only the connection that fits is sent");
    assert_eq!(conns[0].tag.buffers, [vec![9; big]]);
    receiver
        .ack(vec![conns[0].tag.id], vec![], deadline)
        .await
        .expect("ack");
    assert!(matches!(receiver.next(deadline).await, Ok(Received::End(_))));
    let verdicts = old.await.expect("old side");
    assert_eq!(
        verdicts,
        [ConnVerdict::TooLarge, ConnVerdict::BadFds, ConnVerdict::Taken]
    );
}

/// A successor that dies before acknowledging: the old side gets an error and still owns every connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unacknowledged_connections_stay_with_the_old_instance() {
    use baton_migrate::{HandoffError, OutgoingConn, Received};

    let (_tmp, dir, serving, l, mut conns) = old_with_connections(1);
    let (mut client, served) = conns.pop().expect("connection");

    let mut o = opts();
    o.crash_at = Some("conns-before-ack".into());
    let mut takeover = Takeover::start(&dir, me(1, "v2"), o).expect("takeover");
    let mut watch = SuccessorWatch::new(&dir);
    let stream = watch.next().await;
    let old = tokio::spawn(async move {
        let mut sender = commit_live(stream, &l).await;
        drop(serving);
        let batch = [OutgoingConn {
            kind: "tcp".into(),
            listener: "a".into(),
            fds: vec![served.as_fd()],
            buffers: vec![],
        }];
        let sent = sender.send(&batch).await;
        (sent.map_err(|e| e.to_string()), served)
    });
    let (_, mut receiver) = commit_live_new(&mut takeover).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    match receiver.next(deadline).await {
        Err(HandoffError::Failpoint("conns-before-ack")) => {}
        Ok(Received::Conns(_)) => panic!("the failpoint should have fired"),
        other => panic!("unexpected {other:?}"),
    }
    drop(receiver); // "crashes": the session closes without an acknowledgement
    drop(takeover);
    let (sent, mut served) = old.await.expect("old side");
    assert!(sent.is_err(), "an unacknowledged batch must be an error: {sent:?}");
    client.write_all(b"still").expect("write");
    let mut got = [0u8; 5];
    served
        .read_exact(&mut got)
        .expect("the old instance still owns the connection");
    assert_eq!(&got, b"still");
}

/// A batch larger than one frame, whose successor acknowledges the first frame and dies before acknowledging the
/// second: the error says which connections it took (it serves them), and only the others stay with the old side.
/// Before, the whole batch went back to the old side, and the first frame's connections were served twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failure_after_a_partial_acknowledgement_leaves_only_the_rest_with_the_old_instance() {
    use baton_migrate::{OutgoingConn, Received, SendError};

    let n = baton_migrate::wire::MAX_FDS_PER_FRAME + 6; // two frames
    let (_tmp, dir, serving, l, conns) = old_with_connections(n);
    let (clients, served): (Vec<TcpStream>, Vec<TcpStream>) = conns.into_iter().unzip();

    let mut takeover = Takeover::start(&dir, me(1, "v2"), opts()).expect("takeover");
    let mut watch = SuccessorWatch::new(&dir);
    let stream = watch.next().await;
    let old = tokio::spawn(async move {
        let mut sender = commit_live(stream, &l).await;
        drop(serving);
        let batch: Vec<OutgoingConn<'_>> = served
            .iter()
            .map(|s| OutgoingConn {
                kind: "tcp".into(),
                listener: "a".into(),
                fds: vec![s.as_fd()],
                buffers: vec![],
            })
            .collect();
        let sent = sender.send(&batch).await;
        let verdicts = match sent {
            Err(SendError { error, verdicts }) => {
                assert!(!error.to_string().is_empty());
                verdicts
            }
            Ok(v) => panic!("the second frame was never acknowledged, yet: {v:?}"),
        };
        (verdicts, served)
    });
    let (_, mut receiver) = commit_live_new(&mut takeover).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(5);
    let Ok(Received::Conns(first)) = receiver.next(deadline).await else {
        panic!("a first frame");
    };
    let first_len = first.len();
    assert!(first_len < n, "the batch spans frames");
    let mut adopted = Vec::new();
    let ids = first.iter().map(|c| c.tag.id).collect();
    for c in first {
        adopted.extend(c.fds);
    }
    receiver.ack(ids, Vec::new(), deadline).await.expect("ack");
    let Ok(Received::Conns(_second)) = receiver.next(deadline).await else {
        panic!("a second frame");
    };
    drop(receiver); // dies before acknowledging the second frame
    drop(takeover);

    let (verdicts, mut served) = old.await.expect("old side");
    let taken = verdicts.iter().filter(|v| v.taken()).count();
    assert_eq!(taken, first_len, "{verdicts:?}");
    assert!(verdicts[..first_len].iter().all(|v| v.taken()));
    assert!(verdicts[first_len..].iter().all(|v| !v.taken()));
    // Taken: the successor's copy reaches the client. Not taken: the old side's copy still works.
    let mut taken_fd = std::net::TcpStream::from(adopted.swap_remove(0));
    taken_fd.write_all(b"new").expect("write");
    let mut clients = clients;
    let mut got = [0u8; 3];
    clients[0].read_exact(&mut got).expect("read");
    assert_eq!(&got, b"new");
    let last = n - 1;
    clients[last].write_all(b"old").expect("write");
    served[last]
        .read_exact(&mut got)
        .expect("the old instance still owns it");
    assert_eq!(&got, b"old");
}

/// The new side of the live-connection tests: takes the one listener the (live) predecessor offers and commits
/// with protocol 2; the predecessor's state, and the receiver of its connections.
async fn commit_live_new(takeover: &mut Takeover) -> (Option<serde_json::Value>, baton_migrate::ConnReceiver) {
    let Inheritance::Peer(mut session) = takeover.receive().await.expect("receive") else {
        panic!("a live peer holds serving.lock");
    };
    let peer_state = session.peer_state.clone();
    let inherited = session.listeners.pop().expect("listener");
    let ready = Ready {
        adopted: vec![inherited.tag.name.clone()],
        ..Ready::default()
    };
    let receiver = session
        .commit_live(ready, || {})
        .await
        .expect("commit")
        .expect("protocol 2");
    (peer_state, receiver)
}

/// An old instance's side for the live-connection tests: a uds dir (in `tmp`) with serving.lock held, a listener,
/// and `n` accepted connections with their clients.
#[allow(clippy::type_complexity)]
fn old_with_connections(
    n: usize,
) -> (
    tempfile::TempDir,
    UdsDir,
    baton_migrate::ServingLock,
    TcpListener,
    Vec<(TcpStream, TcpStream)>,
) {
    let tmp = tempfile::tempdir().expect("tempdir");
    let dir = UdsDir::new(tmp.path());
    dir.ensure().expect("dir");
    let serving = dir.hold_serving().expect("serving lock");
    let l = TcpListener::bind("127.0.0.1:0").expect("bind");
    let addr = l.local_addr().expect("addr");
    let conns = (0..n)
        .map(|_| {
            let client = TcpStream::connect(addr).expect("connect");
            let (served, _) = l.accept().expect("accept");
            (client, served)
        })
        .collect();
    (tmp, dir, serving, l, conns)
}

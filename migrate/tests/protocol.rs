//! Both sides of the handoff in one process, over a real reconfig socket in a temp dir, with real TCP
//! listeners on loopback.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use baton_migrate::wire::{self, Hello, Message, PeerRole};
use baton_migrate::{
    hand_over, watch_takeover, Identity, Inheritance, ListenerTag, Offered, Ready, SuccessorWatch, Takeover,
    TakeoverOptions, UdsDir,
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

    let old = tokio::spawn(async move {
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
        drop(serving);
        // The old closes its copies; the queue must survive in the successor's.
        drop((a, b));
        committed
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
    session.commit(ready.clone()).await.expect("commit");
    let committed = old.await.expect("join").expect("old side committed");
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

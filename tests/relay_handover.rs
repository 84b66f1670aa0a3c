//! A TCP relay moves at a hot upgrade whatever it holds: an upstream writes megabytes to a client that does not
//! read (and the client to an upstream that does not read), so the old instance holds bytes it has read but cannot
//! write; the relay must still be handed over with them, and the old instance exit long before its drain deadline.
//! When both ends read again, every byte arrives once, in order, and each stream ends with a clean EOF.

// Helpers outside #[test] functions unwrap too: a panic is how a test fails.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::tcp::{OwnedReadHalf, OwnedWriteHalf};
use tokio::net::TcpSocket;
use tokio::task::JoinHandle;

/// SO_RCVBUF of the test's client and upstream sockets.
const SMALL_RCVBUF: u32 = 64 * 1024;
/// Bytes per write: large writes make large socket buffers (page-sized fragments), so that one splice(2) can fill
/// a whole pipe, as on a real network with GRO; small ones fill each pipe slot with a small fragment.
const WRITE_CHUNK: u64 = 1 << 20;
/// Longest the reading after the upgrade may take (it is a few megabytes over loopback).
const READ_DEADLINE: Duration = Duration::from_secs(30);

/// The byte at `offset` of stream `seed`: splitmix64 of `offset / 8`, so that a lost, duplicated or reordered
/// byte anywhere is detected, and the two directions differ.
fn pattern_byte(seed: u64, offset: u64) -> u8 {
    let mut z = (offset / 8).wrapping_add(seed).wrapping_add(0x9E37_79B9_7F4A_7C15);
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^= z >> 31;
    z.to_le_bytes()[(offset % 8) as usize]
}

/// Writes `total` bytes of stream `seed`, counting them in `written`, then half-closes.
fn spawn_writer(
    mut wr: OwnedWriteHalf,
    seed: u64,
    total: u64,
    written: Arc<AtomicU64>,
) -> JoinHandle<Result<(), String>> {
    tokio::spawn(async move {
        let mut offset = 0u64;
        while offset < total {
            let len = WRITE_CHUNK.min(total - offset);
            let chunk: Vec<u8> = (offset..offset + len).map(|o| pattern_byte(seed, o)).collect();
            wr.write_all(&chunk)
                .await
                .map_err(|e| format!("write failed after {offset} bytes: {e}"))?;
            offset += len;
            written.store(offset, Ordering::Relaxed);
        }
        wr.shutdown()
            .await
            .map_err(|e| format!("half-close failed after {offset} bytes: {e}"))
    })
}

/// Reads to EOF, checking every byte against stream `seed`; the number of bytes read.
async fn read_all(mut rd: OwnedReadHalf, seed: u64) -> Result<u64, String> {
    let mut buf = vec![0u8; 64 * 1024];
    let mut offset = 0u64;
    loop {
        let n = rd
            .read(&mut buf)
            .await
            .map_err(|e| format!("read failed after {offset} bytes: {e}"))?;
        if n == 0 {
            return Ok(offset);
        }
        for (k, &b) in buf[..n].iter().enumerate() {
            let at = offset + k as u64;
            let want = pattern_byte(seed, at);
            if b != want {
                return Err(format!("byte {at} is {b:#04x}, but {want:#04x} was sent there"));
            }
        }
        offset += n as u64;
    }
}

/// Waits until neither counter moved for 500 ms (both writers are blocked, or done), at most 10 s.
async fn until_stalled(counters: &[&AtomicU64]) {
    let read = || counters.iter().map(|c| c.load(Ordering::Relaxed)).collect::<Vec<_>>();
    let deadline = Instant::now() + Duration::from_secs(10);
    let mut last = read();
    let mut since = Instant::now();
    while Instant::now() < deadline && since.elapsed() < Duration::from_millis(500) {
        tokio::time::sleep(Duration::from_millis(50)).await;
        let now = read();
        if now != last {
            (last, since) = (now, Instant::now());
        }
    }
}

/// Through a `tcp` listener, the upstream writes `total` bytes to a client that does not read, and the client
/// writes `total` bytes to an upstream that does not read. Then a hot upgrade (old drain timeout 60 s): the relay
/// must move with what the old instance holds, so the old instance exits within [`OLD_EXIT`]. Then both read:
/// every byte arrives intact, followed by EOF, and the new instance is the one serving.
async fn relay_moves_with_what_it_holds(total: u64) {
    // Small receive buffers at both ends (no autotuning): what they do not read piles up in baton, not in them.
    let upstream = {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SMALL_RCVBUF).unwrap();
        socket.bind("127.0.0.1:0".parse().unwrap()).expect("bind the upstream");
        socket.listen(16).unwrap()
    };
    let upstream_addr = upstream.local_addr().unwrap();
    let dir = TestDir::new();
    let first = start_first(&dir, 1, |listeners, admin, uds| {
        Config::default()
            .listener("raw", listeners[0], "tcp", "sink")
            .cluster("sink", &[upstream_addr])
            .admin(admin)
            .uds_dir(uds)
            .handoff("10s", "60s")
            .to_yaml()
    })
    .await;
    let mut old = first.baton;

    let client = {
        let socket = TcpSocket::new_v4().unwrap();
        socket.set_recv_buffer_size(SMALL_RCVBUF).unwrap();
        socket
            .connect(first.listeners[0])
            .await
            .expect("connect the tcp listener")
    };
    let (server, _) = tokio::time::timeout(Duration::from_secs(10), upstream.accept())
        .await
        .expect("baton did not connect to the upstream within 10 s")
        .expect("accept on the upstream");
    let (client_rd, client_wr) = client.into_split();
    let (server_rd, server_wr) = server.into_split();
    let (down, up) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (down_seed, up_seed) = (1, 2);
    let down_writer = spawn_writer(server_wr, down_seed, total, down.clone());
    let up_writer = spawn_writer(client_wr, up_seed, total, up.clone());
    // Nobody reads: the bytes pile up in the sockets and in the old instance's relay.
    until_stalled(&[&down, &up]).await;
    eprintln!(
        "before the upgrade: {} bytes written by the upstream, {} by the client, none read",
        down.load(Ordering::Relaxed),
        up.load(Ordering::Relaxed)
    );

    let new = take_over(&dir, &first.config, &first.uds, "gen-2", &takeover_env(2)).await;
    expect_old_exits(
        &mut old,
        OLD_EXIT,
        "its only connection is a TCP relay that should have moved with the bytes it held (its drain timeout is 60 s)",
    )
    .await;

    let (got_down, got_up) = tokio::time::timeout(READ_DEADLINE, async {
        tokio::join!(read_all(client_rd, down_seed), read_all(server_rd, up_seed))
    })
    .await
    .unwrap_or_else(|_| {
        panic!(
            "the streams did not end within {READ_DEADLINE:?} after the upgrade ({} and {} bytes written); new \
             instance stderr:\n{}",
            down.load(Ordering::Relaxed),
            up.load(Ordering::Relaxed),
            new.stderr()
        )
    });
    let got_down = got_down.unwrap_or_else(|e| panic!("upstream → client: {e}"));
    let got_up = got_up.unwrap_or_else(|e| panic!("client → upstream: {e}"));
    assert_eq!(got_down, total, "bytes the client read before EOF (upstream → client)");
    assert_eq!(got_up, total, "bytes the upstream read before EOF (client → upstream)");
    for (name, w) in [("upstream", down_writer), ("client", up_writer)] {
        let res = tokio::time::timeout(Duration::from_secs(5), w)
            .await
            .unwrap_or_else(|_| panic!("the {name}'s writer did not finish"))
            .expect("join a writer");
        res.unwrap_or_else(|e| panic!("the {name}'s writer: {e}"));
    }
    assert_serving(first.admin, new.pid(), 2).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_holding_2_mib_each_way_moves_at_upgrade() {
    relay_moves_with_what_it_holds(2 << 20).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn relay_holding_8_mib_each_way_moves_at_upgrade() {
    relay_moves_with_what_it_holds(8 << 20).await;
}

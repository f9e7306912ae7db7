//! End-to-end: slow and idle connections are cut by the header read, body read and idle
//! timeouts while `/health` keeps answering, and the connection cap holds and recovers.

mod http_support;

use std::io::Write;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use http_support::{parse_response, read_until_closed, Worker};

const STALLED_BODY: &[u8] =
    b"POST /execute HTTP/1.1\r\nHost: w\r\nContent-Type: application/json\r\n\
    Content-Length: 1000\r\n\r\n{\"job_id\":";

#[test]
fn slow_and_idle_connections_are_cut_while_health_answers() {
    let w = Worker::start(&[
        "--slots",
        "1",
        "--header-read-timeout-sec",
        "1",
        "--idle-timeout-sec",
        "2",
        "--body-read-timeout-sec",
        "1",
    ]);
    let t0 = Instant::now();
    // 64 bad clients, 16 of each kind.
    let mut silent: Vec<_> = (0..16).map(|_| w.raw(b"")).collect();
    let mut slow: Vec<_> = (0..16).map(|_| w.raw(b"G")).collect();
    let mut body: Vec<_> = (0..16).map(|_| w.raw(STALLED_BODY)).collect();
    let mut idle: Vec<_> = (0..16)
        .map(|_| w.raw(b"GET /health HTTP/1.1\r\nHost: w\r\n\r\n"))
        .collect();
    // The slow ones send a header byte every 300 ms, for ever.
    let stop = Arc::new(AtomicBool::new(false));
    let trickle = {
        let mut socks: Vec<_> = slow.iter().map(|s| s.try_clone().unwrap()).collect();
        let stop = stop.clone();
        std::thread::spawn(move || {
            let line = b"ET /health HTTP/1.1\r\nX-Slow: yes\r\n";
            for i in 0.. {
                if stop.load(Ordering::Relaxed) {
                    break;
                }
                for s in &mut socks {
                    let _ = s.write_all(&line[i % line.len()..][..1]);
                }
                std::thread::sleep(Duration::from_millis(300));
            }
        })
    };
    // /health answers throughout, each time within a second.
    let mut worst = Duration::ZERO;
    for _ in 0..15 {
        let t = Instant::now();
        assert_eq!(w.health()["status"], "ok");
        worst = worst.max(t.elapsed());
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(
        worst < Duration::from_secs(1),
        "/health took {worst:?} with 64 bad clients"
    );
    // Every bad connection is closed (about 1 s for headers and bodies, 2 s idle; the bound
    // is generous), the stalled bodies with a 408.
    let limit = Duration::from_secs(20);
    for (kind, socks) in [
        ("silent", &mut silent),
        ("slow headers", &mut slow),
        ("idle", &mut idle),
    ] {
        for s in socks.iter_mut() {
            let (_, closed) = read_until_closed(s, limit);
            assert!(
                closed,
                "a {kind} connection is still open after {:?}",
                t0.elapsed()
            );
        }
    }
    for s in &mut body {
        let (bytes, closed) = read_until_closed(s, limit);
        assert!(
            closed,
            "a stalled body is still open after {:?}",
            t0.elapsed()
        );
        let (status, json) = parse_response(&bytes).expect("a response");
        assert_eq!(status, 408, "{json}");
        assert_eq!(json["code"], "REQUEST_TIMEOUT", "{json}");
    }
    eprintln!(
        "64 bad connections closed {:.1} s after they opened; /health at worst {worst:?}",
        t0.elapsed().as_secs_f64()
    );
    stop.store(true, Ordering::Relaxed);
    let _ = trickle.join();
    let cut = w.metric("worker_connections_timed_out_total");
    assert!(cut >= 48.0, "{cut} connections cut");
    assert_eq!(w.wait_idle()["status"], "ok");
}

#[test]
fn the_connection_cap_closes_new_connections_and_recovers() {
    let w = Worker::start(&["--max-connections", "4", "--header-read-timeout-sec", "30"]);
    let held: Vec<_> = (0..4).map(|_| w.raw(b"")).collect();
    // The server takes the four; a fifth is closed as soon as it is accepted.
    std::thread::sleep(Duration::from_millis(200));
    let mut fifth = w.raw(b"");
    let (bytes, closed) = read_until_closed(&mut fifth, Duration::from_secs(10));
    assert!(closed && bytes.is_empty(), "{closed} {bytes:?}");
    drop(held);
    // Once they are gone, connections are served again.
    let t0 = Instant::now();
    loop {
        let mut s = w.raw(b"GET /health HTTP/1.1\r\nHost: w\r\nConnection: close\r\n\r\n");
        let (bytes, _) = read_until_closed(&mut s, Duration::from_secs(5));
        if parse_response(&bytes).is_some_and(|(status, _)| status == 200) {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "not served again");
        std::thread::sleep(Duration::from_millis(50));
    }
    assert!(w.metric("worker_connections_refused_total") >= 1.0);
}

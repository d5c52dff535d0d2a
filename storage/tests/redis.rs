//! The Redis backend against a real `redis-server` (started per test on a
//! free loopback port): credit arithmetic and its bound under racing
//! acquirers, window roll-over and expiry, per-request verdicts equal to
//! the node-local limiter's, and the faults (killed, stalled, restarted,
//! wrong password, bad settings).

use std::sync::Arc;
use std::time::{Duration, Instant};

use weir_limits::WindowPolicy;
use weir_limits::limiter::WindowSlot;
use weir_limits::store::{CreditAuthority, LimitId, SettleError, Usage};
use weir_storage::redis_store::{RedisAuthority, RedisClient, RedisCounter, RedisSettings};
use weir_testsupport::{RedisOptions, RedisServer};

const S: u64 = 1_000_000;
/// The response timeout of the fault tests.
const TIMEOUT: Duration = Duration::from_millis(300);
/// Generous upper bound of a failing call: never flakes, still proves no
/// hang.
const FAIL_BOUND: Duration = Duration::from_millis(1300);

fn id(name: &str) -> LimitId {
    LimitId {
        owner: format!("route:{name}").into(),
        plugin: "limit-count".into(),
        config: 0x1234,
    }
}

fn settings(server: &RedisServer) -> RedisSettings {
    RedisSettings {
        urls: vec![server.url()],
        connection_timeout: TIMEOUT,
        response_timeout: TIMEOUT,
        ..RedisSettings::default()
    }
}

fn fixed(limit: u64, window_us: u64) -> WindowPolicy {
    WindowPolicy {
        limit,
        window_us,
        sliding: false,
    }
}

#[tokio::test]
async fn credit_is_granted_given_back_and_reported_within_the_limit() {
    let server = RedisServer::start().unwrap();
    let auth = RedisAuthority::new(RedisClient::open(&settings(&server)).unwrap());
    let (lim, p, w) = (id("a"), fixed(10, 60 * S), 1_000 * S);

    let g = auth.acquire(&lim, "k", &p, w, 4).await.unwrap();
    assert_eq!((g.units, g.consumed, g.window_start_us), (4, 0, w));
    let g = auth.acquire(&lim, "k", &p, w, 10).await.unwrap();
    assert_eq!((g.units, g.consumed), (6, 4), "only what is left of 10");
    let g = auth.acquire(&lim, "k", &p, w, 1).await.unwrap();
    assert_eq!(
        (g.units, g.consumed),
        (0, 10),
        "nothing once the limit is out"
    );

    auth.release(&lim, "k", w, 3).await.unwrap();
    let g = auth.acquire(&lim, "k", &p, w, 5).await.unwrap();
    assert_eq!(
        (g.units, g.consumed),
        (3, 7),
        "given-back units are granted again"
    );

    // Reports count against the same window.
    auth.release(&lim, "k", w, 4).await.unwrap();
    let usage = [Usage {
        key: "k".into(),
        window_start_us: w,
        used: 3,
    }];
    auth.report(&lim, &usage).await.unwrap();
    let g = auth.acquire(&lim, "k", &p, w, 5).await.unwrap();
    assert_eq!((g.units, g.consumed), (1, 9));

    // Giving back more than was granted never goes below zero, and other
    // keys, windows and limits are separate.
    auth.release(&lim, "k", w, 1000).await.unwrap();
    let g = auth.acquire(&lim, "k", &p, w, 100).await.unwrap();
    assert_eq!((g.units, g.consumed), (7, 3), "only the reported 3 stay");
    for (l, k, win) in [
        (id("a"), "other", w),
        (id("a"), "k", w + 60 * S),
        (id("b"), "k", w),
    ] {
        let g = auth.acquire(&l, k, &p, win, 100).await.unwrap();
        assert_eq!((g.units, g.consumed), (10, 0), "{l} {k} {win}");
    }
    // A release of a key that was never granted creates nothing.
    auth.release(&lim, "never", w, 5).await.unwrap();
    let g = auth.acquire(&lim, "never", &p, w, 100).await.unwrap();
    assert_eq!(g.units, 10);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_acquirers_never_get_more_than_the_limit() {
    let server = RedisServer::start().unwrap();
    let auth = Arc::new(RedisAuthority::new(
        RedisClient::open(&settings(&server)).unwrap(),
    ));
    let (lim, p, w) = (id("race"), fixed(1000, 60 * S), 5_000 * S);
    let mut tasks = Vec::new();
    for t in 0..8u64 {
        let auth = auth.clone();
        let lim = lim.clone();
        tasks.push(tokio::spawn(async move {
            let mut got = 0;
            loop {
                // Uneven chunks, so the last grants are partial.
                let g = auth.acquire(&lim, "hot", &p, w, 7 + t).await.unwrap();
                if g.units == 0 {
                    return got;
                }
                assert!(g.units <= 7 + t);
                got += g.units;
            }
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 1000, "consumed + outstanding is exactly the limit");
}

#[tokio::test]
async fn a_window_rolls_over_and_its_key_expires() {
    let server = RedisServer::start().unwrap();
    let auth = RedisAuthority::new(RedisClient::open(&settings(&server)).unwrap());
    let lim = id("roll");
    let len = 10 * S;
    let w0 = 7_000 * S;
    let w1 = w0 + len;

    // Fixed: the next window is whole again.
    let p = fixed(10, len);
    assert_eq!(auth.acquire(&lim, "f", &p, w0, 10).await.unwrap().units, 10);
    assert_eq!(auth.acquire(&lim, "f", &p, w0, 1).await.unwrap().units, 0);
    assert_eq!(auth.acquire(&lim, "f", &p, w1, 10).await.unwrap().units, 10);

    // Sliding: the previous window's share still inside the sliding
    // window counts, and shrinks as the window goes on.
    let p = WindowPolicy { sliding: true, ..p };
    assert_eq!(
        auth.acquire_at(&lim, "s", &p, w0, 10, w0)
            .await
            .unwrap()
            .units,
        10
    );
    let g = auth.acquire_at(&lim, "s", &p, w1, 10, w1).await.unwrap();
    assert_eq!(
        (g.units, g.consumed),
        (0, 10),
        "all of the previous window counts at its end"
    );
    let g = auth
        .acquire_at(&lim, "s", &p, w1, 10, w1 + len * 3 / 10)
        .await
        .unwrap();
    assert_eq!(
        (g.units, g.consumed),
        (3, 7),
        "69% of the previous window counts (one step ahead), rounded up"
    );
    let g = auth
        .acquire_at(&lim, "s", &p, w1, 10, w1 + len - len / 100 - 1)
        .await
        .unwrap();
    assert_eq!(
        (g.units, g.consumed),
        (6, 4),
        "counted one step (1%) ahead, 1 µs before the end: ceil(10 × 1µs/10s) = 1 still counts"
    );

    // The key of a short window is gone soon after the window.
    let p = fixed(5, 100_000);
    auth.acquire(&lim, "short", &p, w0, 5).await.unwrap();
    let key = format!("weir:{{{lim}|short}}:w:{w0}");
    assert_eq!(server.command(&["EXISTS", &key]).unwrap(), ":1");
    let ttl = server.command(&["PTTL", &key]).unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!(
        (1..=1100).contains(&ttl),
        "window 100 ms + 1 s slack, got {ttl}"
    );
    // A sliding window's key lives one window more: the next window
    // reads it.
    let ps = WindowPolicy {
        sliding: true,
        ..fixed(5, 2 * S)
    };
    auth.acquire(&lim, "short-s", &ps, w0, 5).await.unwrap();
    let skey = format!("weir:{{{lim}|short-s}}:w:{w0}");
    let ttl = server.command(&["PTTL", &skey]).unwrap();
    let ttl: i64 = ttl.trim_start_matches(':').parse().unwrap();
    assert!(
        (3001..=5000).contains(&ttl),
        "two windows of 2 s + 1 s slack, got {ttl}"
    );
    weir_testsupport::wait_until("the window key expires", Duration::from_secs(5), || async {
        server.command(&["EXISTS", &key]).unwrap() == ":0"
    })
    .await;
}

/// A deterministic sequence of (time step, cost).
fn sequence(n: usize, seed: u64) -> Vec<(u64, u64)> {
    let mut x = seed;
    let mut next = || {
        x = x
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        x >> 33
    };
    (0..n)
        .map(|_| {
            // Mostly small steps, now and then a jump over one or more
            // windows.
            let step = match next() % 20 {
                0 => 25 * S + next() % (10 * S),
                1 => 11 * S,
                _ => next() % (S / 2),
            };
            (step, 1 + next() % 3)
        })
        .collect()
}

#[tokio::test]
async fn per_request_verdicts_match_the_local_limiter() {
    let server = RedisServer::start().unwrap();
    let counter = RedisCounter::new(RedisClient::open(&settings(&server)).unwrap());
    for (sliding, seed) in [(false, 1), (true, 2), (true, 3)] {
        let p = WindowPolicy {
            limit: 12,
            window_us: 10 * S,
            sliding,
        };
        let lim = id(&format!("match-{sliding}-{seed}"));
        let mut local = WindowSlot::default();
        let mut now = 1_700_000_000 * S;
        let (mut admitted, mut rejected) = (0, 0);
        for (i, (step, cost)) in sequence(300, seed).into_iter().enumerate() {
            now += step;
            let want = local.hit(&p, now, cost);
            let got = counter.hit_window(&lim, "k", &p, now, cost).await.unwrap();
            assert_eq!(
                got, want,
                "hit {i} at {now} cost {cost} (sliding {sliding})"
            );
            if want.admitted {
                admitted += 1;
            } else {
                rejected += 1;
            }
        }
        assert!(
            admitted > 20 && rejected > 20,
            "{admitted} admitted, {rejected} rejected"
        );
    }
}

#[tokio::test]
async fn a_killed_redis_fails_calls_quickly_and_a_restarted_one_serves_within_a_second() {
    let mut server = RedisServer::start().unwrap();
    let client = RedisClient::open(&settings(&server)).unwrap();
    let auth = RedisAuthority::new(client.clone());
    let counter = RedisCounter::new(client);
    let (lim, p, w) = (id("kill"), fixed(100, 60 * S), 9_000 * S);
    auth.acquire(&lim, "k", &p, w, 1).await.unwrap();

    server.kill().unwrap();
    for i in 0..5 {
        let t = Instant::now();
        let r = auth.acquire(&lim, "k", &p, w, 1).await;
        let took = t.elapsed();
        assert!(
            matches!(
                r,
                Err(SettleError::Unreachable(_) | SettleError::Timeout(_))
            ),
            "call {i}: {r:?}"
        );
        assert!(took < FAIL_BOUND, "call {i} took {took:?}");
        let t = Instant::now();
        let r = counter.hit_window(&lim, "k", &p, w, 1).await;
        assert!(r.is_err(), "{r:?}");
        assert!(t.elapsed() < FAIL_BOUND, "hit {i} took {:?}", t.elapsed());
    }

    server.restart().unwrap();
    let back = Instant::now();
    loop {
        match auth.acquire(&lim, "k", &p, w, 1).await {
            // A new, empty Redis: the whole limit again.
            Ok(g) => {
                assert_eq!(g.units, 1);
                break;
            }
            Err(e) => assert!(
                back.elapsed() < Duration::from_secs(1),
                "not served 1 s after Redis came back: {e}"
            ),
        }
    }
    assert!(
        back.elapsed() < Duration::from_secs(1),
        "{:?}",
        back.elapsed()
    );
    let v = counter.hit_window(&lim, "k", &p, w, 1).await.unwrap();
    assert!(v.admitted);
}

#[tokio::test]
async fn a_redis_that_was_never_up_fails_calls_quickly() {
    let mut server = RedisServer::start().unwrap();
    let s = settings(&server);
    server.kill().unwrap();
    let auth = RedisAuthority::new(RedisClient::open(&s).unwrap());
    for _ in 0..3 {
        let t = Instant::now();
        let r = auth.acquire(&id("never"), "k", &fixed(5, S), 0, 1).await;
        assert!(
            matches!(
                r,
                Err(SettleError::Unreachable(_) | SettleError::Timeout(_))
            ),
            "{r:?}"
        );
        assert!(t.elapsed() < FAIL_BOUND, "took {:?}", t.elapsed());
    }
}

#[tokio::test]
async fn a_stalled_redis_times_out_every_call_and_serves_again_when_it_resumes() {
    let server = RedisServer::start().unwrap();
    let client = RedisClient::open(&settings(&server)).unwrap();
    let auth = RedisAuthority::new(client.clone());
    let counter = RedisCounter::new(client);
    let (lim, p, w) = (id("stall"), fixed(100, 60 * S), 11_000 * S);
    auth.acquire(&lim, "k", &p, w, 1).await.unwrap();

    server.stall().unwrap();
    for i in 0..3 {
        let t = Instant::now();
        let r = auth.acquire(&lim, "k", &p, w, 1).await;
        assert!(
            matches!(r, Err(SettleError::Timeout(d)) if d == TIMEOUT),
            "call {i}: {r:?}"
        );
        assert!(t.elapsed() < FAIL_BOUND, "call {i} took {:?}", t.elapsed());
        let t = Instant::now();
        let r = auth.release(&lim, "k", w, 1).await;
        assert!(
            matches!(r, Err(SettleError::Timeout(_))),
            "release {i}: {r:?}"
        );
        assert!(t.elapsed() < FAIL_BOUND);
        let t = Instant::now();
        let usage = [Usage {
            key: "k".into(),
            window_start_us: w,
            used: 1,
        }];
        let r = auth.report(&lim, &usage).await;
        assert!(
            matches!(r, Err(SettleError::Timeout(_))),
            "report {i}: {r:?}"
        );
        assert!(t.elapsed() < FAIL_BOUND);
        let t = Instant::now();
        let r = counter.hit_window(&lim, "k", &p, w, 1).await;
        assert!(matches!(r, Err(SettleError::Timeout(_))), "hit {i}: {r:?}");
        assert!(t.elapsed() < FAIL_BOUND);
    }

    server.resume().unwrap();
    let back = Instant::now();
    loop {
        match counter.hit_window(&lim, "k2", &p, w, 1).await {
            Ok(v) => {
                assert!(v.admitted);
                break;
            }
            Err(e) => assert!(
                back.elapsed() < Duration::from_secs(1),
                "not served 1 s after Redis resumed: {e}"
            ),
        }
    }
}

#[tokio::test]
async fn a_wrong_password_is_refused_with_a_clear_message() {
    let server = RedisServer::start_with(RedisOptions {
        password: Some("right-one".into()),
        ..RedisOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");

    std::fs::write(&file, "wrong-one\n").unwrap();
    let s = RedisSettings {
        password_file: Some(file.clone()),
        ..settings(&server)
    };
    let auth = RedisAuthority::new(RedisClient::open(&s).unwrap());
    let t = Instant::now();
    let r = auth.acquire(&id("pw"), "k", &fixed(5, S), 0, 1).await;
    assert!(t.elapsed() < FAIL_BOUND);
    let msg = match r {
        Err(SettleError::Refused(m) | SettleError::Unreachable(m)) => m,
        other => panic!("expected a refusal, got {other:?}"),
    };
    let lower = msg.to_lowercase();
    assert!(
        lower.contains("wrongpass") || lower.contains("password") || lower.contains("auth"),
        "{msg}"
    );

    std::fs::write(&file, "right-one\n").unwrap();
    let auth = RedisAuthority::new(RedisClient::open(&s).unwrap());
    let g = auth
        .acquire(&id("pw"), "k", &fixed(5, S), 0, 2)
        .await
        .unwrap();
    assert_eq!(g.units, 2);
}

#[tokio::test]
async fn a_script_error_or_foreign_value_is_refused_not_a_panic() {
    let server = RedisServer::start().unwrap();
    let client = RedisClient::open(&settings(&server)).unwrap();
    let auth = RedisAuthority::new(client.clone());
    let counter = RedisCounter::new(client);
    let lim = id("foreign");
    let w = 13_000 * S;
    // Someone else wrote a plain string where the window hash lives.
    let key = format!("weir:{{{lim}|k}}:w:{w}");
    assert_eq!(server.command(&["SET", &key, "x"]).unwrap(), "+OK");
    let r = auth.acquire(&lim, "k", &fixed(5, S), w, 1).await;
    assert!(matches!(r, Err(SettleError::Refused(_))), "{r:?}");
    let hit_key = format!("weir:{{{lim}|k}}:hit");
    assert_eq!(server.command(&["SET", &hit_key, "x"]).unwrap(), "+OK");
    let r = counter.hit_window(&lim, "k", &fixed(5, S), w, 1).await;
    assert!(matches!(r, Err(SettleError::Refused(_))), "{r:?}");
}

#[tokio::test]
async fn a_one_node_cluster_serves_credit_and_hits() {
    let server = RedisServer::start_with(RedisOptions {
        cluster: true,
        ..RedisOptions::default()
    })
    .unwrap();
    let s = RedisSettings {
        cluster: true,
        ..settings(&server)
    };
    let client = RedisClient::open(&s).unwrap();
    let auth = RedisAuthority::new(client.clone());
    let counter = RedisCounter::new(client);
    let lim = id("cluster");
    let p = WindowPolicy {
        limit: 10,
        window_us: 10 * S,
        sliding: true,
    };
    let w = 20_000 * S;
    assert_eq!(
        auth.acquire_at(&lim, "k", &p, w, 8, w).await.unwrap().units,
        8
    );
    // The sliding script reads two keys: they share the hash slot.
    let g = auth
        .acquire_at(&lim, "k", &p, w + p.window_us, 8, w + p.window_us + S * 5)
        .await
        .unwrap();
    assert_eq!((g.units, g.consumed), (6, 4));
    assert!(
        counter
            .hit_window(&lim, "k", &p, w, 1)
            .await
            .unwrap()
            .admitted
    );
}

#[test]
fn malformed_settings_name_the_field() {
    let parse = |yaml: &str| -> Result<RedisSettings, String> {
        let s: RedisSettings = serde_yaml_ng::from_str(yaml).map_err(|e| e.to_string())?;
        s.validate().map_err(|e| e.to_string())?;
        Ok(s)
    };
    let s = parse("urls: [\"rediss://r.example:6380\"]\nresponse_timeout: 100ms\n").unwrap();
    assert_eq!(s.response_timeout, Duration::from_millis(100));
    for (yaml, field) in [
        ("urls: [\"http://r:1\"]", "redis.urls[0]"),
        ("urls: [\"redis://user:pw@r:1\"]", "redis.urls[0]"),
        ("response_timeout: 0s", "redis.response_timeout"),
        ("connection_timeout: 2h", "redis.connection_timeout"),
        ("key_prefix: \"a{b\"", "redis.key_prefix"),
        ("urls: []", "redis.urls"),
    ] {
        let e = parse(yaml).unwrap_err();
        assert!(e.starts_with(field), "{yaml}: {e}");
    }
    let e = parse("password: hunter2").unwrap_err();
    assert!(e.contains("unknown field `password`"), "{e}");
    // A password file that is not there is named when the client opens.
    let s = RedisSettings {
        password_file: Some("/nonexistent/weir-redis-pw".into()),
        ..RedisSettings::default()
    };
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let e = rt.block_on(async { RedisClient::open(&s).unwrap_err() });
    assert_eq!(e.field, "password_file");
}

#[tokio::test]
async fn a_redis_stalled_before_the_first_call_times_out_on_time() {
    let server = RedisServer::start().unwrap();
    server.stall().unwrap();
    // The kernel still accepts the connection; the login never answers.
    let counter = RedisCounter::new(RedisClient::open(&settings(&server)).unwrap());
    for i in 0..3 {
        let t = Instant::now();
        let r = counter
            .hit_window(&id("fresh"), "k", &fixed(5, S), S, 1)
            .await;
        assert!(matches!(r, Err(SettleError::Timeout(_))), "call {i}: {r:?}");
        assert!(t.elapsed() < FAIL_BOUND, "call {i} took {:?}", t.elapsed());
    }
    server.resume().unwrap();
    let back = Instant::now();
    while let Err(e) = counter
        .hit_window(&id("fresh"), "k", &fixed(5, S), S, 1)
        .await
    {
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "not served after resume: {e}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn racing_per_request_hits_admit_exactly_the_limit() {
    let server = RedisServer::start().unwrap();
    let counter = Arc::new(RedisCounter::new(
        RedisClient::open(&settings(&server)).unwrap(),
    ));
    let p = WindowPolicy {
        limit: 200,
        window_us: 3600 * S,
        sliding: true,
    };
    let now = 1_700_000_000 * S;
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let counter = counter.clone();
        tasks.push(tokio::spawn(async move {
            let mut admitted = 0u64;
            for j in 0..40 {
                if counter
                    .hit_window(&id("hits"), "hot", &p, now + j, 1)
                    .await
                    .unwrap()
                    .admitted
                {
                    admitted += 1;
                }
            }
            admitted
        }));
    }
    let mut total = 0;
    for t in tasks {
        total += t.await.unwrap();
    }
    assert_eq!(total, 200, "320 racing hits, a limit of 200");
}

#[tokio::test]
async fn a_refused_login_is_tried_again_once_redis_accepts_it() {
    let server = RedisServer::start_with(RedisOptions {
        password: Some("old-one".into()),
        ..RedisOptions::default()
    })
    .unwrap();
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("pw");
    std::fs::write(&file, "new-one").unwrap();
    let s = RedisSettings {
        password_file: Some(file),
        ..settings(&server)
    };
    let auth = RedisAuthority::new(RedisClient::open(&s).unwrap());
    let r = auth.acquire(&id("rotate"), "k", &fixed(5, S), 0, 1).await;
    assert!(matches!(r, Err(SettleError::Refused(_))), "{r:?}");
    // The operator rotates the password on the Redis side.
    assert_eq!(
        server
            .command(&["CONFIG", "SET", "requirepass", "new-one"])
            .unwrap(),
        "+OK"
    );
    let back = Instant::now();
    while let Err(e) = auth.acquire(&id("rotate"), "k", &fixed(5, S), 0, 1).await {
        assert!(
            back.elapsed() < Duration::from_secs(1),
            "still refused: {e}"
        );
    }
}

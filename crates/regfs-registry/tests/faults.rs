//! Fault injection with a hand-written HTTP server, for what a real registry will not do:
//! 5xx and 429 bursts, resets mid-body, ignored Range, wrong bytes, expiring tokens, expiring
//! redirect targets, unreachable hosts.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use regfs_registry::{Client, Credentials, Digest, Error, Reference};
use support::{FakeServer, HttpRequest, Reply, forward, pattern, test_config};

fn blob() -> (Vec<u8>, Digest) {
    let data = pattern(50_000, 42);
    let d = Digest::sha256(&data);
    (data, d)
}

fn client() -> (Client, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    (Client::new(test_config(dir.path())).unwrap(), dir)
}

fn reference(server: &FakeServer) -> Reference {
    format!("{}/fault/repo:1", server.host()).parse().unwrap()
}

/// `(start, end_exclusive)` of a `Range: bytes=a-b` or `bytes=a-` header.
fn range_of(req: &HttpRequest, len: usize) -> Option<(usize, usize)> {
    let spec = req.header("range")?.strip_prefix("bytes=")?;
    let (a, b) = spec.split_once('-')?;
    let a: usize = a.parse().ok()?;
    let b = if b.is_empty() {
        len
    } else {
        b.parse::<usize>().ok()? + 1
    };
    Some((a, b.min(len)))
}

/// A correct 206 or 200 for `data`.
fn serve(req: &HttpRequest, data: &[u8]) -> Reply {
    match range_of(req, data.len()) {
        Some((a, b)) => Reply::with(
            206,
            &[(
                "Content-Range",
                &format!("bytes {a}-{}/{}", b - 1, data.len()),
            )],
            data[a..b].to_vec(),
        ),
        None => Reply::ok(data.to_vec()),
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn server_error_then_success_is_retried() {
    let (data, digest) = blob();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = FakeServer::start(move |req| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::status(500)
        } else {
            serve(req, &data)
        }
    })
    .await;
    let (client, _d) = client();
    let got = client
        .fetch_blob(&reference(&server), &digest)
        .await
        .unwrap();
    assert_eq!(Digest::sha256(&got), digest);
    assert_eq!(client.stats().retries, 1);
    assert_eq!(calls.load(Ordering::SeqCst), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn not_implemented_is_not_retried() {
    let server = FakeServer::start(|_| Reply::status(501)).await;
    let (client, _d) = client();
    let err = client
        .fetch_blob(&reference(&server), &blob().1)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Status { status: 501, .. }), "{err}");
    assert_eq!(server.requests().len(), 1);
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_honours_retry_after() {
    let (data, digest) = blob();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let server = FakeServer::start(move |req| {
        if c.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::with(429, &[("Retry-After", "1")], b"slow down".to_vec())
        } else {
            serve(req, &data)
        }
    })
    .await;
    let (client, _d) = client();
    let r = reference(&server);
    let got = client.read_range(&r, &digest, 100..200).await.unwrap();
    assert_eq!(&got[..], &blob().0[100..200]);
    assert_eq!(client.stats().retries, 1);
    assert_eq!(server.requests().len(), 2);
}

#[tokio::test(flavor = "multi_thread")]
async fn reset_mid_body_resumes_streaming_fetch() {
    let (data, digest) = blob();
    let server = {
        let data = data.clone();
        let calls = Arc::new(AtomicUsize::new(0));
        FakeServer::start(move |req| {
            if calls.fetch_add(1, Ordering::SeqCst) == 0 {
                Reply::Cut {
                    status: 200,
                    headers: vec![],
                    declared_len: data.len(),
                    body: data[..20_000].to_vec(),
                }
            } else {
                serve(req, &data)
            }
        })
        .await
    };
    let (client, _d) = client();
    let mut out = Vec::new();
    let n = client
        .fetch_blob_to(&reference(&server), &digest, &mut out)
        .await
        .unwrap();
    assert_eq!(n, data.len() as u64);
    assert_eq!(out, data);
    let reqs = server.requests();
    assert_eq!(reqs.len(), 2);
    assert_eq!(reqs[1].header("range"), Some("bytes=20000-"));
}

#[tokio::test(flavor = "multi_thread")]
async fn short_range_body_is_an_error_never_short_bytes() {
    let (data, digest) = blob();
    // Always cuts the 206 body short: every attempt fails, the caller gets an error.
    let server = FakeServer::start(move |req| {
        let (a, b) = range_of(req, data.len()).unwrap();
        Reply::Cut {
            status: 206,
            headers: vec![(
                "Content-Range".into(),
                format!("bytes {a}-{}/{}", b - 1, data.len()),
            )],
            declared_len: b - a,
            body: data[a..a + (b - a) / 2].to_vec(),
        }
    })
    .await;
    let (client, _d) = client();
    let err = client
        .read_range(&reference(&server), &digest, 0..1000)
        .await
        .unwrap_err();
    assert!(err.is_retryable(), "{err}");
    assert_eq!(server.requests().len(), 4, "first attempt + 3 retries");
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_content_range_is_rejected() {
    let (data, digest) = blob();
    let server = FakeServer::start(move |_| {
        Reply::with(
            206,
            &[("Content-Range", "bytes 5-14/50000")],
            data[5..15].to_vec(),
        )
    })
    .await;
    let (client, _d) = client();
    let err = client
        .read_range(&reference(&server), &digest, 0..10)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::BadRangeReply { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn ignored_range_is_sliced_from_full_body() {
    let (data, digest) = blob();
    let d2 = data.clone();
    let server = FakeServer::start(move |_| Reply::ok(d2.clone())).await;
    let (client, _d) = client();
    let r = reference(&server);
    let got = client.read_range(&r, &digest, 1234..1300).await.unwrap();
    assert_eq!(&got[..], &data[1234..1300]);
    let ranges = [0..10, 40_000..40_100, 49_990..50_000];
    let parts = client.read_ranges(&r, &digest, &ranges).await.unwrap();
    for (rg, p) in ranges.iter().zip(&parts) {
        assert_eq!(&p[..], &data[rg.start as usize..rg.end as usize]);
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn multi_range_refused_falls_back_to_single_ranges() {
    let (data, digest) = blob();
    let d2 = data.clone();
    let server = FakeServer::start(move |req| {
        if req.header("range").is_some_and(|r| r.contains(',')) {
            Reply::status(400)
        } else {
            serve(req, &d2)
        }
    })
    .await;
    let (client, _d) = client();
    let r = reference(&server);
    let ranges = [0..10, 100..110, 200..210];
    let parts = client.read_ranges(&r, &digest, &ranges).await.unwrap();
    for (rg, p) in ranges.iter().zip(&parts) {
        assert_eq!(&p[..], &data[rg.start as usize..rg.end as usize]);
    }
    assert_eq!(server.requests().len(), 4);
    // The host is remembered as single-range only.
    client.read_ranges(&r, &digest, &ranges).await.unwrap();
    assert_eq!(server.requests().len(), 7);
}

#[tokio::test(flavor = "multi_thread")]
async fn wrong_bytes_for_full_blob_are_a_digest_mismatch() {
    let (_, digest) = blob();
    let server = FakeServer::start(|_| Reply::ok(b"these are not the bytes".to_vec())).await;
    let (client, _d) = client();
    let r = reference(&server);
    let err = client.fetch_blob(&r, &digest).await.unwrap_err();
    assert!(
        matches!(err, Error::DigestMismatch { expected, .. } if expected == digest),
        "{err}"
    );
    let mut sink = Vec::new();
    let err = client
        .fetch_blob_to(&r, &digest, &mut sink)
        .await
        .unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_expiring_mid_read_is_refreshed() {
    let (data, digest) = blob();
    let issued = Arc::new(AtomicUsize::new(0));
    let i2 = issued.clone();
    let realm = Arc::new(std::sync::Mutex::new(String::new()));
    let realm2 = realm.clone();
    let server = FakeServer::start(move |req| {
        if req.path.starts_with("/token") {
            let n = i2.fetch_add(1, Ordering::SeqCst) + 1;
            return Reply::ok(format!(r#"{{"token":"tok-{n}","expires_in":3600}}"#).into_bytes());
        }
        // Only the newest token is valid.
        let current = format!("Bearer tok-{}", i2.load(Ordering::SeqCst));
        if req.header("authorization") != Some(current.as_str()) {
            let challenge = format!(
                "Bearer realm=\"{}\",service=\"fake\"",
                realm2.lock().unwrap()
            );
            return Reply::with(401, &[("WWW-Authenticate", &challenge)], vec![]);
        }
        serve(req, &data)
    })
    .await;
    *realm.lock().unwrap() = format!("http://{}/token", server.host());
    let (client, _d) = client();
    let r = reference(&server);
    let a = client.read_range(&r, &digest, 0..100).await.unwrap();
    assert_eq!(client.stats().token_fetches, 1);
    // tok-1 expires on the server (its lifetime said an hour: the client cannot know).
    issued.fetch_add(1, Ordering::SeqCst);
    let b = client.read_range(&r, &digest, 100..200).await.unwrap();
    assert_eq!(&a[..], &blob().0[..100]);
    assert_eq!(&b[..], &blob().0[100..200]);
    assert_eq!(client.stats().token_fetches, 2);
    let auths: Vec<Option<String>> = server
        .requests()
        .iter()
        .filter(|q| q.path.contains("/blobs/"))
        .map(|q| q.header("authorization").map(str::to_owned))
        .collect();
    // no auth → 401; tok-1 → ok; tok-1 (stale) → 401; tok-3 → ok.
    assert_eq!(
        auths,
        vec![
            None,
            Some("Bearer tok-1".into()),
            Some("Bearer tok-1".into()),
            Some("Bearer tok-3".into())
        ]
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn redirect_target_is_cached_without_auth_and_re_resolved_on_expiry() {
    let (data, digest) = blob();
    // Object store: accepts only the current signature, never wants our Authorization.
    let valid_sig = Arc::new(AtomicUsize::new(1));
    let vs = valid_sig.clone();
    let d2 = data.clone();
    let store = FakeServer::start(move |req| {
        let sig = format!("sig={}", vs.load(Ordering::SeqCst));
        if !req.path.ends_with(&sig) {
            return Reply::with(403, &[], b"<Error>Request has expired</Error>".to_vec());
        }
        serve(req, &d2)
    })
    .await;
    let store_host = store.host();
    let signs = Arc::new(AtomicUsize::new(0));
    let vs = valid_sig.clone();
    let registry = FakeServer::start(move |req| {
        if req.header("authorization") != Some("Basic dTpw") {
            return Reply::with(401, &[("WWW-Authenticate", "Basic realm=\"fake\"")], vec![]);
        }
        signs.fetch_add(1, Ordering::SeqCst);
        let loc = format!(
            "http://{store_host}/bucket/blob?sig={}",
            vs.load(Ordering::SeqCst)
        );
        Reply::with(307, &[("Location", &loc)], vec![])
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.credentials.insert(
        registry.host(),
        Credentials::UserPassword {
            username: "u".into(),
            password: "p".into(),
        },
    );
    let client = Client::new(cfg).unwrap();
    let r = reference(&registry);
    for (i, rg) in [0..10u64, 10..20, 20..30].into_iter().enumerate() {
        if i == 2 {
            // The pre-signed URL expires; the registry now signs a new one.
            valid_sig.store(2, Ordering::SeqCst);
        }
        let got = client.read_range(&r, &digest, rg.clone()).await.unwrap();
        assert_eq!(&got[..], &data[rg.start as usize..rg.end as usize]);
    }
    // Registry: 401 + redirect for read 1, nothing for read 2 (cached), redirect for read 3.
    let reg_reqs = registry.requests();
    assert_eq!(reg_reqs.len(), 3, "{reg_reqs:?}");
    let store_reqs = store.requests();
    assert_eq!(store_reqs.len(), 4, "ok, ok (cached), 403, ok");
    assert!(
        store_reqs
            .iter()
            .all(|q| q.header("authorization").is_none())
    );
    assert!(store_reqs[3].path.ends_with("sig=2"));
}

#[tokio::test(flavor = "multi_thread")]
async fn unreachable_registry_names_the_host() {
    let port = support::free_port();
    let (client, _d) = client();
    let r: Reference = format!("127.0.0.1:{port}/x/y:1").parse().unwrap();
    let err = client.fetch_manifest(&r).await.unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");
    assert!(
        err.to_string().contains(&format!("127.0.0.1:{port}")),
        "{err}"
    );
    assert_eq!(client.stats().retries, 3);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_digest_and_size_are_checked() {
    let body = br#"{"schemaVersion":2,"config":{"mediaType":"a","digest":"sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855","size":0},"layers":[]}"#;
    let wrong = Digest::sha256(b"something else").to_string();
    let server = FakeServer::start(move |req| {
        if req.path.ends_with("/manifests/lying") {
            Reply::with(
                200,
                &[("Docker-Content-Digest", wrong.as_str())],
                body.to_vec(),
            )
        } else if req.path.ends_with("/manifests/huge") {
            Reply::ok(vec![b' '; regfs_registry::MAX_MANIFEST_SIZE as usize + 1])
        } else {
            Reply::ok(body.to_vec())
        }
    })
    .await;
    let (client, _d) = client();
    let base = format!("{}/fault/repo", server.host());
    let lying: Reference = format!("{base}:lying").parse().unwrap();
    let err = client.fetch_manifest(&lying).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    let pinned: Reference = format!("{base}@{}", Digest::sha256(b"pinned elsewhere"))
        .parse()
        .unwrap();
    let err = client.fetch_manifest(&pinned).await.unwrap_err();
    assert!(matches!(err, Error::DigestMismatch { .. }), "{err}");

    let huge: Reference = format!("{base}:huge").parse().unwrap();
    let err = client.fetch_manifest(&huge).await.unwrap_err();
    assert!(matches!(err, Error::TooLarge { .. }), "{err}");

    // No mediaType, no useful Content-Type: the shape decides.
    let plain: Reference = format!("{base}:plain").parse().unwrap();
    let (got, mt, d) = client.fetch_manifest(&plain).await.unwrap();
    assert_eq!(
        (&got[..], mt.as_str(), d),
        (
            &body[..],
            regfs_registry::MEDIA_TYPE_OCI_MANIFEST,
            Digest::sha256(body)
        )
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn resumed_fetch_against_range_ignoring_server_skips_written_bytes() {
    let (data, digest) = blob();
    let d2 = data.clone();
    let calls = Arc::new(AtomicUsize::new(0));
    let server = FakeServer::start(move |_| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Cut {
                status: 200,
                headers: vec![],
                declared_len: d2.len(),
                body: d2[..12_345].to_vec(),
            }
        } else {
            Reply::ok(d2.clone())
        }
    })
    .await;
    let (client, _d) = client();
    let mut out = Vec::new();
    let n = client
        .fetch_blob_to(&reference(&server), &digest, &mut out)
        .await
        .unwrap();
    assert_eq!((n, out == data), (data.len() as u64, true));
    assert_eq!(server.requests()[1].header("range"), Some("bytes=12345-"));
}

/// How a host mishandles a request for several ranges.
#[derive(Clone, Copy, Debug)]
enum MultiRangeQuirk {
    NotImplemented,
    NotSatisfiable,
    WholeBody,
    FirstRangeOnly,
}

/// Every way a CDN, object store or P2P mirror mishandles multi-range requests: the reads still
/// return the right bytes, and the host is asked range by range from then on (remembered: the
/// second batch sends no multi-range request at all).
#[tokio::test(flavor = "multi_thread")]
async fn multi_range_quirks_switch_the_host_to_single_ranges_for_good() {
    for quirk in [
        MultiRangeQuirk::NotImplemented,
        MultiRangeQuirk::NotSatisfiable,
        MultiRangeQuirk::WholeBody,
        MultiRangeQuirk::FirstRangeOnly,
    ] {
        let (data, digest) = blob();
        let d2 = data.clone();
        let server = FakeServer::start(move |req| {
            let Some(spec) = req.header("range").filter(|r| r.contains(',')) else {
                return serve(req, &d2);
            };
            match quirk {
                MultiRangeQuirk::NotImplemented => Reply::status(501),
                MultiRangeQuirk::NotSatisfiable => Reply::status(416),
                MultiRangeQuirk::WholeBody => Reply::ok(d2.clone()),
                MultiRangeQuirk::FirstRangeOnly => {
                    let first = spec.split(',').next().unwrap().to_owned();
                    let one = HttpRequest {
                        headers: vec![("Range".into(), first)],
                        ..req.clone()
                    };
                    serve(&one, &d2)
                }
            }
        })
        .await;
        let (client, _d) = client();
        let r = reference(&server);
        let ranges = [0..10, 20_000..20_100, 49_000..49_500];
        for round in 0..2 {
            let parts = client.read_ranges(&r, &digest, &ranges).await.unwrap();
            for (rg, p) in ranges.iter().zip(&parts) {
                assert_eq!(
                    &p[..],
                    &data[rg.start as usize..rg.end as usize],
                    "{quirk:?} round {round}"
                );
            }
        }
        let multi: Vec<usize> = server
            .requests()
            .iter()
            .enumerate()
            .filter(|(_, q)| q.header("range").is_some_and(|r| r.contains(',')))
            .map(|(i, _)| i)
            .collect();
        assert_eq!(
            multi,
            vec![0],
            "{quirk:?}: only the very first request is multi-range"
        );
        assert_eq!(
            server.requests().len(),
            7,
            "{quirk:?}: 1 multi + 2 × 3 single"
        );
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn too_many_requests_without_retry_after_backs_off_and_succeeds() {
    let (data, digest) = blob();
    let calls = Arc::new(AtomicUsize::new(0));
    let c = calls.clone();
    let d2 = data.clone();
    let server = FakeServer::start(move |req| {
        if c.fetch_add(1, Ordering::SeqCst) < 2 {
            Reply::with(429, &[], b"rate limited".to_vec())
        } else {
            serve(req, &d2)
        }
    })
    .await;
    let (client, _d) = client();
    let got = client
        .read_range(&reference(&server), &digest, 300..400)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[300..400]);
    assert_eq!(client.stats().retries, 2);
    assert_eq!(server.requests().len(), 3);
}

/// A 503 storm: every request of 16 concurrent readers is refused three times (half of them
/// with `Retry-After: 0`) before it is served; every read still gets its bytes. A storm longer
/// than the retry budget is an error, never wrong or short bytes.
#[tokio::test(flavor = "multi_thread")]
async fn service_unavailable_storm_is_ridden_out_by_concurrent_readers() {
    let (data, digest) = blob();
    let refusals: Arc<std::sync::Mutex<std::collections::HashMap<String, usize>>> = Arc::default();
    let d2 = data.clone();
    let seen = refusals.clone();
    let server = FakeServer::start(move |req| {
        let key = req.header("range").unwrap_or("").to_owned();
        let n = {
            let mut m = seen.lock().unwrap();
            let n = m.entry(key.clone()).or_insert(0);
            *n += 1;
            *n
        };
        // Ranges starting at 0 (the "storm never ends" read) are refused forever.
        if n <= 3 || key.starts_with("bytes=0-") {
            if n % 2 == 0 {
                Reply::with(503, &[("Retry-After", "0")], b"busy".to_vec())
            } else {
                Reply::status(503)
            }
        } else {
            serve(req, &d2)
        }
    })
    .await;
    let (client, _d) = client();
    let r = reference(&server);
    let reads = (1..=16u64).map(|i| {
        let (client, r) = (client.clone(), r.clone());
        tokio::spawn(async move {
            let range = i * 1000..i * 1000 + 500;
            (
                range.clone(),
                client.read_range(&r, &digest, range).await.unwrap(),
            )
        })
    });
    for task in futures::future::join_all(reads).await {
        let (range, got) = task.unwrap();
        assert_eq!(&got[..], &data[range.start as usize..range.end as usize]);
    }
    assert_eq!(client.stats().retries, 16 * 3);

    let err = client.read_range(&r, &digest, 0..100).await.unwrap_err();
    assert!(matches!(err, Error::Status { status: 503, .. }), "{err}");
}

/// A connection reset (RST, not a clean close) in the middle of a range body: the read is
/// repeated and returns the right bytes.
#[tokio::test(flavor = "multi_thread")]
async fn reset_mid_range_body_is_retried() {
    let (data, digest) = blob();
    let calls = Arc::new(AtomicUsize::new(0));
    let d2 = data.clone();
    let server = FakeServer::start(move |req| {
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            let (a, b) = range_of(req, d2.len()).unwrap();
            Reply::Reset {
                status: 206,
                headers: vec![(
                    "Content-Range".into(),
                    format!("bytes {a}-{}/{}", b - 1, d2.len()),
                )],
                declared_len: b - a,
                body: d2[a..a + (b - a) / 3].to_vec(),
            }
        } else {
            serve(req, &d2)
        }
    })
    .await;
    let (client, _d) = client();
    let got = client
        .read_range(&reference(&server), &digest, 1000..31_000)
        .await
        .unwrap();
    assert_eq!(&got[..], &data[1000..31_000]);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(client.stats().retries, 1);
}

/// A slow-loris body: one byte every 100 ms, so no read ever waits long enough for the idle
/// timeout (1 s here), yet 2,000 bytes would take over three minutes. The per-request deadline
/// (request timeout + length at MIN_RANGE_RATE) cuts it off and the retry, served normally,
/// returns the bytes. Without the deadline the read would outlast the guard below.
#[tokio::test(flavor = "multi_thread")]
async fn slow_loris_body_is_cut_off_by_the_per_request_deadline() {
    let (data, digest) = blob();
    let calls = Arc::new(AtomicUsize::new(0));
    let d2 = data.clone();
    let server = FakeServer::start(move |req| {
        let (a, b) = range_of(req, d2.len()).unwrap();
        let headers = vec![(
            "Content-Range".into(),
            format!("bytes {a}-{}/{}", b - 1, d2.len()),
        )];
        if calls.fetch_add(1, Ordering::SeqCst) == 0 {
            Reply::Trickle {
                status: 206,
                headers,
                body: d2[a..b].to_vec(),
                every: std::time::Duration::from_millis(100),
            }
        } else {
            Reply::Full {
                status: 206,
                headers,
                body: d2[a..b].to_vec(),
            }
        }
    })
    .await;
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(dir.path());
    cfg.request_timeout = std::time::Duration::from_secs(1);
    let client = Client::new(cfg).unwrap();
    let r = reference(&server);
    let read = client.read_range(&r, &digest, 5000..7000);
    let got = tokio::time::timeout(std::time::Duration::from_secs(60), read)
        .await
        .expect("the slow body was never cut off")
        .unwrap();
    assert_eq!(&got[..], &data[5000..7000]);
    assert_eq!(server.requests().len(), 2);
    assert_eq!(client.stats().retries, 1);
}

/// The faults above, injected by a proxy in front of a real `docker-registry` that serves the
/// bytes: the first multi-range request gets 501, then a 503 storm, a 429, a reset mid-body and
/// a slow-loris body hit the requests that follow. Every read returns the registry's bytes.
#[tokio::test(flavor = "multi_thread")]
async fn faults_in_front_of_a_real_registry_never_fail_a_read() {
    let reg = support::Registry::start(support::Auth::Anonymous).await;
    let data = pattern(300_000, 99);
    let digest = Digest::sha256(&data);
    let dir = tempfile::tempdir().unwrap();
    let repo = "faults/real";
    Client::new(test_config(dir.path()))
        .unwrap()
        .push_blob(
            &reg.reference(&format!("{repo}:1")),
            &digest,
            data.clone().into(),
        )
        .await
        .unwrap();
    let upstream = reg.host.clone();
    let n = Arc::new(AtomicUsize::new(0));
    let proxy = FakeServer::start(move |req| {
        let i = n.fetch_add(1, Ordering::SeqCst);
        let multi = req.header("range").is_some_and(|r| r.contains(','));
        let real = || forward(&upstream, req);
        match i {
            _ if multi => Reply::status(501),
            1..=3 => Reply::status(503),
            4 => Reply::status(429),
            5 => match real() {
                Reply::Full {
                    status,
                    headers,
                    body,
                } => Reply::Reset {
                    status,
                    headers,
                    declared_len: body.len(),
                    body: body[..body.len() / 2].to_vec(),
                },
                other => other,
            },
            6 => match real() {
                Reply::Full {
                    status,
                    headers,
                    body,
                } => Reply::Trickle {
                    status,
                    headers,
                    body,
                    every: std::time::Duration::from_millis(100),
                },
                other => other,
            },
            _ => real(),
        }
    })
    .await;
    let mut cfg = test_config(dir.path());
    cfg.request_timeout = std::time::Duration::from_secs(1);
    // Six faulted requests in all: even if one read met every one of them, it still succeeds.
    cfg.retry.max_retries = 8;
    let client = Client::new(cfg).unwrap();
    let r: Reference = format!("{}/{repo}:1", proxy.host()).parse().unwrap();
    let ranges = [0..1000u64, 100_000..101_000, 200_000..201_000];
    let read = async {
        let parts = client.read_ranges(&r, &digest, &ranges).await.unwrap();
        for (rg, p) in ranges.iter().zip(&parts) {
            assert_eq!(&p[..], &data[rg.start as usize..rg.end as usize]);
        }
        for rg in [5_000..9_000u64, 250_000..299_000] {
            let got = client.read_range(&r, &digest, rg.clone()).await.unwrap();
            assert_eq!(&got[..], &data[rg.start as usize..rg.end as usize]);
        }
    };
    tokio::time::timeout(std::time::Duration::from_secs(120), read)
        .await
        .expect("reads through the faulty proxy never finished");
    // Every fault was met: 1 multi-range + 6 faulted + 5 served single ranges.
    assert!(proxy.requests().len() >= 12, "{}", proxy.requests().len());
}

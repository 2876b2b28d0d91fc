//! Against a real Debian `docker-registry` without auth: push and pull of blobs, manifests and
//! indexes, ranged reads, mounts, platform choice, mirrors from hosts.toml.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use regfs_registry::{
    Client, Digest, Error, MEDIA_TYPE_OCI_INDEX, MEDIA_TYPE_OCI_MANIFEST, Platform,
};
use support::{Auth, FakeServer, Registry, Reply, pattern, push_image, test_config};

#[tokio::test(flavor = "multi_thread")]
async fn blob_push_pull_round_trip_and_ranges() {
    let reg = Registry::start(Auth::Anonymous).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let client = Client::new(test_config(cfg_dir.path())).unwrap();
    let repo = reg.reference("test/blobs");
    let data = pattern(100_000, 7);
    let digest = Digest::sha256(&data);

    client
        .push_blob(&repo, &digest, data.clone().into())
        .await
        .unwrap();
    // Second push is a HEAD only.
    let before = client.stats().requests;
    client
        .push_blob(&repo, &digest, data.clone().into())
        .await
        .unwrap();
    assert_eq!(client.stats().requests - before, 1);

    assert_eq!(
        client.blob_size(&repo, &digest).await.unwrap(),
        data.len() as u64
    );
    assert_eq!(
        &client.fetch_blob(&repo, &digest).await.unwrap()[..],
        &data[..]
    );
    let mut out = Vec::new();
    let n = client
        .fetch_blob_to(&repo, &digest, &mut out)
        .await
        .unwrap();
    assert_eq!((n, &out[..]), (data.len() as u64, &data[..]));

    let got = client.read_range(&repo, &digest, 1000..1051).await.unwrap();
    assert_eq!(&got[..], &data[1000..1051]);
    let tail = client
        .read_range(&repo, &digest, 99_990..100_000)
        .await
        .unwrap();
    assert_eq!(&tail[..], &data[99_990..]);
    assert!(
        client
            .read_range(&repo, &digest, 99_990..100_001)
            .await
            .is_err()
    );

    // Multi-range: one request answered with multipart/byteranges.
    let ranges = [10..20, 5_000..5_100, 40..41, 90_000..90_010, 7..7];
    let before = client.stats().requests;
    let parts = client.read_ranges(&repo, &digest, &ranges).await.unwrap();
    assert_eq!(
        client.stats().requests - before,
        1,
        "multi-range should take one request"
    );
    for (r, p) in ranges.iter().zip(&parts) {
        assert_eq!(&p[..], &data[r.start as usize..r.end as usize], "{r:?}");
    }

    let missing = Digest::sha256(b"not there");
    assert!(matches!(
        client.fetch_blob(&repo, &missing).await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        client.push_blob(&repo, &missing, data.clone().into()).await,
        Err(Error::DigestMismatch { .. })
    ));
}

#[tokio::test(flavor = "multi_thread")]
async fn chunked_push_and_cross_repo_mount() {
    let reg = Registry::start(Auth::Anonymous).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(cfg_dir.path());
    cfg.push_chunk_size = 64 * 1024;
    let client = Client::new(cfg).unwrap();
    let a = reg.reference("test/a");
    let b = reg.reference("test/b");
    let data = pattern(200_000, 9);
    let digest = Digest::sha256(&data);

    let before = client.stats().requests;
    client
        .push_blob(&a, &digest, data.clone().into())
        .await
        .unwrap();
    // HEAD + POST + 4 PATCH (64+64+64+8 KiB) + PUT.
    assert_eq!(client.stats().requests - before, 7);
    assert_eq!(
        &client.fetch_blob(&a, &digest).await.unwrap()[..],
        &data[..]
    );

    assert!(matches!(
        client.fetch_blob(&b, &digest).await,
        Err(Error::NotFound { .. })
    ));
    assert!(client.mount_blob(&b, "test/a", &digest).await.unwrap());
    assert_eq!(
        &client.fetch_blob(&b, &digest).await.unwrap()[..],
        &data[..]
    );
    let unknown = Digest::sha256(b"unknown");
    assert!(!client.mount_blob(&b, "test/a", &unknown).await.unwrap());
}

#[tokio::test(flavor = "multi_thread")]
async fn manifests_indexes_and_platform_choice() {
    let reg = Registry::start(Auth::Anonymous).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let client = Client::new(test_config(cfg_dir.path())).unwrap();
    let amd = reg.reference("test/img:amd64");
    let arm = reg.reference("test/img:arm64");
    let (amd_body, amd_digest, amd_layer) =
        push_image(&client, &amd, "amd64", &pattern(3000, 1), true).await;
    let (_, arm_digest, arm_layer) =
        push_image(&client, &arm, "arm64", &pattern(4000, 2), true).await;

    let (body, mt, d) = client.fetch_manifest(&amd).await.unwrap();
    assert_eq!(
        (&body[..], mt.as_str(), d),
        (&amd_body[..], MEDIA_TYPE_OCI_MANIFEST, amd_digest)
    );

    let index = serde_json::json!({
        "schemaVersion": 2,
        "mediaType": MEDIA_TYPE_OCI_INDEX,
        "manifests": [
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": amd_digest.to_string(), "size": amd_body.len(), "platform": {"os": "linux", "architecture": "amd64"}},
            {"mediaType": MEDIA_TYPE_OCI_MANIFEST, "digest": arm_digest.to_string(), "size": client.fetch_manifest(&arm).await.unwrap().0.len(), "platform": {"os": "linux", "architecture": "arm64", "variant": "v8"}},
        ],
    })
    .to_string();
    let multi = reg.reference("test/img:multi");
    let index_digest = client
        .push_manifest(&multi, MEDIA_TYPE_OCI_INDEX, index.clone().into())
        .await
        .unwrap();
    assert_eq!(index_digest, Digest::sha256(index.as_bytes()));

    for (platform, want_digest, want_layer, arch) in [
        ("linux/amd64", amd_digest, amd_layer, "amd64"),
        ("linux/arm64", arm_digest, arm_layer, "arm64"),
    ] {
        let mut cfg = test_config(cfg_dir.path());
        cfg.platform = Some(platform.parse::<Platform>().unwrap());
        let c = Client::new(cfg).unwrap();
        let img = c.resolve(&multi).await.unwrap();
        assert_eq!(img.manifest_digest, want_digest, "{platform}");
        assert_eq!(img.reference.digest, Some(want_digest));
        assert_eq!(
            img.manifest.layers()[0].digest().to_string(),
            want_layer.to_string()
        );
        assert_eq!(img.config.architecture().to_string(), arch);
        assert_eq!(
            Digest::sha256(&img.config_bytes).to_string(),
            img.manifest.config().digest().to_string()
        );
    }
    let mut cfg = test_config(cfg_dir.path());
    cfg.platform = Some("linux/s390x".parse().unwrap());
    let err = Client::new(cfg).unwrap().resolve(&multi).await.unwrap_err();
    assert!(matches!(err, Error::NoMatchingPlatform { .. }), "{err}");

    // By digest: verified against the reference.
    let pinned = multi.with_digest(index_digest);
    let (_, mt, _) = client.fetch_manifest(&pinned).await.unwrap();
    assert_eq!(mt, MEDIA_TYPE_OCI_INDEX);
}

#[tokio::test(flavor = "multi_thread")]
async fn manifest_without_media_type_takes_content_type() {
    let reg = Registry::start(Auth::Anonymous).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let client = Client::new(test_config(cfg_dir.path())).unwrap();
    let r = reg.reference("test/umoci:latest");
    let (body, digest, layer) = push_image(&client, &r, "amd64", &pattern(1000, 3), false).await;
    assert!(
        !String::from_utf8_lossy(&body)
            .contains("mediaType\":\"application/vnd.oci.image.manifest")
    );
    let img = client.resolve(&r).await.unwrap();
    assert_eq!(img.media_type, MEDIA_TYPE_OCI_MANIFEST);
    assert_eq!(img.manifest_digest, digest);
    assert_eq!(
        img.manifest.layers()[0].digest().to_string(),
        layer.to_string()
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_schema2_manifest_list() {
    let reg = Registry::start(Auth::Anonymous).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let client = Client::new(test_config(cfg_dir.path())).unwrap();
    let r = reg.reference("test/docker:v2");
    let layer = pattern(2000, 4);
    let layer_digest = Digest::sha256(&layer);
    client
        .push_blob(&r, &layer_digest, layer.clone().into())
        .await
        .unwrap();
    let config = serde_json::json!({"architecture": Platform::host().architecture, "os": "linux", "rootfs": {"type": "layers", "diff_ids": [layer_digest.to_string()]}}).to_string();
    let config_digest = Digest::sha256(config.as_bytes());
    client
        .push_blob(&r, &config_digest, config.clone().into_bytes().into())
        .await
        .unwrap();
    let manifest = serde_json::json!({
        "schemaVersion": 2, "mediaType": regfs_registry::MEDIA_TYPE_DOCKER_MANIFEST,
        "config": {"mediaType": "application/vnd.docker.container.image.v1+json", "size": config.len(), "digest": config_digest.to_string()},
        "layers": [{"mediaType": "application/vnd.docker.image.rootfs.diff.tar.gzip", "size": layer.len(), "digest": layer_digest.to_string()}],
    })
    .to_string();
    let m_digest = client
        .push_manifest(
            &r,
            regfs_registry::MEDIA_TYPE_DOCKER_MANIFEST,
            manifest.clone().into(),
        )
        .await
        .unwrap();
    let list = serde_json::json!({
        "schemaVersion": 2, "mediaType": regfs_registry::MEDIA_TYPE_DOCKER_LIST,
        "manifests": [{"mediaType": regfs_registry::MEDIA_TYPE_DOCKER_MANIFEST, "size": manifest.len(), "digest": m_digest.to_string(),
                       "platform": {"os": "linux", "architecture": Platform::host().architecture}}],
    })
    .to_string();
    let lr = reg.reference("test/docker:list");
    client
        .push_manifest(&lr, regfs_registry::MEDIA_TYPE_DOCKER_LIST, list.into())
        .await
        .unwrap();
    let img = client.resolve(&lr).await.unwrap();
    assert_eq!(img.media_type, regfs_registry::MEDIA_TYPE_DOCKER_MANIFEST);
    assert_eq!(img.manifest_digest, m_digest);
}

#[tokio::test(flavor = "multi_thread")]
async fn hosts_toml_mirror_first_then_origin() {
    let reg = Registry::start(Auth::Anonymous).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let client = Client::new(test_config(cfg_dir.path())).unwrap();
    let r = reg.reference("test/mirrored:1");
    let data = pattern(5000, 5);
    let digest = Digest::sha256(&data);
    client
        .push_blob(&r, &digest, data.clone().into())
        .await
        .unwrap();

    // A mirror that knows nothing (404) and checks its configured header, then a dead mirror.
    let mirror = FakeServer::start(|_| Reply::status(404)).await;
    let dead = support::free_port();
    let hosts = tempfile::tempdir().unwrap();
    let dir = hosts.path().join(&reg.host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(
        dir.join("hosts.toml"),
        format!(
            "server = \"http://{origin}\"\n\n[host.\"http://{m}\"]\ncapabilities = [\"pull\", \"resolve\"]\n[host.\"http://{m}\".header]\nx-mirror-test = \"yes\"\n\n[host.\"http://127.0.0.1:{dead}\"]\ncapabilities = [\"pull\"]\n",
            origin = reg.host,
            m = mirror.host(),
        ),
    )
    .unwrap();
    let mut cfg = test_config(cfg_dir.path());
    cfg.hosts_dir = Some(hosts.path().to_owned());
    let mirrored = Client::new(cfg).unwrap();
    let got = mirrored.read_range(&r, &digest, 100..200).await.unwrap();
    assert_eq!(&got[..], &data[100..200]);
    let seen = mirror.requests();
    assert!(!seen.is_empty(), "mirror was not tried");
    assert!(
        seen.iter()
            .all(|q| q.header("x-mirror-test") == Some("yes"))
    );
    assert!(
        seen[0].path.starts_with("/v2/test/mirrored/blobs/"),
        "{}",
        seen[0].path
    );
}

/// Writes `<hosts>/<host>/hosts.toml`.
fn hosts_toml(hosts: &std::path::Path, host: &str, text: &str) {
    let dir = hosts.join(host);
    std::fs::create_dir_all(&dir).unwrap();
    std::fs::write(dir.join("hosts.toml"), text).unwrap();
}

#[tokio::test(flavor = "multi_thread")]
async fn tls_registry_with_hosts_toml_ca_and_skip_verify() {
    let certs = tempfile::tempdir().unwrap();
    let (cert, key) = support::self_signed_cert(certs.path());
    let reg = Registry::start_with(Auth::Anonymous, Some((cert.clone(), key))).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let r = reg.reference("tls/img:1");
    let data = pattern(3000, 8);
    let digest = Digest::sha256(&data);

    // Loopback defaults to plain HTTP, which this registry does not speak.
    let plain = Client::new(test_config(cfg_dir.path())).unwrap();
    assert!(
        plain
            .push_blob(&r, &digest, data.clone().into())
            .await
            .is_err()
    );

    // HTTPS with the system roots only: the self-signed certificate is refused.
    let hosts = tempfile::tempdir().unwrap();
    hosts_toml(
        hosts.path(),
        &reg.host,
        &format!("server = \"https://{}\"\n", reg.host),
    );
    let mut cfg = test_config(cfg_dir.path());
    cfg.hosts_dir = Some(hosts.path().to_owned());
    let err = Client::new(cfg)
        .unwrap()
        .push_blob(&r, &digest, data.clone().into())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Connect { .. }), "{err}");

    // `ca` (relative to the host's directory) makes it trusted.
    std::fs::copy(&cert, hosts.path().join(&reg.host).join("ca.pem")).unwrap();
    hosts_toml(
        hosts.path(),
        &reg.host,
        &format!("server = \"https://{}\"\nca = \"ca.pem\"\n", reg.host),
    );
    let mut cfg = test_config(cfg_dir.path());
    cfg.hosts_dir = Some(hosts.path().to_owned());
    let with_ca = Client::new(cfg).unwrap();
    with_ca
        .push_blob(&r, &digest, data.clone().into())
        .await
        .unwrap();
    assert_eq!(
        &with_ca.read_range(&r, &digest, 5..50).await.unwrap()[..],
        &data[5..50]
    );

    // `skip_verify` works without the CA.
    let hosts2 = tempfile::tempdir().unwrap();
    hosts_toml(
        hosts2.path(),
        &reg.host,
        &format!("server = \"https://{}\"\nskip_verify = true\n", reg.host),
    );
    let mut cfg = test_config(cfg_dir.path());
    cfg.hosts_dir = Some(hosts2.path().to_owned());
    let skip = Client::new(cfg).unwrap();
    assert_eq!(&skip.fetch_blob(&r, &digest).await.unwrap()[..], &data[..]);
}

#[tokio::test(flavor = "multi_thread")]
async fn proxy_setting_routes_requests_through_the_proxy() {
    let (data, digest) = (pattern(1000, 6), Digest::sha256(&pattern(1000, 6)));
    let d2 = data.clone();
    // An HTTP proxy sees absolute-form request targets; this one answers them itself.
    let proxy = FakeServer::start(move |req| {
        if req.path.starts_with("http://") && req.path.contains("/blobs/") {
            Reply::ok(d2.clone())
        } else {
            Reply::status(502)
        }
    })
    .await;
    let dead = support::free_port();
    let cfg_dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(cfg_dir.path());
    cfg.proxy = Some(format!("http://{}", proxy.host()));
    let client = Client::new(cfg).unwrap();
    let r: regfs_registry::Reference = format!("127.0.0.1:{dead}/via/proxy:1").parse().unwrap();
    assert_eq!(
        &client.fetch_blob(&r, &digest).await.unwrap()[..],
        &data[..]
    );
    let seen = proxy.requests();
    assert_eq!(seen.len(), 1);
    assert!(
        seen[0]
            .path
            .starts_with(&format!("http://127.0.0.1:{dead}/v2/via/proxy/blobs/")),
        "{}",
        seen[0].path
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn client_certificate_from_hosts_toml() {
    let certs = tempfile::tempdir().unwrap();
    let (server_cert, server_key) = support::self_signed_cert(certs.path());
    let client_dir = tempfile::tempdir().unwrap();
    let (client_cert, client_key) = support::self_signed_cert(client_dir.path());
    let reg = Registry::start_mtls(server_cert.clone(), server_key, client_cert.clone()).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let r = reg.reference("mtls/img:1");
    let data = pattern(2000, 12);
    let digest = Digest::sha256(&data);

    let hosts = tempfile::tempdir().unwrap();
    let server = format!(
        "server = \"https://{}\"\nca = \"{}\"\n",
        reg.host,
        server_cert.display()
    );
    hosts_toml(hosts.path(), &reg.host, &server);
    let mut cfg = test_config(cfg_dir.path());
    cfg.hosts_dir = Some(hosts.path().to_owned());
    let anonymous_tls = Client::new(cfg.clone()).unwrap();
    assert!(
        anonymous_tls
            .push_blob(&r, &digest, data.clone().into())
            .await
            .is_err()
    );

    let hosts2 = tempfile::tempdir().unwrap();
    hosts_toml(
        hosts2.path(),
        &reg.host,
        &format!(
            "{server}client = [[\"{}\", \"{}\"]]\n",
            client_cert.display(),
            client_key.display()
        ),
    );
    cfg.hosts_dir = Some(hosts2.path().to_owned());
    let with_cert = Client::new(cfg).unwrap();
    with_cert
        .push_blob(&r, &digest, data.clone().into())
        .await
        .unwrap();
    assert_eq!(
        &with_cert.fetch_blob(&r, &digest).await.unwrap()[..],
        &data[..]
    );
}

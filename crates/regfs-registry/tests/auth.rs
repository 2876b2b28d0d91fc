//! Auth against a real `docker-registry`: htpasswd Basic, token auth (OAuth2 POST, GET fallback,
//! identity tokens) and credentials from docker's `config.json`.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use base64::Engine as _;
use regfs_registry::{Client, Credentials, Digest, Error};
use support::{Auth, Registry, TokenOptions, TokenServer, pattern, push_image, test_config};

const USER: &str = "tester";
const PASS: &str = "s3cret-pass";

fn user_pass(user: &str, pass: &str) -> Credentials {
    Credentials::UserPassword {
        username: user.into(),
        password: pass.into(),
    }
}

/// Push an image and read it back; proves pull and push scopes work.
async fn round_trip(client: &Client, reg: &Registry) {
    let r = reg.reference("auth/img:1");
    let layer = pattern(10_000, 11);
    let (_, digest, layer_digest) = push_image(client, &r, "amd64", &layer, true).await;
    let img = client.resolve(&r).await.unwrap();
    assert_eq!(img.manifest_digest, digest);
    let got = client.read_range(&r, &layer_digest, 10..20).await.unwrap();
    assert_eq!(&got[..], &layer[10..20]);
}

#[tokio::test(flavor = "multi_thread")]
async fn basic_auth_good_and_bad_credentials() {
    let reg = Registry::start(Auth::Htpasswd {
        user: USER.into(),
        password: PASS.into(),
    })
    .await;
    let cfg_dir = tempfile::tempdir().unwrap();

    let mut cfg = test_config(cfg_dir.path());
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, PASS));
    round_trip(&Client::new(cfg).unwrap(), &reg).await;

    let mut cfg = test_config(cfg_dir.path());
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, "wrong"));
    let err = Client::new(cfg)
        .unwrap()
        .fetch_manifest(&reg.reference("auth/img:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
    assert!(err.to_string().contains(&reg.host), "{err}");
    assert!(err.to_string().contains("rejected"), "{err}");

    let err = Client::new(test_config(cfg_dir.path()))
        .unwrap()
        .fetch_manifest(&reg.reference("auth/img:1"))
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no username/password"), "{err}");
}

/// A keychain whose entries change while the client runs, as a CRI proxy's do.
#[derive(Debug, Default)]
struct Remembered(std::sync::Mutex<Vec<(String, String, Credentials)>>);

impl regfs_registry::Keychain for Remembered {
    fn credentials(&self, host: &str, repository: &str) -> Option<Credentials> {
        let entries = self.0.lock().unwrap();
        entries
            .iter()
            .find(|(h, r, _)| h == host && r == repository)
            .map(|(_, _, c)| c.clone())
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn keychain_credentials_are_per_repository_win_and_are_read_at_each_request() {
    let reg = Registry::start(Auth::Htpasswd {
        user: USER.into(),
        password: PASS.into(),
    })
    .await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let keychain = std::sync::Arc::new(Remembered::default());
    let mut cfg = test_config(cfg_dir.path());
    // The configured credentials are wrong: only the keychain's can make a request pass.
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, "wrong"));
    cfg.keychain = Some(keychain.clone());
    let client = Client::new(cfg).unwrap();
    let r = reg.reference("auth/img:1");

    // Nothing in the keychain yet: the configured (wrong) credentials are used.
    let err = client.fetch_manifest(&r).await.unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");

    // Credentials for another repository do not apply to this one.
    keychain
        .0
        .lock()
        .unwrap()
        .push((reg.host.clone(), "auth/other".into(), user_pass(USER, PASS)));
    let err = client.fetch_manifest(&r).await.unwrap_err();
    assert!(err.to_string().contains("rejected"), "{err}");

    // Handed over for this repository, they win over the configured ones on the same client.
    keychain
        .0
        .lock()
        .unwrap()
        .push((reg.host.clone(), "auth/img".into(), user_pass(USER, PASS)));
    round_trip(&client, &reg).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_with_oauth2_post() {
    let tokens = TokenServer::start(TokenOptions {
        user: USER.into(),
        password: PASS.into(),
        post: true,
        ..TokenOptions::default()
    });
    let reg = Registry::start(tokens.registry_auth()).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(cfg_dir.path());
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, PASS));
    let client = Client::new(cfg).unwrap();
    round_trip(&client, &reg).await;
    assert!(tokens.posts() > 0);
    assert_eq!(tokens.gets(), 0);
    // Tokens are cached per scope: far fewer token fetches than requests.
    let s = client.stats();
    assert!(
        s.token_fetches >= 2 && s.token_fetches * 3 < s.requests,
        "{s:?}"
    );

    let mut cfg = test_config(cfg_dir.path());
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, "wrong"));
    let err = Client::new(cfg)
        .unwrap()
        .fetch_manifest(&reg.reference("auth/img:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");

    // Anonymous: the token server wants credentials.
    let err = Client::new(test_config(cfg_dir.path()))
        .unwrap()
        .fetch_manifest(&reg.reference("auth/img:1"))
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Unauthorized { .. }), "{err}");
}

#[tokio::test(flavor = "multi_thread")]
async fn token_auth_falls_back_to_get_when_post_is_unsupported() {
    let tokens = TokenServer::start(TokenOptions {
        user: USER.into(),
        password: PASS.into(),
        post: false,
        ..TokenOptions::default()
    });
    let reg = Registry::start(tokens.registry_auth()).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(cfg_dir.path());
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, PASS));
    round_trip(&Client::new(cfg).unwrap(), &reg).await;
    assert!(tokens.gets() > 0);
    assert!(tokens.posts() > 0, "POST was not tried first");
}

#[tokio::test(flavor = "multi_thread")]
async fn docker_config_auths_and_identity_token() {
    let tokens = TokenServer::start(TokenOptions {
        user: USER.into(),
        password: PASS.into(),
        post: true,
        ..TokenOptions::default()
    });
    let reg = Registry::start(tokens.registry_auth()).await;

    // `auth` (base64 user:pass) under an http:// key.
    let cfg_dir = tempfile::tempdir().unwrap();
    let auth = base64::engine::general_purpose::STANDARD.encode(format!("{USER}:{PASS}"));
    std::fs::write(
        cfg_dir.path().join("config.json"),
        format!(
            r#"{{"auths":{{"http://{}":{{"auth":"{auth}"}}}}}}"#,
            reg.host
        ),
    )
    .unwrap();
    round_trip(&Client::new(test_config(cfg_dir.path())).unwrap(), &reg).await;

    // identitytoken: a refresh token obtained with the password grant, then the refresh grant.
    let form = url::form_urlencoded::Serializer::new(String::new())
        .append_pair("grant_type", "password")
        .append_pair("username", USER)
        .append_pair("password", PASS)
        .append_pair("service", support::TOKEN_SERVICE)
        .append_pair("client_id", "test")
        .finish();
    let reply: serde_json::Value = reqwest::Client::builder()
        .no_proxy()
        .build()
        .unwrap()
        .post(tokens.realm())
        .header("content-type", "application/x-www-form-urlencoded")
        .body(form)
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    let rt = reply["refresh_token"].as_str().unwrap();
    let id_dir = tempfile::tempdir().unwrap();
    std::fs::write(
        id_dir.path().join("config.json"),
        format!(
            r#"{{"auths":{{"{}":{{"identitytoken":"{rt}"}}}}}}"#,
            reg.host
        ),
    )
    .unwrap();
    let before = tokens.refresh_posts();
    let client = Client::new(test_config(id_dir.path())).unwrap();
    let r = reg.reference("auth/img:1");
    let img = client.resolve(&r).await.unwrap();
    assert_eq!(Digest::sha256(&img.manifest_bytes), img.manifest_digest);
    assert!(tokens.refresh_posts() > before);
}

#[tokio::test(flavor = "multi_thread")]
async fn concurrent_cold_reads_share_one_token() {
    let tokens = TokenServer::start(TokenOptions {
        user: USER.into(),
        password: PASS.into(),
        post: true,
        ..TokenOptions::default()
    });
    let reg = Registry::start(tokens.registry_auth()).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(cfg_dir.path());
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, PASS));
    let pusher = Client::new(cfg.clone()).unwrap();
    let r = reg.reference("auth/race:1");
    let data = pattern(64 * 1024, 13);
    let digest = Digest::sha256(&data);
    pusher
        .push_blob(&r, &digest, data.clone().into())
        .await
        .unwrap();

    let client = Client::new(cfg).unwrap();
    let reads = (0..16u64).map(|i| {
        let (client, r) = (client.clone(), r.clone());
        tokio::spawn(async move {
            let range = i * 4096..(i + 1) * 4096;
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
    assert_eq!(client.stats().token_fetches, 1, "{:?}", client.stats());
}

/// A client reading `data` of `r` range by range every `pause` for `total`; every read must
/// return the right bytes. Returns how many reads it made.
async fn read_for(
    client: &Client,
    r: &regfs_registry::Reference,
    digest: &Digest,
    data: &[u8],
    total: std::time::Duration,
) -> u64 {
    let start = std::time::Instant::now();
    let mut reads = 0u64;
    while start.elapsed() < total {
        let at = (reads * 4096) % (data.len() as u64 - 4096);
        let got = client
            .read_range(r, digest, at..at + 4096)
            .await
            .unwrap_or_else(|e| panic!("read {reads} at {at} failed: {e}"));
        assert_eq!(&got[..], &data[at as usize..at as usize + 4096]);
        reads += 1;
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    reads
}

/// Pushes a 256 KiB blob through a token-auth registry and returns a fresh reading client.
async fn short_token_rig(
    opts: TokenOptions,
) -> (
    TokenServer,
    Registry,
    Client,
    regfs_registry::Reference,
    Digest,
    Vec<u8>,
    tempfile::TempDir,
) {
    let tokens = TokenServer::start(opts);
    let reg = Registry::start(tokens.registry_auth()).await;
    let cfg_dir = tempfile::tempdir().unwrap();
    let mut cfg = test_config(cfg_dir.path());
    cfg.credentials
        .insert(reg.host.clone(), user_pass(USER, PASS));
    let r = reg.reference("auth/short:1");
    let data = pattern(256 * 1024, 17);
    let digest = Digest::sha256(&data);
    Client::new(cfg.clone())
        .unwrap()
        .push_blob(&r, &digest, data.clone().into())
        .await
        .unwrap();
    let client = Client::new(cfg).unwrap();
    (tokens, reg, client, r, digest, data, cfg_dir)
}

/// Tokens the real registry accepts for 3 s, announced honestly: a reader going on for more
/// than three lifetimes never fails, and every token is replaced before it dies (no request is
/// ever refused after the first challenge).
#[tokio::test(flavor = "multi_thread")]
async fn short_lived_tokens_are_renewed_before_they_expire() {
    let (_tokens, _reg, client, r, digest, data, _d) = short_token_rig(TokenOptions {
        user: USER.into(),
        password: PASS.into(),
        lifetime: 3,
        expires_in: Some(3),
        ..TokenOptions::default()
    })
    .await;
    let reads = read_for(
        &client,
        &r,
        &digest,
        &data,
        std::time::Duration::from_secs(10),
    )
    .await;
    let s = client.stats();
    assert!(s.token_fetches >= 4, "tokens were not renewed: {s:?}");
    // One request per read, one per token fetch, and the single anonymous 401 that taught the
    // client the challenge: a token used past its death would add a refused request.
    assert_eq!(s.requests, reads + s.token_fetches + 1, "{s:?}");
    assert_eq!(s.retries, 0, "{s:?}");
}

/// Tokens that die after 2 s while the token server announces an hour: the client cannot know,
/// so each death shows up as a 401 on a range read, which is answered with a fresh token and the
/// read still succeeds.
#[tokio::test(flavor = "multi_thread")]
async fn tokens_that_die_before_their_announced_expiry_are_replaced_on_401() {
    let (_tokens, _reg, client, r, digest, data, _d) = short_token_rig(TokenOptions {
        user: USER.into(),
        password: PASS.into(),
        lifetime: 2,
        expires_in: Some(3600),
        ..TokenOptions::default()
    })
    .await;
    let reads = read_for(
        &client,
        &r,
        &digest,
        &data,
        std::time::Duration::from_secs(8),
    )
    .await;
    let s = client.stats();
    assert!(s.token_fetches >= 3, "{s:?}");
    // Every token after the first was fetched because the registry refused the old one.
    assert_eq!(s.requests, reads + 2 * s.token_fetches, "{s:?}");
}

//! Credentials from a `docker-credential-<name>` helper (credHelpers and credsStore), against a
//! real htpasswd-protected `docker-registry`. Its own test binary because it puts the helper on
//! this process's PATH.

// Test code: a panic is how a test fails. clippy's `allow-unwrap-in-tests` covers `#[test]`
// functions only, not the helpers here and in the shared test modules, hence this allow.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use regfs_registry::Client;
use support::{Auth, Registry, pattern, push_image, test_config};

const USER: &str = "helper-user";
const PASS: &str = "helper-pass";

#[test]
// `set_var` is unsafe since edition 2024; the client finds helpers on this process's PATH, and
// this binary has a single test, so no other thread reads the environment meanwhile.
#[allow(unsafe_code)]
fn credential_helper_supplies_basic_credentials() {
    let bin = tempfile::tempdir().unwrap();
    let helper = bin.path().join("docker-credential-test");
    // Knows one server; says "not found" for anything else, as real helpers do.
    std::fs::write(
        &helper,
        format!(
            "#!/bin/sh\n[ \"$1\" = get ] || exit 2\nread server\necho \"$server\" >> \"$0.log\"\ncase \"$server\" in\n  127.0.0.1:*) printf '{{\"ServerURL\":\"%s\",\"Username\":\"{USER}\",\"Secret\":\"{PASS}\"}}' \"$server\" ;;\n  *) echo 'credentials not found in native keychain'; exit 1 ;;\nesac\n"
        ),
    )
    .unwrap();
    use std::os::unix::fs::PermissionsExt as _;
    std::fs::set_permissions(&helper, std::fs::Permissions::from_mode(0o755)).unwrap();
    let path = format!(
        "{}:{}",
        bin.path().display(),
        std::env::var("PATH").unwrap_or_default()
    );
    // SAFETY: set before the runtime and any other thread of this test binary exist.
    unsafe { std::env::set_var("PATH", path) };

    tokio::runtime::Runtime::new().unwrap().block_on(async {
        let reg = Registry::start(Auth::Htpasswd {
            user: USER.into(),
            password: PASS.into(),
        })
        .await;

        let helpers = tempfile::tempdir().unwrap();
        std::fs::write(
            helpers.path().join("config.json"),
            format!(r#"{{"credHelpers":{{"{}":"test"}}}}"#, reg.host),
        )
        .unwrap();
        let client = Client::new(test_config(helpers.path())).unwrap();
        let r = reg.reference("helper/img:1");
        let (_, digest, _) = push_image(&client, &r, "amd64", &pattern(500, 1), true).await;
        assert_eq!(client.resolve(&r).await.unwrap().manifest_digest, digest);
        let log = std::fs::read_to_string(bin.path().join("docker-credential-test.log")).unwrap();
        assert_eq!(log.lines().next(), Some(reg.host.as_str()));

        // credsStore for every registry; this one the helper does not know → no credentials.
        let store = tempfile::tempdir().unwrap();
        std::fs::write(store.path().join("config.json"), r#"{"credsStore":"test"}"#).unwrap();
        let client = Client::new(test_config(store.path())).unwrap();
        assert!(client.resolve(&r).await.is_ok());
        // The same registry spelled `localhost:PORT`: the helper answers "not found".
        let port = reg.host.rsplit_once(':').unwrap().1;
        let other: regfs_registry::Reference =
            format!("localhost:{port}/helper/img:1").parse().unwrap();
        let err = client.fetch_manifest(&other).await.unwrap_err();
        assert!(err.to_string().contains("no username/password"), "{err}");

        // A helper that is not installed is a clear error naming it.
        let missing = tempfile::tempdir().unwrap();
        std::fs::write(
            missing.path().join("config.json"),
            format!(r#"{{"credHelpers":{{"{}":"absent"}}}}"#, reg.host),
        )
        .unwrap();
        let err = Client::new(test_config(missing.path()))
            .unwrap()
            .resolve(&r)
            .await
            .unwrap_err();
        assert!(
            err.to_string().contains("docker-credential-absent"),
            "{err}"
        );
    });
}

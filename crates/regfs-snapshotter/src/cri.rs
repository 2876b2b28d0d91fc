//! The CRI image-service proxy: kubelet's credentials for lazily pulled layers.
//!
//! ```text
//! kubelet ──ImageService──▶ regfs (--cri-proxy SOCK) ──same bytes──▶ containerd (--cri-upstream)
//!                               │ PullImage: remember image → credentials        │ unpack
//!                               ▼                                                ▼
//!                          CriKeychain ◀── registry client asks per request ── Prepare(labels)
//! ```
//!
//! On Kubernetes, image pull secrets never reach the node's disk: kubelet sends them with each
//! `PullImage` call. containerd uses them for the layers it downloads, but a remote snapshotter
//! fetches layers itself, later and on its own, and would be refused by a private registry. So
//! kubelet is pointed at this proxy (`--image-service-endpoint`), which forwards every
//! `runtime.v1.ImageService` call to containerd's CRI socket byte for byte (messages are not
//! re-encoded, so fields newer than the vendored proto pass through intact, and containerd's
//! answers and error codes come back unchanged). Before forwarding a `PullImage`, it records the
//! credentials in a [`CriKeychain`], keyed by the image's registry and repository; the registry
//! client of the lazy layers consults that keychain at every request, so a later pull with new
//! credentials refreshes them, and a pull without any forgets them.
//!
//! The keychain lives in memory only: secrets are not written to disk. After a restart, layers
//! of private images are reachable again once kubelet pulls the image again.

use std::collections::HashMap;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, PoisonError, RwLock};
use std::task::{Context, Poll};

use bytes::{Buf, BufMut, Bytes};
use futures::future::BoxFuture;
use prost::Message as _;
use regfs_registry::{Credentials, Keychain, Reference};
use tokio::net::UnixListener;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::http;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use crate::Error;

/// The CRI v1 API generated from the vendored `api.proto` (see `proto/PROVENANCE.md`): message
/// types and clients of `RuntimeService` and `ImageService`, for tools and tests.
#[allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]
pub mod api {
    tonic::include_proto!("runtime.v1");
}

/// The gRPC service the proxy serves and forwards.
const IMAGE_SERVICE: &str = "runtime.v1.ImageService";

/// The one method whose request the proxy reads.
const PULL_IMAGE: &str = "/runtime.v1.ImageService/PullImage";

/// Largest message either way: kubelet allows 16 MiB; `ListImages` of a big node can be large.
const MAX_MESSAGE: usize = 64 << 20;

/// Credentials kubelet sent with `PullImage`, by (registry host, repository).
#[derive(Debug, Default)]
pub struct CriKeychain {
    entries: RwLock<HashMap<(String, String), Credentials>>,
    pulls: AtomicU64,
    pulls_with_credentials: AtomicU64,
}

impl CriKeychain {
    /// An empty keychain.
    pub fn new() -> CriKeychain {
        CriKeychain::default()
    }

    /// Records what kubelet sent to pull `image` (a reference as kubelet writes it, e.g.
    /// `python:3.12` or `registry.example.com/team/app@sha256:…`): its credentials replace any
    /// earlier ones for that repository; a pull without credentials forgets them. Returns
    /// whether credentials are now held for it.
    pub fn remember(&self, image: &str, auth: Option<&api::AuthConfig>) -> Result<bool, Error> {
        let bad = |reason: String| Error::BadCriAuth {
            image: image.to_owned(),
            reason,
        };
        let reference: Reference = image.parse().map_err(|e| bad(format!("{e}")))?;
        let credentials = match auth {
            Some(a) => credentials_of(a).map_err(bad)?,
            None => None,
        };
        self.pulls.fetch_add(1, Ordering::Relaxed);
        let key = (reference.registry, reference.repository);
        let mut entries = self.entries.write().unwrap_or_else(PoisonError::into_inner);
        Ok(match credentials {
            Some(c) => {
                self.pulls_with_credentials.fetch_add(1, Ordering::Relaxed);
                entries.insert(key, c);
                true
            }
            None => {
                entries.remove(&key);
                false
            }
        })
    }

    /// Repositories with credentials now.
    pub fn len(&self) -> usize {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .len()
    }

    /// Whether no repository has credentials.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Prometheus text: pulls seen, pulls that carried credentials, repositories held.
    pub fn prometheus(&self) -> String {
        format!(
            "# HELP regfs_cri_pulls_total PullImage calls forwarded by the CRI proxy.\n\
             # TYPE regfs_cri_pulls_total counter\n\
             regfs_cri_pulls_total {}\n\
             # HELP regfs_cri_pulls_with_credentials_total PullImage calls that carried credentials.\n\
             # TYPE regfs_cri_pulls_with_credentials_total counter\n\
             regfs_cri_pulls_with_credentials_total {}\n\
             # HELP regfs_cri_credentials Repositories the CRI proxy holds credentials for.\n\
             # TYPE regfs_cri_credentials gauge\n\
             regfs_cri_credentials {}\n",
            self.pulls.load(Ordering::Relaxed),
            self.pulls_with_credentials.load(Ordering::Relaxed),
            self.len()
        )
    }
}

impl Keychain for CriKeychain {
    fn credentials(&self, host: &str, repository: &str) -> Option<Credentials> {
        self.entries
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .get(&(host.to_owned(), repository.to_owned()))
            .cloned()
    }
}

/// The credentials in a CRI `AuthConfig`, read the way containerd's CRI plugin reads them: a
/// username (with its password) first, then an identity token, then `auth` (base64 of
/// `user:password`). `None` when it carries none; an error for an `auth` that does not decode
/// or a registry token (a bearer token for the registry itself, which containerd does not
/// support either).
pub fn credentials_of(auth: &api::AuthConfig) -> Result<Option<Credentials>, String> {
    if !auth.username.is_empty() {
        return Ok(Some(Credentials::UserPassword {
            username: auth.username.clone(),
            password: auth.password.clone(),
        }));
    }
    if !auth.identity_token.is_empty() {
        return Ok(Some(Credentials::IdentityToken(
            auth.identity_token.clone(),
        )));
    }
    if !auth.auth.is_empty() {
        return Credentials::from_basic_auth(&auth.auth).map(Some);
    }
    if !auth.registry_token.is_empty() {
        return Err(
            "registry_token is not supported (use username/password or identity_token)".into(),
        );
    }
    Ok(None)
}

/// A client of the CRI image service on the unix socket `socket` (the proxy's or containerd's),
/// for tools and tests.
pub async fn image_service_client(
    socket: &Path,
) -> Result<api::image_service_client::ImageServiceClient<Channel>, Error> {
    Ok(api::image_service_client::ImageServiceClient::new(
        crate::client::connect_unix(socket).await?,
    ))
}

/// Serves the CRI image service on `listener`, forwarding to containerd's CRI socket `upstream`
/// (dialled lazily: containerd may start after the proxy), until `shutdown` resolves.
pub async fn serve_cri_proxy(
    listener: UnixListener,
    upstream: PathBuf,
    keychain: Arc<CriKeychain>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    let proxy = ImageServiceProxy {
        upstream: crate::client::unix_channel(upstream),
        keychain,
    };
    tonic::transport::Server::builder()
        .add_service(proxy)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await?;
    Ok(())
}

/// Every `runtime.v1.ImageService` method, forwarded as raw message bytes.
#[derive(Clone)]
struct ImageServiceProxy {
    upstream: Channel,
    keychain: Arc<CriKeychain>,
}

impl tonic::server::NamedService for ImageServiceProxy {
    const NAME: &'static str = IMAGE_SERVICE;
}

impl tower::Service<http::Request<tonic::body::Body>> for ImageServiceProxy {
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<'static, Result<Self::Response, Self::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<tonic::body::Body>) -> Self::Future {
        let forward = Forward {
            path: req.uri().path().to_owned(),
            proxy: self.clone(),
        };
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec)
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            Ok(grpc.unary(forward, req).await)
        })
    }
}

/// One call on its way to containerd.
struct Forward {
    path: String,
    proxy: ImageServiceProxy,
}

impl tonic::server::UnaryService<Bytes> for Forward {
    type Response = Bytes;
    type Future = BoxFuture<'static, Result<Response<Bytes>, Status>>;

    fn call(&mut self, request: Request<Bytes>) -> Self::Future {
        let path = std::mem::take(&mut self.path);
        let proxy = self.proxy.clone();
        Box::pin(async move {
            if path == PULL_IMAGE {
                proxy.remember(request.get_ref());
            }
            let path = http::uri::PathAndQuery::try_from(path.as_str())
                .map_err(|e| Status::unimplemented(format!("bad method path {path:?}: {e}")))?;
            let (metadata, _, body) = request.into_parts();
            let mut client = tonic::client::Grpc::new(proxy.upstream.clone())
                .max_decoding_message_size(MAX_MESSAGE)
                .max_encoding_message_size(MAX_MESSAGE);
            client.ready().await.map_err(|e| {
                Status::unavailable(format!("containerd's CRI socket is not reachable: {e}"))
            })?;
            let request = Request::from_parts(metadata, tonic::Extensions::default(), body);
            client.unary(request, path, RawCodec).await
        })
    }
}

impl ImageServiceProxy {
    /// Reads a `PullImage` request for its image and credentials. A request the proxy cannot
    /// read is still forwarded: containerd decides, and its answer reaches kubelet.
    fn remember(&self, body: &Bytes) {
        let pull = match api::PullImageRequest::decode(body.clone()) {
            Ok(p) => p,
            Err(e) => {
                tracing::warn!(error = %e, "CRI proxy: PullImage request does not decode; forwarded as is");
                return;
            }
        };
        let image = pull.image.map(|i| i.image).unwrap_or_default();
        match self.keychain.remember(&image, pull.auth.as_ref()) {
            Ok(held) => {
                tracing::info!(image, credentials = held, "CRI proxy: PullImage");
            }
            Err(e) => {
                tracing::warn!(error = %e, "CRI proxy: credentials not remembered; lazy pulls of this image run without them");
            }
        }
    }
}

/// Message bytes in, message bytes out: the proxy never re-encodes what it forwards.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Bytes;
    type Decode = Bytes;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> RawCodec {
        RawCodec
    }

    fn decoder(&mut self) -> RawCodec {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn encode(&mut self, item: Bytes, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put(item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = Bytes;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<Bytes>, Status> {
        Ok(Some(src.copy_to_bytes(src.remaining())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn auth(f: impl FnOnce(&mut api::AuthConfig)) -> api::AuthConfig {
        let mut a = api::AuthConfig::default();
        f(&mut a);
        a
    }

    fn user(u: &str, p: &str) -> Credentials {
        Credentials::UserPassword {
            username: u.into(),
            password: p.into(),
        }
    }

    #[test]
    fn auth_configs_read_like_containerd_reads_them() {
        assert_eq!(credentials_of(&api::AuthConfig::default()), Ok(None));
        assert_eq!(
            credentials_of(&auth(|a| {
                a.username = "u".into();
                a.password = "p".into();
                a.identity_token = "ignored".into();
            })),
            Ok(Some(user("u", "p")))
        );
        assert_eq!(
            credentials_of(&auth(|a| a.identity_token = "refresh".into())),
            Ok(Some(Credentials::IdentityToken("refresh".into())))
        );
        assert_eq!(
            credentials_of(&auth(|a| a.auth = "dTpwOnc=".into())), // u:p:w
            Ok(Some(user("u", "p:w")))
        );
        for bad in ["%%%", "dXNlcg=="] {
            // not base64; base64 of "user" without a colon
            let err = credentials_of(&auth(|a| a.auth = bad.into())).unwrap_err();
            assert!(err.contains("auth"), "{err}");
        }
        let err = credentials_of(&auth(|a| a.registry_token = "t".into())).unwrap_err();
        assert!(err.contains("registry_token"), "{err}");
    }

    #[test]
    fn the_keychain_keys_by_registry_and_repository_and_follows_the_last_pull() {
        let k = CriKeychain::new();
        let with = |u: &str| {
            auth(|a| {
                a.username = u.into();
                a.password = "pw".into();
            })
        };
        assert!(k.remember("python:3.12", Some(&with("a"))).unwrap());
        // Docker Hub short names are normalised as containerd does.
        assert_eq!(
            k.credentials("docker.io", "library/python"),
            Some(user("a", "pw"))
        );
        assert_eq!(k.credentials("docker.io", "library/ruby"), None);
        assert!(
            k.remember("127.0.0.1:5000/team/app@sha256:0000000000000000000000000000000000000000000000000000000000000000", Some(&with("b")))
                .unwrap()
        );
        assert_eq!(
            k.credentials("127.0.0.1:5000", "team/app"),
            Some(user("b", "pw"))
        );
        // Pulled again with other credentials: they replace the old ones.
        assert!(
            k.remember("docker.io/library/python:3.13", Some(&with("c")))
                .unwrap()
        );
        assert_eq!(
            k.credentials("docker.io", "library/python"),
            Some(user("c", "pw"))
        );
        // Pulled without credentials: forgotten.
        assert!(!k.remember("python", None).unwrap());
        assert_eq!(k.credentials("docker.io", "library/python"), None);
        assert_eq!(k.len(), 1);
        let text = k.prometheus();
        assert!(text.contains("regfs_cri_pulls_total 4"), "{text}");
        assert!(
            text.contains("regfs_cri_pulls_with_credentials_total 3"),
            "{text}"
        );
        assert!(text.contains("regfs_cri_credentials 1"), "{text}");
        // A reference that does not parse is an error naming it; nothing changes.
        let err = k.remember("UPPER/Case::", Some(&with("d"))).unwrap_err();
        assert!(err.to_string().contains("UPPER/Case::"), "{err}");
        assert_eq!(k.len(), 1);
    }
}

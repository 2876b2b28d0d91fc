//! A typed client for the snapshots service over a unix socket (tests and tools).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use hyper_util::rt::TokioIo;
use tonic::Status;
use tonic::transport::{Channel, Endpoint};

use crate::Error;
use crate::proto::{self, snapshots as pb};
use crate::snapshot::{Info, Mount, Usage};

/// The URI is required by tonic but unused: the connector always dials the socket.
fn unix_endpoint() -> Endpoint {
    Endpoint::from_static("http://[::]:50051")
}

fn unix_connector(
    socket: PathBuf,
) -> impl tower::Service<
    tonic::codegen::http::Uri,
    Response = TokioIo<tokio::net::UnixStream>,
    Error = std::io::Error,
    Future = impl Send,
> + Clone
+ Send {
    tower::service_fn(move |_| {
        let socket = socket.clone();
        async move { Ok(TokioIo::new(tokio::net::UnixStream::connect(socket).await?)) }
    })
}

/// A channel to the gRPC server on the unix socket `socket`, connected at first use (and again
/// after the server restarts).
pub(crate) fn unix_channel(socket: PathBuf) -> Channel {
    unix_endpoint().connect_with_connector_lazy(unix_connector(socket))
}

/// A channel to the gRPC server on the unix socket `socket`, connected now.
pub(crate) async fn connect_unix(socket: &Path) -> Result<Channel, Error> {
    Ok(unix_endpoint()
        .connect_with_connector(unix_connector(socket.to_owned()))
        .await?)
}

/// A connected snapshots client. Calls answer the server's `tonic::Status` unchanged, so
/// callers can check codes.
#[derive(Clone)]
pub struct Client {
    inner: pb::snapshots_client::SnapshotsClient<Channel>,
}

impl Client {
    /// Connects to the snapshotter listening on `socket`.
    pub async fn connect(socket: &Path) -> Result<Client, Error> {
        let channel = connect_unix(socket).await?;
        Ok(Client {
            inner: pb::snapshots_client::SnapshotsClient::new(channel),
        })
    }

    /// Prepare.
    pub async fn prepare(
        &mut self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let r = self
            .inner
            .prepare(pb::PrepareSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
                parent: parent.into(),
                labels: labels.into_iter().collect(),
            })
            .await?;
        Ok(r.into_inner()
            .mounts
            .into_iter()
            .map(proto::mount_from_proto)
            .collect())
    }

    /// View.
    pub async fn view(
        &mut self,
        key: &str,
        parent: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, Status> {
        let r = self
            .inner
            .view(pb::ViewSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
                parent: parent.into(),
                labels: labels.into_iter().collect(),
            })
            .await?;
        Ok(r.into_inner()
            .mounts
            .into_iter()
            .map(proto::mount_from_proto)
            .collect())
    }

    /// Mounts.
    pub async fn mounts(&mut self, key: &str) -> Result<Vec<Mount>, Status> {
        let r = self
            .inner
            .mounts(pb::MountsRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?;
        Ok(r.into_inner()
            .mounts
            .into_iter()
            .map(proto::mount_from_proto)
            .collect())
    }

    /// Commit `key` as `name`.
    pub async fn commit(
        &mut self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Status> {
        self.inner
            .commit(pb::CommitSnapshotRequest {
                snapshotter: String::new(),
                name: name.into(),
                key: key.into(),
                labels: labels.into_iter().collect(),
            })
            .await?;
        Ok(())
    }

    /// Remove.
    pub async fn remove(&mut self, key: &str) -> Result<(), Status> {
        self.inner
            .remove(pb::RemoveSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?;
        Ok(())
    }

    /// Stat.
    pub async fn stat(&mut self, key: &str) -> Result<Info, Status> {
        let r = self
            .inner
            .stat(pb::StatSnapshotRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?;
        info_from(r.into_inner().info)
    }

    /// Update with a field mask (`labels`, `labels.<key>`; empty = all labels).
    pub async fn update(&mut self, info: Info, paths: &[&str]) -> Result<Info, Status> {
        let r = self
            .inner
            .update(pb::UpdateSnapshotRequest {
                snapshotter: String::new(),
                info: Some(proto::info_to_proto(info)),
                update_mask: Some(prost_types::FieldMask {
                    paths: paths.iter().map(|p| p.to_string()).collect(),
                }),
            })
            .await?;
        info_from(r.into_inner().info)
    }

    /// Usage.
    pub async fn usage(&mut self, key: &str) -> Result<Usage, Status> {
        let r = self
            .inner
            .usage(pb::UsageRequest {
                snapshotter: String::new(),
                key: key.into(),
            })
            .await?
            .into_inner();
        Ok(Usage {
            size: r.size,
            inodes: r.inodes,
        })
    }

    /// List (Walk) with containerd filters, all stream messages collected.
    pub async fn list(&mut self, filters: &[&str]) -> Result<Vec<Info>, Status> {
        let mut stream = self
            .inner
            .list(pb::ListSnapshotsRequest {
                snapshotter: String::new(),
                filters: filters.iter().map(|f| f.to_string()).collect(),
            })
            .await?
            .into_inner();
        let mut out = Vec::new();
        while let Some(batch) = stream.message().await? {
            for i in batch.info {
                out.push(info_from(Some(i))?);
            }
        }
        Ok(out)
    }

    /// Cleanup.
    pub async fn cleanup(&mut self) -> Result<(), Status> {
        self.inner
            .cleanup(pb::CleanupRequest {
                snapshotter: String::new(),
            })
            .await?;
        Ok(())
    }
}

fn info_from(i: Option<pb::Info>) -> Result<Info, Status> {
    let i = i.ok_or_else(|| Status::internal("response without info"))?;
    if proto::kind_from_proto(i.kind).is_none() {
        return Err(Status::internal(format!(
            "snapshot {:?} of unknown kind {}",
            i.name, i.kind
        )));
    }
    Ok(proto::info_from_proto(i))
}

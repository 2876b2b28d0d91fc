//! The gRPC adapter: containerd's `Snapshots` service over a [`Snapshotter`], and [`serve`].
//!
//! Each handler converts the request, awaits one snapshotter call and converts the answer;
//! errors become `tonic::Status` through the one mapping in `error.rs`. The `snapshotter` field
//! of requests is ignored: one socket serves one snapshotter, whatever containerd calls it.

use std::collections::BTreeMap;
use std::future::Future;
use std::sync::Arc;

use tokio::net::UnixListener;
use tokio_stream::wrappers::{ReceiverStream, UnixListenerStream};
use tonic::{Request, Response, Status};

use crate::Error;
use crate::proto::{self, snapshots as pb};
use crate::snapshotter::Snapshotter;

/// Infos per List message: containerd's own snapshot service sends batches of 100, which keeps
/// each message far below gRPC's 4 MiB default limit even with large label sets.
const LIST_BATCH: usize = 100;

/// Serves `snapshotter` on `listener` until `shutdown` resolves, then lets in-flight calls
/// finish and unmounts the remote snapshots. Persisted remote snapshots are mounted again
/// before the first connection is accepted.
pub async fn serve(
    listener: UnixListener,
    snapshotter: Arc<Snapshotter>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), Error> {
    snapshotter.restore_remote().await?;
    let service = pb::snapshots_server::SnapshotsServer::new(Service {
        snapshotter: Arc::clone(&snapshotter),
    });
    let served = tonic::transport::Server::builder()
        .add_service(service)
        .serve_with_incoming_shutdown(UnixListenerStream::new(listener), shutdown)
        .await;
    let unmounted = snapshotter.unmount_remote().await;
    served?;
    unmounted
}

struct Service {
    snapshotter: Arc<Snapshotter>,
}

fn parent(p: String) -> Option<String> {
    Some(p).filter(|p| !p.is_empty())
}

fn labels(l: std::collections::HashMap<String, String>) -> BTreeMap<String, String> {
    l.into_iter().collect()
}

fn mounts(m: Vec<crate::Mount>) -> Vec<proto::ProtoMount> {
    m.into_iter().map(proto::mount_to_proto).collect()
}

#[tonic::async_trait]
impl pb::snapshots_server::Snapshots for Service {
    async fn prepare(
        &self,
        request: Request<pb::PrepareSnapshotRequest>,
    ) -> Result<Response<pb::PrepareSnapshotResponse>, Status> {
        let r = request.into_inner();
        let m = self
            .snapshotter
            .prepare(&r.key, parent(r.parent).as_deref(), labels(r.labels))
            .await?;
        Ok(Response::new(pb::PrepareSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn view(
        &self,
        request: Request<pb::ViewSnapshotRequest>,
    ) -> Result<Response<pb::ViewSnapshotResponse>, Status> {
        let r = request.into_inner();
        let m = self
            .snapshotter
            .view(&r.key, parent(r.parent).as_deref(), labels(r.labels))
            .await?;
        Ok(Response::new(pb::ViewSnapshotResponse {
            mounts: mounts(m),
        }))
    }

    async fn mounts(
        &self,
        request: Request<pb::MountsRequest>,
    ) -> Result<Response<pb::MountsResponse>, Status> {
        let m = self.snapshotter.mounts(&request.into_inner().key).await?;
        Ok(Response::new(pb::MountsResponse { mounts: mounts(m) }))
    }

    async fn commit(
        &self,
        request: Request<pb::CommitSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        let r = request.into_inner();
        self.snapshotter
            .commit(&r.name, &r.key, labels(r.labels))
            .await?;
        Ok(Response::new(()))
    }

    async fn remove(
        &self,
        request: Request<pb::RemoveSnapshotRequest>,
    ) -> Result<Response<()>, Status> {
        self.snapshotter.remove(&request.into_inner().key).await?;
        Ok(Response::new(()))
    }

    async fn stat(
        &self,
        request: Request<pb::StatSnapshotRequest>,
    ) -> Result<Response<pb::StatSnapshotResponse>, Status> {
        let info = self.snapshotter.stat(&request.into_inner().key).await?;
        Ok(Response::new(pb::StatSnapshotResponse {
            info: Some(proto::info_to_proto(info)),
        }))
    }

    async fn update(
        &self,
        request: Request<pb::UpdateSnapshotRequest>,
    ) -> Result<Response<pb::UpdateSnapshotResponse>, Status> {
        let r = request.into_inner();
        let info = r
            .info
            .ok_or_else(|| Status::invalid_argument("update without info"))?;
        let paths = r.update_mask.map(|m| m.paths).unwrap_or_default();
        let info = self
            .snapshotter
            .update(proto::info_from_proto(info), paths)
            .await?;
        Ok(Response::new(pb::UpdateSnapshotResponse {
            info: Some(proto::info_to_proto(info)),
        }))
    }

    type ListStream = ReceiverStream<Result<pb::ListSnapshotsResponse, Status>>;

    async fn list(
        &self,
        request: Request<pb::ListSnapshotsRequest>,
    ) -> Result<Response<Self::ListStream>, Status> {
        let infos = self.snapshotter.list(request.into_inner().filters).await?;
        let batches: Vec<pb::ListSnapshotsResponse> = infos
            .chunks(LIST_BATCH)
            .map(|c| pb::ListSnapshotsResponse {
                info: c.iter().cloned().map(proto::info_to_proto).collect(),
            })
            .collect();
        // Everything is already in memory: a channel that holds all batches never blocks.
        let (tx, rx) = tokio::sync::mpsc::channel(batches.len().max(1));
        for b in batches {
            // The receiver is alive: it is returned below.
            let _ = tx.try_send(Ok(b));
        }
        Ok(Response::new(ReceiverStream::new(rx)))
    }

    async fn usage(
        &self,
        request: Request<pb::UsageRequest>,
    ) -> Result<Response<pb::UsageResponse>, Status> {
        let u = self.snapshotter.usage(&request.into_inner().key).await?;
        Ok(Response::new(pb::UsageResponse {
            size: u.size,
            inodes: u.inodes,
        }))
    }

    async fn cleanup(&self, _request: Request<pb::CleanupRequest>) -> Result<Response<()>, Status> {
        let removed = self.snapshotter.cleanup().await?;
        tracing::debug!(removed, "cleanup");
        Ok(Response::new(()))
    }
}

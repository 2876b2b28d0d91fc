//! The snapshotter: containerd's overlayfs snapshotter semantics over a root directory and a
//! metadata database, plus the remote-layer path.
//!
//! Blocking work (redb transactions, directory walks) runs on tokio's blocking pool; the only
//! thing awaited outside it is [`RemoteLayers::mount`], and no lock is held across that await,
//! so the layers of one image mount concurrently.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex, MutexGuard};

use crate::Error;
use crate::filter::Filter;
use crate::metadata::{Record, Stamp, Store};
use crate::remote::{
    FallbackReason, REMOTE_MARKER_LABEL, RemoteLayer, RemoteLayers, RemoteMount, RemoteStats,
    RemoteStatsSnapshot,
};
use crate::snapshot::{Info, Kind, Mount, TARGET_LABEL, Usage};

/// `st_blocks` counts 512-byte units whatever the filesystem's block size (stat(2)).
const STAT_BLOCK_SIZE: i64 = 512;

/// Where a remote snapshot's lazy mount stands.
enum RemoteState {
    /// Persisted, not mounted again yet (between `open` and `restore_remote`).
    Pending,
    /// Mounted; the guard unmounts.
    Mounted(Box<dyn RemoteMount>),
    /// Could not be mounted (or was shut down): Stat works, Mounts names the reason.
    Unavailable(String),
}

/// A containerd snapshotter over `root` (see the crate docs for the layout).
pub struct Snapshotter {
    inner: Arc<Inner>,
}

struct Inner {
    root: PathBuf,
    store: Store,
    remote: Option<Arc<dyn RemoteLayers>>,
    /// Remote snapshots by id. Locked only briefly, never across an await.
    mounts: Mutex<HashMap<u64, RemoteState>>,
    stats: RemoteStats,
}

/// Why the remote path did not produce a committed snapshot.
enum RemoteMiss {
    /// Someone else committed the target meanwhile: the answer is ALREADY_EXISTS all the same.
    TargetExists(String),
    /// Fall back to an ordinary active snapshot.
    Fallback(FallbackReason, String),
}

impl Snapshotter {
    /// Opens (creating if needed) a snapshotter rooted at `root`. Remote snapshots found in the
    /// metadata are unavailable until [`Snapshotter::restore_remote`] mounts them again
    /// ([`crate::serve`] does that before it accepts connections).
    pub fn open(root: &Path, remote: Option<Arc<dyn RemoteLayers>>) -> Result<Snapshotter, Error> {
        let snapshots = root.join("snapshots");
        std::fs::create_dir_all(&snapshots)
            .map_err(|e| Error::io("create snapshot directory", &snapshots, e))?;
        let store = Store::open(&root.join("metadata.db"))?;
        let pending = store.read(|tx| {
            Ok(tx
                .all()?
                .into_iter()
                .filter(|(_, r)| r.remote.is_some())
                .map(|(_, r)| (r.id, RemoteState::Pending))
                .collect::<HashMap<_, _>>())
        })?;
        Ok(Snapshotter {
            inner: Arc::new(Inner {
                root: root.to_owned(),
                store,
                remote,
                mounts: Mutex::new(pending),
                stats: RemoteStats::default(),
            }),
        })
    }

    /// The root directory.
    pub fn root(&self) -> &Path {
        &self.inner.root
    }

    /// The remote-path counters.
    pub fn remote_stats(&self) -> RemoteStatsSnapshot {
        self.inner.stats.snapshot()
    }

    async fn blocking<T: Send + 'static>(
        &self,
        f: impl FnOnce(&Inner) -> Result<T, Error> + Send + 'static,
    ) -> Result<T, Error> {
        let inner = Arc::clone(&self.inner);
        tokio::task::spawn_blocking(move || f(&inner)).await?
    }

    /// Creates an active snapshot `key` on `parent` and returns its mounts; with a target label
    /// and remote-layer labels, first tries to mount the layer remotely and, when that works,
    /// answers [`Error::AlreadyExists`] naming the committed target instead.
    pub async fn prepare(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        let target = labels.get(TARGET_LABEL).filter(|t| !t.is_empty()).cloned();
        let remote_candidate = target.is_some() && has_remote_labels(&labels);
        let (key_owned, parent_owned, labels_owned) =
            (key.to_owned(), parent.map(str::to_owned), labels.clone());
        let (id, mounts) = self
            .blocking(move |s| {
                s.create(
                    Kind::Active,
                    &key_owned,
                    parent_owned.as_deref(),
                    labels_owned,
                )
            })
            .await?;
        let Some(target) = target.filter(|_| remote_candidate) else {
            return Ok(mounts);
        };
        match self.try_remote(key, id, &target, labels).await {
            Ok(()) => Err(Error::AlreadyExists { key: target }),
            Err(RemoteMiss::TargetExists(target)) => Err(Error::AlreadyExists { key: target }),
            Err(RemoteMiss::Fallback(reason, why)) => {
                tracing::warn!(key, target, ?reason, %why, "remote layer not used, falling back to download");
                self.inner.stats.fallback(reason);
                Ok(mounts)
            }
        }
    }

    async fn try_remote(
        &self,
        key: &str,
        id: u64,
        target: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), RemoteMiss> {
        let Some(provider) = self.inner.remote.clone() else {
            return Err(RemoteMiss::Fallback(
                FallbackReason::NotConfigured,
                "no remote layer provider configured".into(),
            ));
        };
        let layer = match RemoteLayer::from_labels(&labels) {
            Ok(Some(layer)) => layer,
            Ok(None) => {
                return Err(RemoteMiss::Fallback(
                    FallbackReason::BadLabels,
                    "no remote layer labels".into(),
                ));
            }
            Err(e) => {
                return Err(RemoteMiss::Fallback(
                    FallbackReason::BadLabels,
                    e.to_string(),
                ));
            }
        };
        let fs = self.inner.fs_dir(id);
        let guard = match provider.mount(layer.clone(), fs.clone()).await {
            Ok(guard) => guard,
            Err(e) => {
                let _ = self.blocking(move |s| s.reset_dir(&fs)).await;
                return Err(RemoteMiss::Fallback(
                    FallbackReason::MountFailed,
                    e.to_string(),
                ));
            }
        };
        // Published before the commit so that a child prepared right after the commit finds
        // its parent mounted.
        self.inner
            .lock_mounts()
            .insert(id, RemoteState::Mounted(guard));
        let (k, t) = (key.to_owned(), target.to_owned());
        let committed = self
            .blocking(move |s| s.commit_remote(&k, &t, labels, layer))
            .await;
        let err = match committed {
            Ok(()) => {
                self.inner.stats.mounted();
                return Ok(());
            }
            Err(e) => e,
        };
        let state = self.inner.lock_mounts().remove(&id);
        if let Some(RemoteState::Mounted(guard)) = state
            && let Err(e) = guard.unmount()
        {
            tracing::warn!(key, error = %e, "unmounting an unused remote layer failed");
        }
        let _ = self.blocking(move |s| s.reset_dir(&fs)).await;
        match err {
            Error::AlreadyExists { key: existing } => {
                let k = key.to_owned();
                if let Err(e) = self.blocking(move |s| s.remove(&k)).await {
                    tracing::warn!(key, error = %e, "removing the superseded active snapshot failed");
                }
                Err(RemoteMiss::TargetExists(existing))
            }
            other => Err(RemoteMiss::Fallback(
                FallbackReason::CommitFailed,
                other.to_string(),
            )),
        }
    }

    /// Creates a read-only view `key` of `parent` and returns its mounts.
    pub async fn view(
        &self,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<Vec<Mount>, Error> {
        let (key, parent) = (key.to_owned(), parent.map(str::to_owned));
        self.blocking(move |s| s.create(Kind::View, &key, parent.as_deref(), labels))
            .await
            .map(|(_, mounts)| mounts)
    }

    /// The mounts of an active snapshot or view.
    pub async fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        let key = key.to_owned();
        self.blocking(move |s| s.mounts(&key)).await
    }

    /// Commits active snapshot `key` as `name` with `labels`; its usage is fixed now.
    pub async fn commit(
        &self,
        name: &str,
        key: &str,
        labels: BTreeMap<String, String>,
    ) -> Result<(), Error> {
        let (name, key) = (name.to_owned(), key.to_owned());
        self.blocking(move |s| s.commit(&name, &key, labels)).await
    }

    /// Removes a snapshot without children (unmounting it first when it is remote).
    pub async fn remove(&self, key: &str) -> Result<(), Error> {
        let key = key.to_owned();
        self.blocking(move |s| s.remove(&key)).await
    }

    /// The info of `key`.
    pub async fn stat(&self, key: &str) -> Result<Info, Error> {
        let key = key.to_owned();
        self.blocking(move |s| s.store.read(|tx| Ok(tx.require(&key)?.info(&key))))
            .await
    }

    /// Updates the labels of `info.name` as containerd does: `field_paths` empty or `labels`
    /// replaces all labels, `labels.<key>` sets one (an empty value deletes it); anything else
    /// is [`Error::ImmutableField`].
    pub async fn update(&self, info: Info, field_paths: Vec<String>) -> Result<Info, Error> {
        self.blocking(move |s| s.update(info, &field_paths)).await
    }

    /// Disk usage: walked for active snapshots, fixed at commit for committed ones, reported by
    /// the mount for remote ones.
    pub async fn usage(&self, key: &str) -> Result<Usage, Error> {
        let key = key.to_owned();
        self.blocking(move |s| s.usage(&key)).await
    }

    /// Every snapshot matching any of `filters` (containerd filter syntax; see the crate docs).
    pub async fn list(&self, filters: Vec<String>) -> Result<Vec<Info>, Error> {
        self.blocking(move |s| {
            let filter = Filter::parse(&filters);
            s.store.read(|tx| {
                Ok(tx
                    .all()?
                    .into_iter()
                    .map(|(k, r)| r.info(&k))
                    .filter(|i| filter.matches(i))
                    .collect())
            })
        })
        .await
    }

    /// Removes snapshot directories that belong to no snapshot (left by a crash or a failed
    /// removal). Returns how many were removed.
    pub async fn cleanup(&self) -> Result<usize, Error> {
        self.blocking(|s| s.cleanup()).await
    }

    /// Mounts every persisted remote snapshot again through the [`RemoteLayers`] given to
    /// [`Snapshotter::open`], concurrently. A failure is logged and leaves that snapshot
    /// present but unavailable ([`Error::RemoteUnavailable`] from Mounts).
    pub async fn restore_remote(&self) -> Result<(), Error> {
        let records = self.blocking(|s| s.store.read(|tx| tx.all())).await?;
        let pending: Vec<(u64, String, RemoteLayer)> = {
            let mounts = self.inner.lock_mounts();
            records
                .into_iter()
                .filter_map(|(k, r)| Some((r.id, k, r.remote?)))
                .filter(|(id, _, _)| !matches!(mounts.get(id), Some(RemoteState::Mounted(_))))
                .collect()
        };
        let attempts = pending.into_iter().map(|(id, key, layer)| {
            let this = self;
            async move {
                let fs = this.inner.fs_dir(id);
                let reset = {
                    let fs = fs.clone();
                    this.blocking(move |s| s.reset_dir(&fs)).await
                };
                let state = match (&this.inner.remote, reset) {
                    (None, _) => Err("no remote layer provider configured".to_owned()),
                    (_, Err(e)) => Err(e.to_string()),
                    (Some(p), Ok(())) => p.mount(layer, fs).await.map_err(|e| e.to_string()),
                };
                this.inner.stats.remounted(state.is_ok());
                let state = state.map(RemoteState::Mounted).unwrap_or_else(|reason| {
                    tracing::warn!(key, %reason, "remote snapshot could not be mounted again");
                    RemoteState::Unavailable(reason)
                });
                this.inner.lock_mounts().insert(id, state);
            }
        });
        futures::future::join_all(attempts).await;
        Ok(())
    }

    /// Unmounts every remote snapshot (they stay in the metadata and are mounted again by the
    /// next [`Snapshotter::restore_remote`]).
    pub async fn unmount_remote(&self) -> Result<(), Error> {
        self.blocking(|s| {
            let guards: Vec<(u64, Box<dyn RemoteMount>)> = {
                let mut mounts = s.lock_mounts();
                let ids: Vec<u64> = mounts.keys().copied().collect();
                ids.into_iter()
                    .filter_map(|id| match mounts.remove(&id) {
                        Some(RemoteState::Mounted(g)) => {
                            mounts.insert(id, RemoteState::Pending);
                            Some((id, g))
                        }
                        Some(other) => {
                            mounts.insert(id, other);
                            None
                        }
                        None => None,
                    })
                    .collect()
            };
            for (id, guard) in guards {
                if let Err(e) = guard.unmount() {
                    tracing::warn!(id, error = %e, "unmounting a remote snapshot failed");
                }
            }
            Ok(())
        })
        .await
    }
}

fn has_remote_labels(labels: &BTreeMap<String, String>) -> bool {
    use crate::remote::*;
    [
        STARGZ_REFERENCE_LABEL,
        STARGZ_DIGEST_LABEL,
        STARGZ_LAYERS_LABEL,
        CRI_IMAGE_REF_LABEL,
        CRI_LAYER_DIGEST_LABEL,
        CRI_IMAGE_LAYERS_LABEL,
    ]
    .iter()
    .any(|k| labels.contains_key(*k))
}

impl Inner {
    fn lock_mounts(&self) -> MutexGuard<'_, HashMap<u64, RemoteState>> {
        // A panic while holding this lock leaves the map consistent (single inserts/removes).
        self.mounts.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn snapshot_dir(&self, id: u64) -> PathBuf {
        self.root.join("snapshots").join(id.to_string())
    }

    fn fs_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("fs")
    }

    fn work_dir(&self, id: u64) -> PathBuf {
        self.snapshot_dir(id).join("work")
    }

    fn create(
        &self,
        kind: Kind,
        key: &str,
        parent: Option<&str>,
        labels: BTreeMap<String, String>,
    ) -> Result<(u64, Vec<Mount>), Error> {
        if key.is_empty() {
            return Err(Error::EmptyKey { what: "key" });
        }
        let mut created: Option<PathBuf> = None;
        let result = self.store.write(|tx| {
            if tx.get(key)?.is_some() {
                return Err(Error::AlreadyExists {
                    key: key.to_owned(),
                });
            }
            let chain = tx.chain(parent)?;
            if let Some((pkey, prec)) = chain.first()
                && prec.kind != Kind::Committed
            {
                return Err(Error::ParentNotCommitted {
                    parent: pkey.clone(),
                    kind: prec.kind,
                });
            }
            let id = tx.next_id()?;
            let mounts = self.mounts_for(id, kind, &chain)?;
            let dir = self.snapshot_dir(id);
            created = Some(dir.clone());
            self.make_dirs(id, kind, chain.first().map(|(_, r)| r.id))?;
            let now = Stamp::now();
            tx.put(
                key,
                &Record {
                    id,
                    kind,
                    parent: parent.map(str::to_owned),
                    labels,
                    created: now,
                    updated: now,
                    usage: Usage::default(),
                    remote: None,
                },
            )?;
            if let Some(p) = parent {
                tx.link_child(p, key)?;
            }
            Ok((id, mounts))
        });
        if let (Err(_), Some(dir)) = (&result, created) {
            let _ = std::fs::remove_dir_all(dir);
        }
        result
    }

    fn make_dirs(&self, id: u64, kind: Kind, parent: Option<u64>) -> Result<(), Error> {
        use std::os::unix::fs::DirBuilderExt;
        let fs = self.fs_dir(id);
        // 0755 like containerd's overlay snapshotter: the container's root directory.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o755)
            .create(&fs)
            .map_err(|e| Error::io("create snapshot directory", &fs, e))?;
        if kind == Kind::Active {
            // 0711 like containerd: overlayfs needs to traverse the workdir, nobody to list it.
            let work = self.work_dir(id);
            std::fs::DirBuilder::new()
                .mode(0o711)
                .create(&work)
                .map_err(|e| Error::io("create work directory", &work, e))?;
        }
        // The upper directory is the root of the container: it takes the owner of the
        // parent's root, as containerd does (user-namespaced images own their root).
        if let Some(pid) = parent {
            let pfs = self.fs_dir(pid);
            let st =
                std::fs::metadata(&pfs).map_err(|e| Error::io("stat parent directory", &pfs, e))?;
            std::os::unix::fs::lchown(&fs, Some(st.uid()), Some(st.gid()))
                .map_err(|e| Error::io("chown snapshot directory", &fs, e))?;
        }
        Ok(())
    }

    /// containerd's overlay snapshotter mounts: a bind mount where overlay cannot be used (no
    /// parent; a view of exactly one parent), otherwise overlay with lowerdirs nearest first.
    fn mounts_for(
        &self,
        id: u64,
        kind: Kind,
        chain: &[(String, Record)],
    ) -> Result<Vec<Mount>, Error> {
        {
            let mounts = self.lock_mounts();
            for (key, record) in chain.iter().filter(|(_, r)| r.remote.is_some()) {
                let reason = match mounts.get(&record.id) {
                    Some(RemoteState::Mounted(_)) => continue,
                    Some(RemoteState::Unavailable(reason)) => reason.clone(),
                    Some(RemoteState::Pending) | None => "not mounted (yet)".to_owned(),
                };
                return Err(Error::RemoteUnavailable {
                    key: key.clone(),
                    reason,
                });
            }
        }
        let path = |id: u64| self.fs_dir(id).display().to_string();
        let bind = |source: String, ro: bool| Mount {
            fs_type: "bind".into(),
            source,
            options: vec![if ro { "ro" } else { "rw" }.into(), "rbind".into()],
        };
        if chain.is_empty() {
            return Ok(vec![bind(path(id), kind == Kind::View)]);
        }
        // index=off: the lower directories are shared by every container of the image, and
        // with the index feature on, a lower used by a second overlay fails to mount.
        let mut options = vec!["index=off".to_owned()];
        if kind == Kind::Active {
            options.push(format!("workdir={}", self.work_dir(id).display()));
            options.push(format!("upperdir={}", path(id)));
        } else if let [(_, only)] = chain {
            return Ok(vec![bind(path(only.id), true)]);
        }
        let lowers: Vec<String> = chain.iter().map(|(_, r)| path(r.id)).collect();
        options.push(format!("lowerdir={}", lowers.join(":")));
        Ok(vec![Mount {
            fs_type: "overlay".into(),
            source: "overlay".into(),
            options,
        }])
    }

    fn mounts(&self, key: &str) -> Result<Vec<Mount>, Error> {
        self.store.read(|tx| {
            let record = tx.require(key)?;
            if record.kind == Kind::Committed {
                return Err(Error::NotMountable {
                    key: key.to_owned(),
                });
            }
            let chain = tx.chain(record.parent.as_deref())?;
            self.mounts_for(record.id, record.kind, &chain)
        })
    }

    fn commit(&self, name: &str, key: &str, labels: BTreeMap<String, String>) -> Result<(), Error> {
        if name.is_empty() {
            return Err(Error::EmptyKey { what: "name" });
        }
        let active = self.store.read(|tx| tx.require(key))?;
        if active.kind != Kind::Active {
            return Err(Error::NotActive {
                key: key.to_owned(),
                kind: active.kind,
            });
        }
        let usage = disk_usage(&self.fs_dir(active.id))?;
        self.store.write(|tx| {
            let active = tx.require(key)?;
            if active.kind != Kind::Active {
                return Err(Error::NotActive {
                    key: key.to_owned(),
                    kind: active.kind,
                });
            }
            if tx.get(name)?.is_some() {
                return Err(Error::AlreadyExists {
                    key: name.to_owned(),
                });
            }
            let now = Stamp::now();
            let committed = Record {
                kind: Kind::Committed,
                labels,
                created: now,
                updated: now,
                usage,
                remote: None,
                ..active
            };
            tx.delete(key)?;
            tx.put(name, &committed)?;
            if let Some(p) = &committed.parent {
                tx.unlink_child(p, key)?;
                tx.link_child(p, name)?;
            }
            Ok(())
        })
    }

    /// Turns the active `key`, whose `fs` is now a remote mount, into committed `target`.
    fn commit_remote(
        &self,
        key: &str,
        target: &str,
        mut labels: BTreeMap<String, String>,
        layer: RemoteLayer,
    ) -> Result<(), Error> {
        labels.insert(REMOTE_MARKER_LABEL.to_owned(), "regfs".to_owned());
        let id = self.store.write(|tx| {
            let active = tx.require(key)?;
            if tx.get(target)?.is_some() {
                return Err(Error::AlreadyExists {
                    key: target.to_owned(),
                });
            }
            let now = Stamp::now();
            let committed = Record {
                kind: Kind::Committed,
                labels,
                created: now,
                updated: now,
                usage: Usage::default(),
                remote: Some(layer),
                ..active
            };
            tx.delete(key)?;
            tx.put(target, &committed)?;
            if let Some(p) = &committed.parent {
                tx.unlink_child(p, key)?;
                tx.link_child(p, target)?;
            }
            Ok(committed.id)
        })?;
        // A committed snapshot is never an overlay upper; the work dir is dead weight.
        let _ = std::fs::remove_dir(self.work_dir(id));
        Ok(())
    }

    fn remove(&self, key: &str) -> Result<(), Error> {
        let record = self.store.write(|tx| {
            let record = tx.require(key)?;
            let children = tx.children(key)?;
            if !children.is_empty() {
                return Err(Error::HasChildren {
                    key: key.to_owned(),
                    children: children.len(),
                });
            }
            tx.delete(key)?;
            if let Some(p) = &record.parent {
                tx.unlink_child(p, key)?;
            }
            Ok(record)
        })?;
        let state = self.lock_mounts().remove(&record.id);
        if let Some(RemoteState::Mounted(guard)) = state
            && let Err(e) = guard.unmount()
        {
            tracing::warn!(key, error = %e, "unmounting a removed remote snapshot failed");
        }
        let fs = self.fs_dir(record.id);
        if record.remote.is_some() && is_mountpoint(&fs) {
            detach(&fs);
        }
        let dir = self.snapshot_dir(record.id);
        if is_mountpoint(&fs) {
            // Deleting through a live mount would delete the layer's files (a bind-mounted
            // cache, say); leave the directory to a later Cleanup.
            tracing::warn!(key, dir = %dir.display(), "snapshot directory still mounted, not removed");
            return Ok(());
        }
        if let Err(e) = std::fs::remove_dir_all(&dir) {
            // The metadata is gone, so Cleanup removes the directory later.
            tracing::warn!(key, dir = %dir.display(), error = %e, "removing snapshot directory failed");
        }
        Ok(())
    }

    fn update(&self, info: Info, field_paths: &[String]) -> Result<Info, Error> {
        let key = info.name.clone();
        self.store.write(|tx| {
            let mut record = tx.require(&key)?;
            if field_paths.is_empty() {
                record.labels = info.labels.clone();
            }
            for path in field_paths {
                if path == "labels" {
                    record.labels = info.labels.clone();
                } else if let Some(label) = path.strip_prefix("labels.") {
                    match info.labels.get(label) {
                        Some(v) if !v.is_empty() => {
                            record.labels.insert(label.to_owned(), v.clone());
                        }
                        _ => {
                            record.labels.remove(label);
                        }
                    }
                } else {
                    return Err(Error::ImmutableField {
                        key: key.clone(),
                        path: path.clone(),
                    });
                }
            }
            // containerd stores no empty label values.
            record.labels.retain(|_, v| !v.is_empty());
            record.updated = Stamp::now();
            tx.put(&key, &record)?;
            Ok(record.info(&key))
        })
    }

    fn usage(&self, key: &str) -> Result<Usage, Error> {
        let record = self.store.read(|tx| tx.require(key))?;
        match record.kind {
            Kind::Active => disk_usage(&self.fs_dir(record.id)),
            Kind::Committed if record.remote.is_some() => {
                Ok(match self.lock_mounts().get(&record.id) {
                    Some(RemoteState::Mounted(guard)) => guard.usage(),
                    _ => record.usage,
                })
            }
            Kind::Committed | Kind::View => Ok(record.usage),
        }
    }

    fn cleanup(&self) -> Result<usize, Error> {
        let dir = self.root.join("snapshots");
        // Inside a write transaction: no Prepare can allocate an id and create its directory
        // between reading the ids and listing the directories.
        let orphans = self.store.write(|tx| {
            let ids: HashSet<String> = tx.all()?.iter().map(|(_, r)| r.id.to_string()).collect();
            let entries =
                std::fs::read_dir(&dir).map_err(|e| Error::io("list snapshots", &dir, e))?;
            let mut orphans = Vec::new();
            for entry in entries {
                let entry = entry.map_err(|e| Error::io("list snapshots", &dir, e))?;
                if !ids.contains(entry.file_name().to_string_lossy().as_ref()) {
                    orphans.push(entry.path());
                }
            }
            Ok(orphans)
        })?;
        let mut removed = 0;
        for orphan in orphans {
            if is_mountpoint(&orphan.join("fs")) || is_mountpoint(&orphan) {
                tracing::warn!(dir = %orphan.display(), "orphaned snapshot directory is mounted, leaving it");
                continue;
            }
            match std::fs::remove_dir_all(&orphan) {
                Ok(()) => removed += 1,
                Err(e) => {
                    tracing::warn!(dir = %orphan.display(), error = %e, "cleanup failed to remove")
                }
            }
        }
        Ok(removed)
    }

    /// Makes `fs` an empty, unmounted directory again (after a failed or dropped remote mount),
    /// keeping the directory itself: its mode and owner were set for the container's root.
    fn reset_dir(&self, fs: &Path) -> Result<(), Error> {
        if is_mountpoint(fs) {
            detach(fs);
        }
        let entries = match std::fs::read_dir(fs) {
            Ok(entries) => entries,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return std::fs::create_dir(fs)
                    .map_err(|e| Error::io("create remote mountpoint", fs, e));
            }
            Err(e) => return Err(Error::io("list remote mountpoint", fs, e)),
        };
        for entry in entries {
            let path = entry
                .map_err(|e| Error::io("list remote mountpoint", fs, e))?
                .path();
            let removed = if path.is_dir() && !path.is_symlink() {
                std::fs::remove_dir_all(&path)
            } else {
                std::fs::remove_file(&path)
            };
            removed.map_err(|e| Error::io("empty remote mountpoint", &path, e))?;
        }
        Ok(())
    }
}

/// Lazily detaches whatever is mounted on `path` (a dead FUSE daemon leaves such mounts).
fn detach(path: &Path) {
    if let Err(e) = nix::mount::umount2(path, nix::mount::MntFlags::MNT_DETACH) {
        tracing::warn!(path = %path.display(), error = %e, "detaching a stale mount failed");
    }
}

/// Whether `path` is a mount point (the one mountinfo reader of regfs, in regfs-fs).
pub(crate) fn is_mountpoint(path: &Path) -> bool {
    regfs_fs::is_mounted(path)
}

/// Allocated bytes and distinct inodes under `dir`, the directory included, without following
/// symlinks (containerd's `fs.DiskUsage`).
fn disk_usage(dir: &Path) -> Result<Usage, Error> {
    let mut seen = HashSet::new();
    let mut usage = Usage::default();
    let mut stack = vec![dir.to_owned()];
    while let Some(path) = stack.pop() {
        let meta = std::fs::symlink_metadata(&path).map_err(|e| Error::io("stat", &path, e))?;
        if seen.insert((meta.dev(), meta.ino())) {
            usage.inodes += 1;
            usage.size += i64::try_from(meta.blocks()).unwrap_or(i64::MAX) * STAT_BLOCK_SIZE;
        }
        if meta.is_dir() {
            let entries = std::fs::read_dir(&path).map_err(|e| Error::io("list", &path, e))?;
            for entry in entries {
                stack.push(entry.map_err(|e| Error::io("list", &path, e))?.path());
            }
        }
    }
    Ok(usage)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_root_is_a_mountpoint_and_a_fresh_dir_is_not() {
        assert!(is_mountpoint(Path::new("/")));
        let dir = tempfile::tempdir().unwrap();
        assert!(!is_mountpoint(dir.path()));
    }
}

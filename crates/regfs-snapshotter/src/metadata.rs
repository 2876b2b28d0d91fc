//! Snapshot metadata in one redb file, `<root>/metadata.db`.
//!
//! Three tables:
//!
//! ```text
//! snapshots  key (str)           -> JSON Record {id, kind, parent, labels, created, updated, usage, remote}
//! children   parent key (str)    -> child keys (multimap; Remove refuses a key that has any)
//! counters   "next_id"           -> u64 (snapshot ids are never reused, so a directory whose
//!                                   id is not in `snapshots` is garbage for Cleanup)
//! ```
//!
//! Every snapshotter operation is one transaction; redb serialises write transactions, which is
//! also what makes Cleanup safe against a concurrent Prepare (see `Snapshotter::cleanup`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use redb::{
    Database, MultimapTableDefinition, ReadableDatabase, ReadableMultimapTable, ReadableTable,
    TableDefinition,
};
use serde::{Deserialize, Serialize};

use crate::Error;
use crate::remote::RemoteLayer;
use crate::snapshot::{Info, Kind, Usage};

const SNAPSHOTS: TableDefinition<&str, &[u8]> = TableDefinition::new("snapshots");
const CHILDREN: MultimapTableDefinition<&str, &str> = MultimapTableDefinition::new("children");
const COUNTERS: TableDefinition<&str, u64> = TableDefinition::new("counters");
const NEXT_ID: &str = "next_id";

/// A point in time as stored (seconds and nanoseconds since the Unix epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub(crate) struct Stamp {
    secs: u64,
    nanos: u32,
}

impl Stamp {
    pub(crate) fn now() -> Stamp {
        let d = SystemTime::now()
            .duration_since(SystemTime::UNIX_EPOCH)
            .unwrap_or_default();
        Stamp {
            secs: d.as_secs(),
            nanos: d.subsec_nanos(),
        }
    }

    pub(crate) fn time(self) -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::new(self.secs, self.nanos)
    }
}

/// One snapshot as stored under its key.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub(crate) struct Record {
    pub id: u64,
    pub kind: Kind,
    pub parent: Option<String>,
    pub labels: BTreeMap<String, String>,
    pub created: Stamp,
    pub updated: Stamp,
    /// Fixed at commit; zero for active snapshots (computed live) and views.
    pub usage: Usage,
    /// Set when `fs` is a remote mount: what to mount again after a restart.
    pub remote: Option<RemoteLayer>,
}

impl Record {
    pub(crate) fn info(&self, key: &str) -> Info {
        Info {
            name: key.to_owned(),
            parent: self.parent.clone(),
            kind: self.kind,
            created: self.created.time(),
            updated: self.updated.time(),
            labels: self.labels.clone(),
        }
    }
}

pub(crate) struct Store {
    db: Database,
    path: PathBuf,
}

pub(crate) struct ReadTx<'a> {
    tx: redb::ReadTransaction,
    path: &'a Path,
}

pub(crate) struct WriteTx<'a> {
    tx: redb::WriteTransaction,
    path: &'a Path,
}

fn meta(path: &Path, e: impl Into<redb::Error>) -> Error {
    Error::Metadata {
        path: path.to_owned(),
        source: Box::new(e.into()),
    }
}

fn decode(key: &str, bytes: &[u8]) -> Result<Record, Error> {
    serde_json::from_slice(bytes).map_err(|source| Error::CorruptRecord {
        key: key.to_owned(),
        source,
    })
}

impl Store {
    pub(crate) fn open(path: &Path) -> Result<Store, Error> {
        let db = Database::create(path).map_err(|e| meta(path, e))?;
        let store = Store {
            db,
            path: path.to_owned(),
        };
        // Create the tables once so that read transactions never meet a missing table.
        store.write(|tx| {
            let p = tx.path;
            tx.tx.open_table(SNAPSHOTS).map_err(|e| meta(p, e))?;
            tx.tx
                .open_multimap_table(CHILDREN)
                .map_err(|e| meta(p, e))?;
            tx.tx.open_table(COUNTERS).map_err(|e| meta(p, e))?;
            Ok(())
        })?;
        Ok(store)
    }

    /// Runs `f` in a read transaction.
    pub(crate) fn read<T>(
        &self,
        f: impl FnOnce(&ReadTx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self.db.begin_read().map_err(|e| meta(&self.path, e))?;
        f(&ReadTx {
            tx,
            path: &self.path,
        })
    }

    /// Runs `f` in a write transaction, committed when `f` succeeds and dropped (aborted) when
    /// it fails.
    pub(crate) fn write<T>(
        &self,
        f: impl FnOnce(&mut WriteTx<'_>) -> Result<T, Error>,
    ) -> Result<T, Error> {
        let tx = self.db.begin_write().map_err(|e| meta(&self.path, e))?;
        let mut wtx = WriteTx {
            tx,
            path: &self.path,
        };
        let out = f(&mut wtx)?;
        wtx.tx.commit().map_err(|e| meta(&self.path, e))?;
        Ok(out)
    }
}

macro_rules! readable {
    ($t:ident) => {
        impl $t<'_> {
            pub(crate) fn get(&self, key: &str) -> Result<Option<Record>, Error> {
                let table = self
                    .tx
                    .open_table(SNAPSHOTS)
                    .map_err(|e| meta(self.path, e))?;
                let found = table.get(key).map_err(|e| meta(self.path, e))?;
                found.map(|v| decode(key, v.value())).transpose()
            }

            /// The record of `key` or [`Error::NotFound`].
            pub(crate) fn require(&self, key: &str) -> Result<Record, Error> {
                self.get(key)?.ok_or_else(|| Error::NotFound {
                    key: key.to_owned(),
                })
            }

            pub(crate) fn all(&self) -> Result<Vec<(String, Record)>, Error> {
                let table = self
                    .tx
                    .open_table(SNAPSHOTS)
                    .map_err(|e| meta(self.path, e))?;
                let mut out = Vec::new();
                for item in table.iter().map_err(|e| meta(self.path, e))? {
                    let (k, v) = item.map_err(|e| meta(self.path, e))?;
                    let key = k.value().to_owned();
                    let record = decode(&key, v.value())?;
                    out.push((key, record));
                }
                Ok(out)
            }

            /// The ids of `parent` and its ancestors, nearest first, with their keys.
            pub(crate) fn chain(
                &self,
                parent: Option<&str>,
            ) -> Result<Vec<(String, Record)>, Error> {
                let mut out = Vec::new();
                let mut next = parent.map(str::to_owned);
                while let Some(key) = next {
                    let record = self.get(&key)?.ok_or_else(|| Error::ParentNotFound {
                        parent: key.clone(),
                    })?;
                    next = record.parent.clone();
                    out.push((key, record));
                }
                Ok(out)
            }
        }
    };
}

readable!(ReadTx);
readable!(WriteTx);

impl WriteTx<'_> {
    pub(crate) fn children(&self, key: &str) -> Result<Vec<String>, Error> {
        let table = self
            .tx
            .open_multimap_table(CHILDREN)
            .map_err(|e| meta(self.path, e))?;
        let mut out = Vec::new();
        for v in table.get(key).map_err(|e| meta(self.path, e))? {
            out.push(v.map_err(|e| meta(self.path, e))?.value().to_owned());
        }
        Ok(out)
    }

    pub(crate) fn put(&mut self, key: &str, record: &Record) -> Result<(), Error> {
        let bytes = serde_json::to_vec(record).map_err(|source| Error::CorruptRecord {
            key: key.to_owned(),
            source,
        })?;
        let mut table = self
            .tx
            .open_table(SNAPSHOTS)
            .map_err(|e| meta(self.path, e))?;
        table
            .insert(key, bytes.as_slice())
            .map_err(|e| meta(self.path, e))?;
        Ok(())
    }

    pub(crate) fn delete(&mut self, key: &str) -> Result<(), Error> {
        let mut table = self
            .tx
            .open_table(SNAPSHOTS)
            .map_err(|e| meta(self.path, e))?;
        table.remove(key).map_err(|e| meta(self.path, e))?;
        Ok(())
    }

    pub(crate) fn link_child(&mut self, parent: &str, child: &str) -> Result<(), Error> {
        let mut table = self
            .tx
            .open_multimap_table(CHILDREN)
            .map_err(|e| meta(self.path, e))?;
        table
            .insert(parent, child)
            .map_err(|e| meta(self.path, e))?;
        Ok(())
    }

    pub(crate) fn unlink_child(&mut self, parent: &str, child: &str) -> Result<(), Error> {
        let mut table = self
            .tx
            .open_multimap_table(CHILDREN)
            .map_err(|e| meta(self.path, e))?;
        table
            .remove(parent, child)
            .map_err(|e| meta(self.path, e))?;
        Ok(())
    }

    pub(crate) fn next_id(&mut self) -> Result<u64, Error> {
        let mut table = self
            .tx
            .open_table(COUNTERS)
            .map_err(|e| meta(self.path, e))?;
        let id = table
            .get(NEXT_ID)
            .map_err(|e| meta(self.path, e))?
            .map(|v| v.value())
            // Ids start at 1 so that an id never looks like an unset value.
            .unwrap_or(1);
        table
            .insert(NEXT_ID, id + 1)
            .map_err(|e| meta(self.path, e))?;
        Ok(id)
    }
}

//! Code generated from the vendored containerd protos (`proto/`, see `proto/PROVENANCE.md`) and
//! the conversions between it and the crate's own types.

#![allow(missing_docs, clippy::all, clippy::pedantic, unreachable_pub)]

use std::collections::BTreeMap;
use std::time::SystemTime;

pub(crate) mod containerd {
    pub(crate) mod types {
        tonic::include_proto!("containerd.types");
    }
    pub(crate) mod services {
        pub(crate) mod snapshots {
            pub(crate) mod v1 {
                tonic::include_proto!("containerd.services.snapshots.v1");
            }
        }
    }
}

pub(crate) use containerd::services::snapshots::v1 as snapshots;
pub(crate) use containerd::types::Mount as ProtoMount;

use crate::snapshot::{Info, Kind, Mount};

pub(crate) fn kind_to_proto(kind: Kind) -> snapshots::Kind {
    match kind {
        Kind::View => snapshots::Kind::View,
        Kind::Active => snapshots::Kind::Active,
        Kind::Committed => snapshots::Kind::Committed,
    }
}

pub(crate) fn kind_from_proto(kind: i32) -> Option<Kind> {
    match snapshots::Kind::try_from(kind).ok()? {
        snapshots::Kind::View => Some(Kind::View),
        snapshots::Kind::Active => Some(Kind::Active),
        snapshots::Kind::Committed => Some(Kind::Committed),
        snapshots::Kind::Unknown => None,
    }
}

pub(crate) fn time_to_proto(t: SystemTime) -> prost_types::Timestamp {
    prost_types::Timestamp::from(t)
}

pub(crate) fn time_from_proto(t: Option<prost_types::Timestamp>) -> SystemTime {
    t.and_then(|t| SystemTime::try_from(t).ok())
        .unwrap_or(SystemTime::UNIX_EPOCH)
}

pub(crate) fn info_to_proto(info: Info) -> snapshots::Info {
    snapshots::Info {
        name: info.name,
        parent: info.parent.unwrap_or_default(),
        kind: kind_to_proto(info.kind) as i32,
        created_at: Some(time_to_proto(info.created)),
        updated_at: Some(time_to_proto(info.updated)),
        labels: info.labels.into_iter().collect(),
    }
}

/// An info as sent by a client; an unknown kind is read as active (Update ignores the kind).
pub(crate) fn info_from_proto(info: snapshots::Info) -> Info {
    Info {
        name: info.name,
        parent: Some(info.parent).filter(|p| !p.is_empty()),
        kind: kind_from_proto(info.kind).unwrap_or(Kind::Active),
        created: time_from_proto(info.created_at),
        updated: time_from_proto(info.updated_at),
        labels: info.labels.into_iter().collect::<BTreeMap<_, _>>(),
    }
}

pub(crate) fn mount_to_proto(m: Mount) -> ProtoMount {
    ProtoMount {
        r#type: m.fs_type,
        source: m.source,
        target: String::new(),
        options: m.options,
    }
}

pub(crate) fn mount_from_proto(m: ProtoMount) -> Mount {
    Mount {
        fs_type: m.r#type,
        source: m.source,
        options: m.options,
    }
}

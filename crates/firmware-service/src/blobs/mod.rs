//! Where firmware images live, behind [`BlobStore`]: a local directory (the
//! default, under the data directory) or S3-compatible object storage
//! (AWS S3, MinIO, Ceph RGW, …) through the `object_store` crate.
//!
//! Keys are ids this service generated (`fw-…`), never names a client
//! sent; both implementations refuse anything else, so a path can never
//! leave the store.

mod local;
mod object;

use std::ops::Range;
use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;
use bytes::Bytes;
use futures_util::stream::BoxStream;
use secrecy::SecretString;
use serde::{Deserialize, Serialize};

pub use local::LocalDirectory;
pub use object::ObjectStorage;

/// A blob's bytes as they are read.
pub type ByteStream = BoxStream<'static, std::io::Result<Bytes>>;

#[derive(Debug, thiserror::Error)]
pub enum StorageError {
    #[error("no stored object {0:?}")]
    NotFound(String),
    #[error("{0:?} is not a key this service generates")]
    InvalidKey(String),
    #[error("storage unavailable: {0}")]
    Unavailable(String),
    #[error(transparent)]
    Io(#[from] std::io::Error),
}

impl From<StorageError> for crate::error::Error {
    fn from(e: StorageError) -> Self {
        match e {
            StorageError::Unavailable(m) => Self::Unavailable(format!("firmware storage: {m}")),
            other => Self::Internal(other.into()),
        }
    }
}

#[async_trait]
pub trait BlobStore: Send + Sync + 'static {
    /// Stores the complete file at `file` under `key`; the file is moved or
    /// removed afterwards.
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError>;
    /// Bytes `range` of the blob under `key`.
    async fn get(&self, key: &str, range: Range<u64>) -> Result<ByteStream, StorageError>;
    /// Removes the blob; removing a missing one is not an error.
    async fn delete(&self, key: &str) -> Result<(), StorageError>;
    /// Whether the store answers, for readiness.
    async fn ping(&self) -> Result<(), StorageError>;
}

fn check_key(key: &str) -> Result<(), StorageError> {
    if crate::domain::is_generated_id(key) {
        Ok(())
    } else {
        Err(StorageError::InvalidKey(key.to_string()))
    }
}

#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum StorageBackend {
    /// Files in `storage.local_dir`.
    #[default]
    Local,
    /// An S3-compatible bucket (`storage.s3`).
    S3,
}

/// `[firmware.storage]`.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default)]
pub struct StorageConfig {
    pub backend: StorageBackend,
    /// The directory of the local backend; when empty, `firmware` in the
    /// data directory.
    pub local_dir: PathBuf,
    pub s3: S3Config,
}

/// `[firmware.storage.s3]`. Unset credentials and region are taken from the
/// usual `AWS_*` environment variables (and instance metadata on AWS).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default)]
pub struct S3Config {
    pub bucket: String,
    pub region: String,
    /// Empty for AWS; `http://minio:9000` and the like otherwise.
    pub endpoint: String,
    pub access_key_id: String,
    #[serde(serialize_with = "wf_common::config::redact_opt")]
    pub secret_access_key: Option<SecretString>,
    /// Prepended to every key, e.g. `firmware/`.
    pub prefix: String,
    /// Allow a plain-HTTP endpoint (a local MinIO).
    pub allow_http: bool,
    /// `bucket.host` URLs instead of `host/bucket`.
    pub virtual_hosted_style: bool,
}

impl Default for S3Config {
    fn default() -> Self {
        Self {
            bucket: String::new(),
            region: String::new(),
            endpoint: String::new(),
            access_key_id: String::new(),
            secret_access_key: None,
            prefix: "firmware/".into(),
            allow_http: false,
            virtual_hosted_style: false,
        }
    }
}

/// Opens the configured backend.
pub async fn open(config: &StorageConfig) -> anyhow::Result<Arc<dyn BlobStore>> {
    match config.backend {
        StorageBackend::Local => {
            anyhow::ensure!(
                !config.local_dir.as_os_str().is_empty(),
                "firmware.storage.local_dir is not set"
            );
            Ok(Arc::new(LocalDirectory::open(&config.local_dir).await?))
        }
        StorageBackend::S3 => Ok(Arc::new(ObjectStorage::s3(&config.s3)?)),
    }
}

#[cfg(test)]
pub(crate) mod contract {
    //! What every backend must do, run against each.

    use futures_util::TryStreamExt;

    use super::*;

    async fn read(store: &dyn BlobStore, key: &str, range: Range<u64>) -> Vec<u8> {
        let chunks: Vec<Bytes> = store
            .get(key, range)
            .await
            .unwrap()
            .try_collect()
            .await
            .unwrap();
        chunks.concat()
    }

    pub async fn keeps_the_contract(store: &dyn BlobStore) {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<u8> = (0..300_000u32).map(|i| (i % 251) as u8).collect();
        let file = dir.path().join("upload");
        std::fs::write(&file, &data).unwrap();
        store.put_file("fw-contract-1", &file).await.unwrap();
        assert_eq!(
            read(store, "fw-contract-1", 0..data.len() as u64).await,
            data
        );
        assert_eq!(read(store, "fw-contract-1", 10..20).await, data[10..20]);
        assert_eq!(
            read(store, "fw-contract-1", 299_990..300_000).await,
            data[299_990..]
        );
        store.ping().await.unwrap();

        for bad in ["../escape", "fw-1/../../x", "/etc/passwd", "FW"] {
            assert!(matches!(
                store.put_file(bad, &file).await,
                Err(StorageError::InvalidKey(_))
            ));
            assert!(matches!(
                store.get(bad, 0..1).await,
                Err(StorageError::InvalidKey(_))
            ));
        }

        store.delete("fw-contract-1").await.unwrap();
        store.delete("fw-contract-1").await.unwrap();
        assert!(matches!(
            store.get("fw-contract-1", 0..1).await,
            Err(StorageError::NotFound(_))
        ));
    }
}

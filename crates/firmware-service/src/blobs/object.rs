use std::ops::Range;
use std::path::Path;
use std::sync::Arc;

use async_trait::async_trait;
use futures_util::{StreamExt, TryStreamExt};
use object_store::aws::AmazonS3Builder;
use object_store::path::Path as ObjectPath;
use object_store::{GetOptions, GetRange, ObjectStore, ObjectStoreExt, WriteMultipart};
use secrecy::ExposeSecret;
use tokio::io::AsyncReadExt;

use super::{BlobStore, ByteStream, S3Config, StorageError, check_key};

/// Parts uploaded at once.
const UPLOAD_CONCURRENCY: usize = 4;

/// Firmware images in an object store: an S3-compatible bucket in
/// production, any `object_store` implementation underneath.
pub struct ObjectStorage {
    store: Arc<dyn ObjectStore>,
    prefix: String,
}

impl ObjectStorage {
    pub fn new(store: Arc<dyn ObjectStore>, prefix: &str) -> Self {
        Self {
            store,
            prefix: prefix.trim_matches('/').to_string(),
        }
    }

    /// An S3-compatible bucket.
    pub fn s3(config: &S3Config) -> anyhow::Result<Self> {
        anyhow::ensure!(
            !config.bucket.trim().is_empty(),
            "firmware.storage.s3.bucket is not set"
        );
        let mut builder = AmazonS3Builder::from_env()
            .with_bucket_name(config.bucket.trim())
            .with_allow_http(config.allow_http)
            .with_virtual_hosted_style_request(config.virtual_hosted_style);
        if !config.region.is_empty() {
            builder = builder.with_region(&config.region);
        }
        if !config.endpoint.is_empty() {
            builder = builder.with_endpoint(&config.endpoint);
        }
        if !config.access_key_id.is_empty() {
            builder = builder.with_access_key_id(&config.access_key_id);
        }
        if let Some(secret) = &config.secret_access_key {
            builder = builder.with_secret_access_key(secret.expose_secret());
        }
        Ok(Self::new(Arc::new(builder.build()?), &config.prefix))
    }

    fn path(&self, key: &str) -> Result<ObjectPath, StorageError> {
        check_key(key)?;
        Ok(if self.prefix.is_empty() {
            ObjectPath::from(key)
        } else {
            ObjectPath::from(format!("{}/{key}", self.prefix))
        })
    }
}

fn storage_error(e: object_store::Error) -> StorageError {
    match e {
        object_store::Error::NotFound { path, .. } => StorageError::NotFound(path),
        other => StorageError::Unavailable(other.to_string()),
    }
}

#[async_trait]
impl BlobStore for ObjectStorage {
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        let path = self.path(key)?;
        let upload = self
            .store
            .put_multipart(&path)
            .await
            .map_err(storage_error)?;
        let mut writer = WriteMultipart::new(upload);
        let mut source = tokio::fs::File::open(file).await?;
        let mut buf = vec![0u8; 1024 * 1024];
        let written: Result<(), StorageError> = async {
            loop {
                let n = source.read(&mut buf).await?;
                if n == 0 {
                    return Ok(());
                }
                writer
                    .wait_for_capacity(UPLOAD_CONCURRENCY)
                    .await
                    .map_err(storage_error)?;
                writer.write(&buf[..n]);
            }
        }
        .await;
        match written {
            Ok(()) => {
                writer.finish().await.map_err(storage_error)?;
            }
            Err(e) => {
                let _ = writer.abort().await;
                return Err(e);
            }
        }
        let _ = tokio::fs::remove_file(file).await;
        Ok(())
    }

    async fn get(&self, key: &str, range: Range<u64>) -> Result<ByteStream, StorageError> {
        let path = self.path(key)?;
        if range.is_empty() {
            // Still tells a missing object apart.
            self.store.head(&path).await.map_err(storage_error)?;
            return Ok(futures_util::stream::empty().boxed());
        }
        let result = self
            .store
            .get_opts(
                &path,
                GetOptions {
                    range: Some(GetRange::Bounded(range)),
                    ..GetOptions::default()
                },
            )
            .await
            .map_err(storage_error)?;
        Ok(result
            .into_stream()
            .map_err(|e| std::io::Error::other(e.to_string()))
            .boxed())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match self.store.delete(&self.path(key)?).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => Ok(()),
            Err(e) => Err(storage_error(e)),
        }
    }

    async fn ping(&self) -> Result<(), StorageError> {
        // Listing one key proves the bucket answers and the credentials work.
        let prefix = (!self.prefix.is_empty()).then(|| ObjectPath::from(self.prefix.as_str()));
        let mut listing = self.store.list(prefix.as_ref());
        match listing.next().await {
            None | Some(Ok(_)) => Ok(()),
            Some(Err(e)) => Err(storage_error(e)),
        }
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    /// The adapter over object_store's in-memory store; the S3 client
    /// itself is object_store's, exercised against a real bucket only when
    /// `WF_IOT_TEST_S3_BUCKET` is set (see below).
    #[tokio::test]
    async fn object_storage_keeps_the_contract() {
        let store =
            ObjectStorage::new(Arc::new(object_store::memory::InMemory::new()), "firmware/");
        super::super::contract::keeps_the_contract(&store).await;
    }

    /// Against an S3-compatible server: `WF_IOT_TEST_S3_BUCKET`,
    /// `WF_IOT_TEST_S3_ENDPOINT` (e.g. `http://127.0.0.1:9000`) and the
    /// `AWS_ACCESS_KEY_ID` / `AWS_SECRET_ACCESS_KEY` of an account that may
    /// write the bucket.
    #[tokio::test]
    async fn s3_bucket_keeps_the_contract() {
        let Ok(bucket) = std::env::var("WF_IOT_TEST_S3_BUCKET") else {
            return;
        };
        let endpoint = std::env::var("WF_IOT_TEST_S3_ENDPOINT").unwrap_or_default();
        let store = ObjectStorage::s3(&S3Config {
            bucket,
            allow_http: endpoint.starts_with("http://"),
            endpoint,
            region: std::env::var("AWS_REGION").unwrap_or_else(|_| "us-east-1".into()),
            prefix: format!("wf-test-{}/", uuid::Uuid::new_v4().simple()),
            ..S3Config::default()
        })
        .unwrap();
        super::super::contract::keeps_the_contract(&store).await;
    }
}

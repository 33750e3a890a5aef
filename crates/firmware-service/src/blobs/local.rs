use std::io::SeekFrom;
use std::ops::Range;
use std::path::{Path, PathBuf};

use async_trait::async_trait;
use futures_util::StreamExt;
use tokio::io::{AsyncReadExt, AsyncSeekExt};
use tokio_util::io::ReaderStream;

use super::{BlobStore, ByteStream, StorageError, check_key};

/// Firmware images as files in one directory, named by their generated id.
pub struct LocalDirectory {
    root: PathBuf,
}

impl LocalDirectory {
    pub async fn open(root: &Path) -> std::io::Result<Self> {
        tokio::fs::create_dir_all(root).await?;
        Ok(Self {
            root: root.to_path_buf(),
        })
    }

    fn path(&self, key: &str) -> Result<PathBuf, StorageError> {
        check_key(key)?;
        Ok(self.root.join(key))
    }
}

#[async_trait]
impl BlobStore for LocalDirectory {
    async fn put_file(&self, key: &str, file: &Path) -> Result<(), StorageError> {
        let target = self.path(key)?;
        if tokio::fs::rename(file, &target).await.is_err() {
            // Another file system: copy through a temporary name so a
            // half-copied image is never visible under its key.
            let partial = self.root.join(format!(".{key}.partial"));
            tokio::fs::copy(file, &partial).await?;
            tokio::fs::rename(&partial, &target).await?;
            let _ = tokio::fs::remove_file(file).await;
        }
        Ok(())
    }

    async fn get(&self, key: &str, range: Range<u64>) -> Result<ByteStream, StorageError> {
        let path = self.path(key)?;
        let mut file = match tokio::fs::File::open(&path).await {
            Ok(f) => f,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Err(StorageError::NotFound(key.to_string()));
            }
            Err(e) => return Err(e.into()),
        };
        file.seek(SeekFrom::Start(range.start)).await?;
        let limited = file.take(range.end.saturating_sub(range.start));
        Ok(ReaderStream::with_capacity(limited, 64 * 1024).boxed())
    }

    async fn delete(&self, key: &str) -> Result<(), StorageError> {
        match tokio::fs::remove_file(self.path(key)?).await {
            Ok(()) => Ok(()),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(e.into()),
        }
    }

    async fn ping(&self) -> Result<(), StorageError> {
        tokio::fs::metadata(&self.root)
            .await
            .map(|_| ())
            .map_err(|e| StorageError::Unavailable(format!("{}: {e}", self.root.display())))
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn local_directory_keeps_the_contract() {
        let dir = tempfile::tempdir().unwrap();
        let store = LocalDirectory::open(&dir.path().join("blobs"))
            .await
            .unwrap();
        super::super::contract::keeps_the_contract(&store).await;
        // Nothing but what was stored (and deleted) ever lived there.
        assert_eq!(
            std::fs::read_dir(dir.path().join("blobs")).unwrap().count(),
            0
        );
    }
}

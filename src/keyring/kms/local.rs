//! The local KMS: a 256-bit master key in `keys.dir/master.key` (mode 0600,
//! created on first run, never committed) wraps each private key with
//! AES-256-GCM, bound to the key's kid and algorithm.

use std::fs::OpenOptions;
use std::io::Write;
use std::os::unix::fs::OpenOptionsExt;
use std::path::Path;

use zeroize::Zeroizing;

use super::{KmsError, open, seal, wrap_context};
use crate::oauth::Alg;

pub const MASTER_KEY_FILE: &str = "master.key";

pub struct LocalKms {
    master: Zeroizing<Vec<u8>>,
}

impl LocalKms {
    /// Read the master key, creating it (0600) if this is the first run.
    pub fn open(dir: &Path) -> Result<Self, KmsError> {
        let master = read_or_create_secret_file(&dir.join(MASTER_KEY_FILE), 32)?;
        if master.len() != 32 {
            return Err(KmsError::Config(format!(
                "{} must hold exactly 32 bytes",
                dir.join(MASTER_KEY_FILE).display()
            )));
        }
        Ok(Self { master })
    }

    pub fn wrap(&self, private_der: &[u8], kid: &str, alg: Alg) -> Result<Vec<u8>, KmsError> {
        seal(&self.master, &wrap_context(kid, alg), private_der)
    }

    pub fn unwrap(&self, blob: &[u8], kid: &str, alg: Alg) -> Result<Zeroizing<Vec<u8>>, KmsError> {
        open(&self.master, &wrap_context(kid, alg), blob)
    }
}

/// Read a secret file, or create it with `len` random bytes and mode 0600.
/// Creation uses `create_new`, so two processes starting at once cannot both
/// write one: the loser reads the winner's file.
pub fn read_or_create_secret_file(path: &Path, len: usize) -> Result<Zeroizing<Vec<u8>>, KmsError> {
    if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir)?;
    }
    match OpenOptions::new()
        .write(true)
        .create_new(true)
        .mode(0o600)
        .open(path)
    {
        Ok(mut f) => {
            let bytes =
                crate::secret::random_bytes(len).map_err(|e| KmsError::Request(e.to_string()))?;
            f.write_all(&bytes)?;
            f.sync_all()?;
            Ok(Zeroizing::new(bytes))
        }
        Err(e) if e.kind() == std::io::ErrorKind::AlreadyExists => {
            // A concurrent creator may not have finished writing yet.
            for _ in 0..50 {
                let bytes = std::fs::read(path)?;
                if bytes.len() >= len {
                    return Ok(Zeroizing::new(bytes));
                }
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Ok(Zeroizing::new(std::fs::read(path)?))
        }
        Err(e) => Err(e.into()),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, reason = "tests")]
mod tests {
    use std::os::unix::fs::PermissionsExt;

    use super::*;

    #[test]
    fn master_key_is_created_0600_and_reused() {
        let dir = tempfile::tempdir().unwrap();
        let a = LocalKms::open(dir.path()).unwrap();
        let mode = std::fs::metadata(dir.path().join(MASTER_KEY_FILE))
            .unwrap()
            .permissions()
            .mode();
        assert_eq!(mode & 0o777, 0o600);
        let blob = a.wrap(b"private", "kid1", Alg::Es256).unwrap();
        let b = LocalKms::open(dir.path()).unwrap();
        assert_eq!(
            &b.unwrap(&blob, "kid1", Alg::Es256).unwrap()[..],
            b"private"
        );
        assert!(b.unwrap(&blob, "kid2", Alg::Es256).is_err());
        assert!(b.unwrap(&blob, "kid1", Alg::Rs256).is_err());
    }
}

//! [`TestDir`]: a temp dir owned by one test (config files, the uds dir, the logs of the processes it starts),
//! removed when the test ends.

use std::fs;
use std::path::{Path, PathBuf};

/// A temp dir owned by one test; removed on drop.
pub struct TestDir {
    dir: tempfile::TempDir,
}

impl TestDir {
    pub fn new() -> TestDir {
        // Short prefix in /tmp: the uds dir lives in here and unix socket paths are limited to ~108 bytes.
        let dir = tempfile::Builder::new()
            .prefix("baton-")
            .tempdir()
            .expect("create temp dir");
        TestDir { dir }
    }

    pub fn path(&self) -> &Path {
        self.dir.path()
    }

    pub fn join(&self, p: &str) -> PathBuf {
        self.dir.path().join(p)
    }

    /// A (created, empty) directory inside the temp dir.
    pub fn subdir(&self, p: &str) -> PathBuf {
        let d = self.join(p);
        fs::create_dir_all(&d).expect("create subdir");
        d
    }

    pub fn write(&self, name: &str, contents: &str) -> PathBuf {
        let p = self.join(name);
        fs::write(&p, contents).expect("write file");
        p
    }
}

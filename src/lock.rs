//! One daemon per state directory: an advisory lock (`flock`) on
//! `STATE_DIR/lock`, held for the daemon's life. The file names the holder
//! (pid and address), so a second daemon can say who is in the way. The
//! kernel drops the lock when the holder dies, however it dies.

use std::fs::File;
use std::io::{Read, Seek, SeekFrom, Write};
use std::path::Path;

use nix::fcntl::{Flock, FlockArg};

/// The held lock; dropping it releases it.
pub struct StateLock {
    file: Flock<File>,
}

#[derive(Debug, thiserror::Error)]
pub enum LockError {
    #[error(
        "another nanny daemon ({holder}) already uses the state directory {dir}; stop it, or give this one \
         another --state-dir"
    )]
    Held { dir: String, holder: String },
    #[error("cannot lock {path}: {message}")]
    Io { path: String, message: String },
}

impl StateLock {
    /// Take the lock of `state_dir` (which must exist), without waiting.
    pub fn acquire(state_dir: &Path) -> Result<StateLock, LockError> {
        let path = state_dir.join("lock");
        let io = |e: &dyn std::fmt::Display| LockError::Io { path: path.display().to_string(), message: e.to_string() };
        let file =
            File::options().read(true).write(true).create(true).truncate(false).open(&path).map_err(|e| io(&e))?;
        let mut file = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(locked) => locked,
            Err((mut file, nix::errno::Errno::EWOULDBLOCK)) => {
                let mut text = String::new();
                let _ = file.read_to_string(&mut text);
                let holder = describe(&text);
                return Err(LockError::Held { dir: state_dir.display().to_string(), holder });
            }
            Err((_, e)) => return Err(io(&e)),
        };
        write(&mut file, &format!("pid {}\n", std::process::id())).map_err(|e| io(&e))?;
        Ok(StateLock { file })
    }

    /// Name the address the daemon listens on, for whoever finds the lock held.
    pub fn announce(&mut self, url: &str) {
        let _ = write(&mut self.file, &format!("pid {}\nurl {url}\n", std::process::id()));
    }
}

fn write(file: &mut File, text: &str) -> std::io::Result<()> {
    file.set_len(0)?;
    file.seek(SeekFrom::Start(0))?;
    file.write_all(text.as_bytes())?;
    file.flush()
}

/// `pid 4242, listening on http://127.0.0.1:8080` from the lock file's lines.
fn describe(text: &str) -> String {
    let field = |key: &str| text.lines().find_map(|l| l.strip_prefix(key).map(|v| v.trim().to_string()));
    match (field("pid "), field("url ")) {
        (Some(pid), Some(url)) => format!("pid {pid}, listening on {url}"),
        (Some(pid), None) => format!("pid {pid}, still starting"),
        _ => "pid unknown".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_second_holder_is_refused_with_the_first_ones_pid_and_address() {
        let dir = tempfile::tempdir().unwrap();
        let mut first = StateLock::acquire(dir.path()).unwrap();
        first.announce("http://127.0.0.1:8080");
        let error = StateLock::acquire(dir.path()).err().expect("refused").to_string();
        let pid = std::process::id();
        assert!(error.contains(&format!("pid {pid}, listening on http://127.0.0.1:8080")), "{error}");
        assert!(error.contains("--state-dir"), "{error}");
        drop(first);
        StateLock::acquire(dir.path()).expect("free again once the holder is gone");
    }
}

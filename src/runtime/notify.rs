//! The systemd readiness protocol for native services that opt in with
//! `ready: notify`: each launch gets a datagram socket of its own (in the
//! abstract namespace, so nothing is left on disk), named to the service by
//! `NOTIFY_SOCKET`. `READY=1` from a process of the service's group makes
//! the runtime report the instance ready; `STATUS=` lines go to the
//! service's log. The kernel names the sender of each datagram
//! (`SCM_CREDENTIALS`), so another service cannot say it for this one.

use std::io;
use std::os::fd::AsRawFd;
use std::os::linux::net::SocketAddrExt;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use nix::sys::socket::{ControlMessageOwned, MsgFlags, UnixCredentials, recvmsg, setsockopt, sockopt};
use tokio::io::Interest;
use tokio::net::UnixDatagram;
use tokio::sync::oneshot;

use super::Parts;
use crate::logs::{LogStore, Stream};

/// The longest datagram read; systemd's own limit is about as large.
const MAX_MESSAGE: usize = 4096;

/// A bound notification socket, before its service is spawned.
pub struct NotifySocket {
    socket: UnixDatagram,
    /// The value of `NOTIFY_SOCKET` for the service (`@` marks the abstract namespace).
    pub env: String,
}

impl NotifySocket {
    /// A new socket for one launch of `service`.
    pub fn bind(service: &str) -> io::Result<NotifySocket> {
        static SEQ: AtomicU64 = AtomicU64::new(0);
        let seq = SEQ.fetch_add(1, Ordering::Relaxed);
        let mut name = format!("nanny/{}/{seq}/{service}", std::process::id());
        // The kernel takes at most 107 bytes of a name.
        name.truncate(100);
        let addr = std::os::unix::net::SocketAddr::from_abstract_name(name.as_bytes())?;
        let socket = std::os::unix::net::UnixDatagram::bind_addr(&addr)?;
        socket.set_nonblocking(true)?;
        setsockopt(&socket, sockopt::PassCred, &true).map_err(io::Error::from)?;
        Ok(NotifySocket { socket: UnixDatagram::from_std(socket)?, env: format!("@{name}") })
    }

    /// Read notifications for the process group `pgid` until dropped:
    /// the first `READY=1` from the group answers `ready`.
    pub async fn serve(self, pgid: u32, ready: oneshot::Sender<Parts>, logs: Arc<LogStore>) {
        let mut ready = Some(ready);
        let mut buf = vec![0u8; MAX_MESSAGE];
        loop {
            let received = self.socket.async_io(Interest::READABLE, || receive(&self.socket, &mut buf)).await;
            let (len, sender) = match received {
                Ok(got) => got,
                Err(e) => {
                    tracing::warn!(pgid, "notification socket: {e}");
                    return;
                }
            };
            if !sender.is_some_and(|creds| from_group(creds, pgid)) {
                continue;
            }
            for line in String::from_utf8_lossy(&buf[..len]).lines() {
                match line.split_once('=') {
                    Some(("READY", "1")) => {
                        if let Some(ready) = ready.take() {
                            logs.push(Stream::Nanny, "READY=1 received");
                            let _ = ready.send(Parts { pid: Some(pgid), containers: Vec::new() });
                        }
                    }
                    Some(("STATUS", status)) if !status.is_empty() => {
                        logs.push(Stream::Nanny, &format!("status: {status}"))
                    }
                    _ => {}
                }
            }
        }
    }
}

/// One datagram: its length and who sent it, as the kernel says.
fn receive(socket: &UnixDatagram, buf: &mut [u8]) -> io::Result<(usize, Option<UnixCredentials>)> {
    let mut iov = [io::IoSliceMut::new(buf)];
    let mut space = nix::cmsg_space!(UnixCredentials);
    let msg = recvmsg::<()>(socket.as_raw_fd(), &mut iov, Some(&mut space), MsgFlags::MSG_DONTWAIT)
        .map_err(io::Error::from)?;
    let creds = msg.cmsgs().ok().and_then(|mut c| {
        c.find_map(|m| match m {
            ControlMessageOwned::ScmCredentials(creds) => Some(creds),
            _ => None,
        })
    });
    Ok((msg.bytes, creds))
}

/// Whether a message comes from the service: a process of its group, or
/// one of this daemon's user that is already gone (`systemd-notify` exits
/// at once, so its group can no longer be read).
fn from_group(creds: UnixCredentials, pgid: u32) -> bool {
    match u32::try_from(creds.pid()).ok().and_then(super::group_of) {
        Some(group) => group == pgid,
        None => creds.uid() == nix::unistd::geteuid().as_raw(),
    }
}

//! Starting a native service's process the way `posix_spawn` does: `clone(CLONE_VM |
//! CLONE_VFORK)`, the child running on a small stack of its own in the daemon's memory until
//! it execs. A `fork` copies the daemon's page tables, so its cost grows with the daemon (at a
//! thousand services it was most of the start-up); this does not. It adds the step
//! `posix_spawn` has no attribute for, `PR_SET_PDEATHSIG`, so a service dies with a daemon that
//! is killed outright. The exit is awaited on a pidfd (Linux 5.3), not through SIGCHLD.
//!
//! Nor does a start cost more the more descriptors the daemon holds (a few per service): the
//! child shares the daemon's descriptor table (`CLONE_FILES`) and its first step is
//! `close_range(CLOSE_RANGE_UNSHARE)` (Linux 5.9), which gives it a table of its own holding
//! only the daemon's lowest descriptors. Sets of three of those, reserved when the daemon
//! starts ([`reserve`]), are where a spawn puts the child's stdin, stdout and stderr, each set
//! under a lock of its own, so that several services start at once (a spawn holds its set
//! until the child has exec'd). Each set also holds the stack its children run on, mapped once:
//! only the few pages they touch are resident.
//! Copying every descriptor and closing them all again at exec made a thousand starts
//! quadratic.
//!
//! Between `clone` and `execve` the child shares the daemon's memory while the daemon's other
//! threads run on: it makes only system calls, on data the parent prepared, and never
//! allocates, locks or unwinds. All signals stay blocked in it until their handlers are reset
//! to the default, so no daemon handler can run in it.

use std::ffi::{CString, OsStr, OsString};
use std::io;
use std::os::fd::{AsFd, AsRawFd, FromRawFd, OwnedFd, RawFd};
use std::os::unix::ffi::{OsStrExt, OsStringExt};
use std::path::Path;
use std::ptr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Mutex, MutexGuard, OnceLock, TryLockError};

use nix::libc;
use nix::sched::CloneFlags;
use nix::sys::mman::{MapFlags, ProtFlags, mmap_anonymous, mprotect};
use nix::sys::signal::{SigSet, SigmaskHow, Signal};
use nix::sys::wait::{Id, WaitPidFlag, WaitStatus, waitid};
use tokio::io::Interest;
use tokio::io::unix::AsyncFd;

use super::ExitInfo;

/// What to run.
pub struct Spec<'a> {
    pub program: &'a str,
    pub args: &'a [String],
    /// The whole environment of the process.
    pub env: Vec<(OsString, OsString)>,
    pub cwd: &'a Path,
}

/// A started process: its pid, a pidfd to await its exit with, and the read ends of its
/// stdout and stderr (stdin is `/dev/null`). It leads a process group of its own.
pub struct Spawned {
    pub pid: u32,
    pub exit: Exit,
    pub stdout: OwnedFd,
    pub stderr: OwnedFd,
}

/// The child's stack: enough for the few system-call wrappers it runs.
const STACK_BYTES: usize = 64 * 1024;

/// Everything the child reads, prepared by the parent, and the one thing it writes.
struct ChildPlan {
    path: CString,
    argv: Vec<*const libc::c_char>,
    envp: Vec<*const libc::c_char>,
    cwd: CString,
    /// The slots holding `/dev/null`, the stdout pipe, the stderr pipe: become fds 0, 1, 2.
    stdio: [RawFd; 3],
    /// The first descriptor the child does not copy (above the slots).
    copy_below: libc::c_uint,
    daemon: libc::pid_t,
    /// The errno of the step that failed, set by the child before it exits.
    error: i32,
}

pub fn spawn(spec: Spec<'_>) -> io::Result<Spawned> {
    let path = resolve(spec.program, &spec.env)?;
    let args: Vec<CString> = std::iter::once(spec.program)
        .chain(spec.args.iter().map(String::as_str))
        .map(cstring)
        .collect::<Result<_, _>>()?;
    let env: Vec<CString> = spec
        .env
        .into_iter()
        .map(|(k, v)| {
            let mut entry = k.into_vec();
            entry.push(b'=');
            entry.extend(v.into_vec());
            CString::new(entry).map_err(|_| invalid("an environment variable holds a NUL byte"))
        })
        .collect::<Result<_, _>>()?;
    let cwd = cstring(spec.cwd.as_os_str())?;
    let (out_read, out_write) = pipe()?;
    let (err_read, err_write) = pipe()?;
    let mut slots = take_slots()?;
    let Slots { stdio: [input, output, errors], stack } = &mut *slots;
    nix::unistd::dup2(&out_write, output)?;
    nix::unistd::dup2(&err_write, errors)?;
    drop((out_write, err_write));
    let stdio = [input.as_raw_fd(), output.as_raw_fd(), errors.as_raw_fd()];
    let mut plan = ChildPlan {
        path,
        argv: args.iter().map(|a| a.as_ptr()).chain(std::iter::once(ptr::null())).collect(),
        envp: env.iter().map(|e| e.as_ptr()).chain(std::iter::once(ptr::null())).collect(),
        cwd,
        stdio,
        copy_below: stdio.into_iter().max().unwrap_or(2) as libc::c_uint + 1,
        daemon: std::process::id() as libc::pid_t,
        error: 0,
    };
    // No handler of the daemon's may run in the child: every signal is blocked across the
    // clone, and the child unblocks them only once their handlers are reset.
    let all = SigSet::all();
    let mut before = SigSet::empty();
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&all), Some(&mut before))?;
    let plan_ptr: *mut ChildPlan = &mut plan;
    // SAFETY: the child runs `child` (system calls only, on `plan`, which outlives it: the
    // parent is suspended until the child execs or exits) on `stack`, which is big enough.
    let cloned = unsafe {
        nix::sched::clone(
            Box::new(move || child(plan_ptr)),
            stack.as_mut(),
            CloneFlags::CLONE_VM | CloneFlags::CLONE_VFORK | CloneFlags::CLONE_FILES,
            Some(libc::SIGCHLD),
        )
    };
    nix::sys::signal::pthread_sigmask(SigmaskHow::SIG_SETMASK, Some(&before), None)?;
    // The pipes' write ends are the child's alone now: the slots go back to /dev/null.
    for slot in [&mut *output, &mut *errors] {
        if let Err(e) = nix::unistd::dup2(&*input, slot) {
            tracing::warn!("cannot put /dev/null back in a spawn slot: {e}");
        }
    }
    drop(slots);
    let pid = cloned?;
    // SAFETY: the child has exec'd or exited: `plan.error` is no longer written.
    let error = unsafe { ptr::read_volatile(&plan.error) };
    if error != 0 {
        // It exited without exec'ing: reap it, and say why.
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(io::Error::from_raw_os_error(error));
    }
    // SAFETY: a plain system call; the pid is our unreaped child, so it names that process.
    let pidfd = unsafe { libc::syscall(libc::SYS_pidfd_open, pid.as_raw(), 0) };
    if pidfd < 0 {
        let e = io::Error::last_os_error();
        let _ = nix::sys::signal::killpg(pid, Signal::SIGKILL);
        let _ = nix::sys::wait::waitpid(pid, None);
        return Err(io::Error::new(e.kind(), format!("pidfd_open (Linux 5.3 or later is needed): {e}")));
    }
    // SAFETY: pidfd_open returned a new descriptor, ours alone (close-on-exec by default).
    let pidfd = unsafe { OwnedFd::from_raw_fd(pidfd as RawFd) };
    // SAFETY: an OwnedFd keeps its descriptor open and unchanged until it is dropped.
    let pidfd = unsafe { AsyncFd::register_with_interest(pidfd, Interest::READABLE) }.map_err(io::Error::from)?;
    Ok(Spawned { pid: pid.as_raw() as u32, exit: Exit { pidfd }, stdout: out_read, stderr: err_read })
}

/// The child, from `clone` to `execve`. Only system calls: it shares the daemon's memory.
fn child(plan: *mut ChildPlan) -> isize {
    // SAFETY: `plan` is valid (see `spawn`); every call below is a plain system call wrapper.
    unsafe {
        let plan = &mut *plan;
        let fail = |plan: &mut ChildPlan| -> isize {
            plan.error = *libc::__errno_location();
            libc::_exit(127)
        };
        // First, a descriptor table of its own, with only the daemon's lowest descriptors in
        // it (up to the slots): until then it is the daemon's.
        if libc::syscall(libc::SYS_close_range, plan.copy_below, libc::c_uint::MAX, libc::CLOSE_RANGE_UNSHARE) != 0 {
            return fail(plan);
        }
        // Every disposition back to the default, as systemd does (an ignored SIGPIPE included:
        // the daemon ignores it, a service should not inherit that). The kernel's own call, as
        // libc's refuses the signals it reserves: the kernel's `struct sigaction` all zeros is
        // SIG_DFL, no flags, no mask. SIGKILL and SIGSTOP refuse, which is fine.
        let default = [0u64; 4];
        for signal in 1..=64 {
            libc::syscall(libc::SYS_rt_sigaction, signal, default.as_ptr(), ptr::null_mut::<u64>(), 8usize);
        }
        if libc::setpgid(0, 0) != 0 || libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
            return fail(plan);
        }
        // The daemon may have died before the death signal was armed.
        if libc::getppid() != plan.daemon {
            libc::_exit(1);
        }
        for (target, &fd) in plan.stdio.iter().enumerate() {
            if libc::dup2(fd, target as RawFd) < 0 {
                return fail(plan);
            }
        }
        // Nothing but stdin, stdout and stderr goes on to the service.
        libc::syscall(libc::SYS_close_range, 3 as libc::c_uint, libc::c_uint::MAX, 0);
        if libc::chdir(plan.cwd.as_ptr()) != 0 {
            return fail(plan);
        }
        let mut none: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut none);
        libc::sigprocmask(libc::SIG_SETMASK, &none, ptr::null_mut());
        libc::execve(plan.path.as_ptr(), plan.argv.as_ptr(), plan.envp.as_ptr());
        fail(plan)
    }
}

/// A started process's exit, awaited on its pidfd.
pub struct Exit {
    pidfd: AsyncFd<OwnedFd>,
}

impl Exit {
    /// Waits for the process to exit and reaps it.
    pub async fn wait(&self) -> io::Result<ExitInfo> {
        loop {
            let mut ready = self.pidfd.readable().await?;
            match waitid(Id::PIDFd(self.pidfd.get_ref().as_fd()), WaitPidFlag::WEXITED | WaitPidFlag::WNOHANG) {
                Ok(WaitStatus::Exited(_, code)) => return Ok(ExitInfo { code: Some(code), signal: None }),
                Ok(WaitStatus::Signaled(_, signal, _)) => return Ok(ExitInfo { code: None, signal: Some(signal) }),
                Ok(_) => ready.clear_ready(),
                Err(nix::errno::Errno::EINTR) => {}
                Err(e) => return Err(e.into()),
            }
        }
    }
}

/// The file `program` names: itself when it holds a `/` (relative to the working directory),
/// else the first executable file of that name in the service's `PATH` (or the daemon's).
fn resolve(program: &str, env: &[(OsString, OsString)]) -> io::Result<CString> {
    if program.is_empty() {
        return Err(invalid("the command is empty"));
    }
    if program.contains('/') {
        return cstring(OsStr::new(program));
    }
    let search = env
        .iter()
        .find(|(k, _)| k == "PATH")
        .map(|(_, v)| v.clone())
        .unwrap_or_else(|| OsString::from("/usr/local/bin:/usr/bin:/bin"));
    for dir in std::env::split_paths(&search) {
        let candidate = dir.join(program);
        let c = cstring(candidate.as_os_str())?;
        // SAFETY: a plain system call on a NUL-terminated path.
        if unsafe { libc::access(c.as_ptr(), libc::X_OK) } == 0 && candidate.is_file() {
            return Ok(c);
        }
    }
    Err(io::Error::from_raw_os_error(libc::ENOENT))
}

fn cstring(text: impl AsRef<OsStr>) -> io::Result<CString> {
    CString::new(text.as_ref().as_bytes()).map_err(|_| invalid("an argument holds a NUL byte"))
}

fn invalid(what: &str) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidInput, what.to_string())
}

/// The three descriptors a spawn puts a child's stdin, stdout and stderr in; `/dev/null` in
/// between (the first always).
struct Slots {
    stdio: [OwnedFd; 3],
    /// The child's stack while it runs in the daemon's memory.
    stack: Stack,
}

/// A child's stack, mapped once for good: only the pages a child touched are resident (a few),
/// where a stack taken from the heap for each spawn was 64 KiB zeroed each time, left behind as
/// free heap the daemon kept. Below it, a page no one may touch: a child that overflowed its
/// stack would fault, not write into another set's (mappings made one after another are
/// usually adjacent).
struct Stack(std::ptr::NonNull<u8>);

// SAFETY: the mapping is never unmapped, and is only used by whoever holds its slot set's lock.
unsafe impl Send for Stack {}

impl Stack {
    fn map() -> io::Result<Stack> {
        let guard = nix::unistd::sysconf(nix::unistd::SysconfVar::PAGE_SIZE).ok().flatten().unwrap_or(4096) as usize;
        let flags = MapFlags::MAP_PRIVATE | MapFlags::MAP_STACK;
        let protection = ProtFlags::PROT_READ | ProtFlags::PROT_WRITE;
        let size = std::num::NonZeroUsize::new(guard + STACK_BYTES).expect("a stack has a size");
        // SAFETY: a new anonymous mapping, overlapping nothing; its lowest page is made
        // inaccessible, the stack is the rest.
        unsafe {
            let mapped = mmap_anonymous(None, size, protection, flags)?;
            mprotect(mapped, guard, ProtFlags::PROT_NONE)?;
            Ok(Stack(mapped.cast::<u8>().add(guard)))
        }
    }

    fn as_mut(&mut self) -> &mut [u8] {
        // SAFETY: the mapping is STACK_BYTES long, readable and writable, and `&mut self`
        // (under the slot set's lock) makes this the only reference to it.
        unsafe { std::slice::from_raw_parts_mut(self.0.as_ptr(), STACK_BYTES) }
    }
}

/// How many spawns can be between `clone` and `execve` at once: one set of slots each. More
/// than the runtime's worker threads gains nothing.
const SLOT_SETS: usize = 4;

static SLOTS: OnceLock<Result<Vec<Mutex<Slots>>, String>> = OnceLock::new();

/// A free set of slots, or, when every set is in use, the next one in turn once it is free.
fn take_slots() -> io::Result<MutexGuard<'static, Slots>> {
    let sets = slots()?;
    for set in sets {
        match set.try_lock() {
            Ok(slots) => return Ok(slots),
            Err(TryLockError::Poisoned(p)) => return Ok(p.into_inner()),
            Err(TryLockError::WouldBlock) => {}
        }
    }
    static NEXT: AtomicUsize = AtomicUsize::new(0);
    let set = &sets[NEXT.fetch_add(1, Ordering::Relaxed) % sets.len()];
    Ok(set.lock().unwrap_or_else(|p| p.into_inner()))
}

/// Reserve the spawn slots now, as low as they can be: the daemon calls this before it opens
/// anything. Standard descriptors the daemon was started without are opened on `/dev/null`
/// on the way, so no file of its own is ever taken for its stdout.
pub fn reserve() -> io::Result<()> {
    slots().map(drop)
}

fn slots() -> io::Result<&'static [Mutex<Slots>]> {
    let open = || -> Result<Vec<Mutex<Slots>>, String> {
        let mut fds = Vec::new();
        while fds.len() < 3 * SLOT_SETS {
            let null = std::fs::File::options().read(true).write(true).open("/dev/null");
            let null = null.map_err(|e| format!("cannot open /dev/null: {e}"))?;
            let fd = OwnedFd::from(null);
            if fd.as_raw_fd() <= 2 {
                std::mem::forget(fd); // a standard descriptor of the daemon's: kept for good
            } else {
                fds.push(fd);
            }
        }
        let mut fds = fds.into_iter();
        let stack = || Stack::map().map_err(|e| format!("cannot map a stack for the children: {e}"));
        let set = |stdio| Ok(Mutex::new(Slots { stdio, stack: stack()? }));
        let stdio = (0..SLOT_SETS).filter_map(|_| Some([fds.next()?, fds.next()?, fds.next()?]));
        stdio.map(set).collect()
    };
    SLOTS.get_or_init(open).as_deref().map_err(|e| io::Error::other(format!("spawn slots: {e}")))
}

/// A close-on-exec pipe.
fn pipe() -> io::Result<(OwnedFd, OwnedFd)> {
    Ok(nix::unistd::pipe2(nix::fcntl::OFlag::O_CLOEXEC)?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::AsyncReadExt;

    fn spec<'a>(program: &'a str, args: &'a [String], env: &[(&str, &str)]) -> Spec<'a> {
        Spec {
            program,
            args,
            env: env.iter().map(|(k, v)| (OsString::from(k), OsString::from(v))).collect(),
            cwd: Path::new("/tmp"),
        }
    }

    async fn read_all(fd: OwnedFd) -> String {
        let mut pipe = tokio::net::unix::pipe::Receiver::from_owned_fd(fd).unwrap();
        let mut text = String::new();
        pipe.read_to_string(&mut text).await.unwrap();
        text
    }

    #[tokio::test]
    async fn runs_the_program_in_its_own_group_with_the_given_environment_and_directory() {
        let args = ["-c".to_string(), "echo $FOO $(pwd) $(ps -o pgid= $$) $$; echo err >&2; exit 7".to_string()];
        let s = spawn(spec("sh", &args, &[("FOO", "bar"), ("PATH", "/usr/bin:/bin")])).unwrap();
        let (out, err) = (read_all(s.stdout).await, read_all(s.stderr).await);
        let fields: Vec<&str> = out.split_whitespace().collect();
        assert_eq!(fields[..2], ["bar", "/tmp"]);
        assert_eq!(fields[2], fields[3], "it leads its own process group");
        assert_eq!(fields[3], s.pid.to_string());
        assert_eq!(err, "err\n");
        let exit = s.exit.wait().await.unwrap();
        assert_eq!((exit.code, exit.signal), (Some(7), None));
    }

    #[tokio::test]
    async fn signals_are_default_and_unblocked_in_the_service() {
        // SIGPIPE: the test harness (like the daemon) ignores it; SIGTERM must kill.
        let args = ["-c".to_string(), "grep -E '^Sig(Blk|Ign)' /proc/self/status".to_string()];
        let s = spawn(spec("sh", &args, &[("PATH", "/usr/bin:/bin")])).unwrap();
        let out = read_all(s.stdout).await;
        assert!(out.contains("SigBlk:\t0000000000000000"), "{out}");
        assert!(out.contains("SigIgn:\t0000000000000000"), "{out}");
        let args = ["100".to_string()];
        let s = spawn(spec("sleep", &args, &[])).unwrap();
        nix::sys::signal::kill(nix::unistd::Pid::from_raw(s.pid as i32), Signal::SIGTERM).unwrap();
        assert_eq!(s.exit.wait().await.unwrap().signal, Some(Signal::SIGTERM));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn services_started_at_once_each_get_only_their_own_output_and_no_other_descriptor() {
        // More at once than there are sets of slots, from several threads: no child may see
        // another's pipe, and each one's pipes end when it exits (no copy held elsewhere).
        let starts = (0..3 * SLOT_SETS).map(|i| {
            tokio::task::spawn_blocking(move || {
                let args = ["-c".to_string(), format!("echo {i}; ls /proc/self/fd; echo {i} >&2")];
                spawn(spec("sh", &args, &[("PATH", "/usr/bin:/bin")])).unwrap()
            })
        });
        for (i, started) in futures_util::future::join_all(starts).await.into_iter().enumerate() {
            let s = started.unwrap();
            let (out, err) = (read_all(s.stdout).await, read_all(s.stderr).await);
            // `ls` lists 0, 1, 2 and the directory it reads (3).
            assert_eq!(out.split_whitespace().collect::<Vec<_>>(), [&*i.to_string(), "0", "1", "2", "3"], "{out}");
            assert_eq!(err, format!("{i}\n"));
            assert_eq!(s.exit.wait().await.unwrap().code, Some(0));
        }
    }

    #[tokio::test]
    async fn a_program_that_cannot_run_is_an_error_that_names_why() {
        let e = spawn(spec("no-such-program-here", &[], &[])).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
        let dir = tempfile::tempdir().unwrap();
        let plain = dir.path().join("not-executable");
        std::fs::write(&plain, "#!/bin/sh\n").unwrap();
        let e = spawn(spec(plain.to_str().unwrap(), &[], &[])).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::EACCES));
        let e = spawn(Spec { cwd: Path::new("/no/such/dir"), ..spec("true", &[], &[]) }).err().unwrap();
        assert_eq!(e.raw_os_error(), Some(libc::ENOENT));
    }
}

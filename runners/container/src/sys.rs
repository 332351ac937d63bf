//! The few system calls the sandbox needs that have no safe wrapper: `fork`,
//! `unshare`, the signal mask and `sigwaitinfo`, `close_range` (or `fcntl`),
//! `keyctl`, and the fork of the user-namespace probe. Everything here is small and
//! each `unsafe` block says why it is sound; the rest of the crate is safe code on
//! top of `rustix` and `std`.

#![allow(unsafe_code)]

use std::io;

use rustix::process::Pid;
use rustix::thread::UnshareFlags;

/// What [`fork`] returned in this process.
pub(crate) enum Forked {
    /// We are the new child.
    Child,
    /// We are the parent of this child.
    Parent(Pid),
}

/// Whether this process has exactly one thread (from `/proc/self/task`).
fn single_threaded() -> bool {
    match std::fs::read_dir("/proc/self/task") {
        Ok(entries) => entries.count() == 1,
        Err(_) => false,
    }
}

/// `fork()`, refused unless this process is single-threaded: the sandbox stages
/// are fresh processes that never start a thread, so the child may allocate,
/// format and do anything a normal program does.
pub(crate) fn fork() -> io::Result<Forked> {
    if !single_threaded() {
        return Err(io::Error::other(
            "refusing to fork: the process has more than one thread",
        ));
    }
    // SAFETY: the process has a single thread (checked just above, and nothing in
    // between starts one), so the child gets a consistent copy of every lock and of
    // the allocator; it is free to run ordinary Rust code.
    let pid = unsafe { libc::fork() };
    match pid {
        -1 => Err(io::Error::last_os_error()),
        0 => Ok(Forked::Child),
        pid => Pid::from_raw(pid)
            .map(Forked::Parent)
            .ok_or_else(|| io::Error::other("fork returned an invalid pid")),
    }
}

/// `unshare(flags)`: new namespaces for this process. `CLONE_FILES` is refused: it
/// is the one flag that makes `unshare` unsafe (other threads could see file
/// descriptors from a table they no longer share), and the sandbox never needs it.
pub(crate) fn unshare(flags: UnshareFlags) -> io::Result<()> {
    if flags.contains(UnshareFlags::FILES) {
        return Err(io::Error::from_raw_os_error(libc::EINVAL));
    }
    // SAFETY: without `UnshareFlags::FILES` no file descriptor table is split, so no
    // thread can observe descriptors from a table it does not share (the only
    // hazard `unshare_unsafe` documents).
    unsafe { rustix::thread::unshare_unsafe(flags) }.map_err(io::Error::from)
}

/// A signal set built from signal numbers.
fn sigset(signals: &[i32]) -> libc::sigset_t {
    // SAFETY: `sigset_t` is plain data; `sigemptyset` initialises it fully before
    // any use, and `sigaddset` only sets bits of a valid set.
    unsafe {
        let mut set: libc::sigset_t = std::mem::zeroed();
        libc::sigemptyset(&mut set);
        for &sig in signals {
            libc::sigaddset(&mut set, sig);
        }
        set
    }
}

/// Block `signals` in this (single-threaded) process so they queue up for
/// [`wait_signal`] instead of running their default action.
pub(crate) fn block_signals(signals: &[i32]) -> io::Result<()> {
    let set = sigset(signals);
    // SAFETY: `set` is an initialised signal set; the old mask is not wanted (null).
    let rc = unsafe { libc::sigprocmask(libc::SIG_BLOCK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Unblock every signal (before `exec`: the mask is inherited).
pub(crate) fn unblock_all_signals() -> io::Result<()> {
    let set = sigset(&[]);
    // SAFETY: `set` is an initialised (empty) signal set; the old mask is not wanted.
    let rc = unsafe { libc::sigprocmask(libc::SIG_SETMASK, &set, std::ptr::null_mut()) };
    if rc == 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Reset every signal's disposition to the default, as a fresh container process
/// has: an ignored signal survives `exec`, and what locald's parents ignored (a
/// terminal's SIGQUIT, the glibc-internal signals that `posix_spawn` leaves
/// ignored) is no business of the lifecycle. Errors (SIGKILL, SIGSTOP) are skipped.
pub(crate) fn reset_signal_dispositions() {
    // A zeroed kernel `struct sigaction` is `SIG_DFL` with no flags and an empty
    // mask on every architecture's layout (handler, flags, [restorer,] mask).
    let default_action = [0u64; 4];
    for sig in 1..=64 {
        // SAFETY: the raw system call (glibc's `sigaction` refuses its internal
        // signals 32 and 33) reads a live, zeroed buffer at least as large as the
        // kernel's `struct sigaction`; the old action is not wanted (null); 8 is
        // the size of the kernel's signal set.
        unsafe {
            libc::syscall(
                libc::SYS_rt_sigaction,
                sig,
                default_action.as_ptr(),
                std::ptr::null_mut::<u64>(),
                8usize,
            );
        }
    }
}

/// Wait for one of `signals` (which must be blocked) and return its number.
pub(crate) fn wait_signal(signals: &[i32]) -> io::Result<i32> {
    let set = sigset(signals);
    loop {
        // SAFETY: `set` is an initialised signal set; a null `siginfo_t` pointer is
        // allowed and means the details are not wanted.
        let sig = unsafe { libc::sigwaitinfo(&set, std::ptr::null_mut()) };
        if sig >= 0 {
            return Ok(sig);
        }
        let err = io::Error::last_os_error();
        if err.kind() != io::ErrorKind::Interrupted {
            return Err(err);
        }
    }
}

/// Mark every descriptor from `first` on close-on-exec, so nothing the parent
/// leaked reaches the lifecycle: with `close_range` (Linux 5.11), else (an older
/// kernel, a seccomp filter that refuses it) one by one from /proc/self/fd.
pub(crate) fn cloexec_from(first: u32) -> io::Result<()> {
    // SAFETY: `close_range` with `CLOSE_RANGE_CLOEXEC` only sets a flag on
    // descriptors; it closes nothing and touches no memory.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_close_range,
            first,
            u32::MAX,
            libc::CLOSE_RANGE_CLOEXEC,
        )
    };
    if rc == 0 {
        return Ok(());
    }
    cloexec_listed(first)
}

/// [`cloexec_from`] for each descriptor listed in /proc/self/fd.
fn cloexec_listed(first: u32) -> io::Result<()> {
    let mut fds = Vec::new();
    for entry in std::fs::read_dir("/proc/self/fd")? {
        let name = entry?.file_name();
        if let Some(fd) = name.to_str().and_then(|n| n.parse::<i32>().ok()) {
            if u32::try_from(fd).is_ok_and(|fd| fd >= first) {
                fds.push(fd);
            }
        }
    }
    for fd in fds {
        // SAFETY: `F_GETFD` and `F_SETFD` only read and set the descriptor's flag
        // word; they touch no memory, and a number no longer open (the directory
        // listed above) merely fails with EBADF.
        let flags = unsafe { libc::fcntl(fd, libc::F_GETFD) };
        if flags < 0 {
            let err = io::Error::last_os_error();
            if err.raw_os_error() == Some(libc::EBADF) {
                continue;
            }
            return Err(err);
        }
        // SAFETY: as above.
        if unsafe { libc::fcntl(fd, libc::F_SETFD, flags | libc::FD_CLOEXEC) } < 0 {
            return Err(io::Error::last_os_error());
        }
    }
    Ok(())
}

/// `keyctl(KEYCTL_JOIN_SESSION_KEYRING, NULL)`: leave the inherited session
/// keyring (the host's, with whatever keys locald's session holds) for a fresh
/// anonymous one.
pub(crate) fn join_new_session_keyring() -> io::Result<()> {
    const KEYCTL_JOIN_SESSION_KEYRING: libc::c_long = 1;
    // SAFETY: with a null name the kernel reads no memory of ours; the call only
    // replaces this process's session keyring.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_keyctl,
            KEYCTL_JOIN_SESSION_KEYRING,
            std::ptr::null::<libc::c_char>(),
        )
    };
    if rc >= 0 {
        Ok(())
    } else {
        Err(io::Error::last_os_error())
    }
}

/// Which step of the user-namespace probe failed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ProbeStep {
    /// `unshare(CLONE_NEWUSER | CLONE_NEWNS)`.
    Unshare,
    /// Writing `setgroups`, `uid_map` or `gid_map`.
    IdMap,
    /// A mount operation in the new namespaces.
    Mount,
    /// Mounting a fresh /proc in a new pid namespace (refused where the host's
    /// /proc is partly masked, as in most containers).
    Proc,
}

/// Try, in a forked child, what the sandbox needs first: a new user and mount
/// namespace, an id map for ourselves, a mount operation, and (in a grandchild in a
/// new pid namespace) a fresh /proc. `Ok(None)` when all worked, else the failing
/// step and its errno.
///
/// Callable from a multi-threaded program: the child only makes raw system calls
/// on memory prepared before the fork, and leaves with `_exit`.
pub(crate) fn probe_userns(uid: u32, gid: u32) -> io::Result<Option<(ProbeStep, i32)>> {
    // Everything the child touches is prepared here, before the fork.
    let uid_map = format!("0 {uid} 1\n");
    let gid_map = format!("0 {gid} 1\n");
    let files: [(&std::ffi::CStr, &[u8]); 3] = [
        (c"/proc/self/setgroups", b"deny"),
        (c"/proc/self/uid_map", uid_map.as_bytes()),
        (c"/proc/self/gid_map", gid_map.as_bytes()),
    ];
    let mut fds = [0i32; 2];
    // SAFETY: `fds` is a valid array of two ints for `pipe2` to fill.
    if unsafe { libc::pipe2(fds.as_mut_ptr(), libc::O_CLOEXEC) } != 0 {
        return Err(io::Error::last_os_error());
    }
    let [read_end, write_end] = fds;

    // SAFETY: the child below only calls async-signal-safe system calls (unshare,
    // open, write, close, mount, _exit) on memory allocated before the fork, and
    // never returns into Rust code: this is sound even in a multi-threaded parent.
    let pid = unsafe { libc::fork() };
    if pid == 0 {
        // The child: report `[step, errno (4 bytes)]` on the pipe and `_exit`.
        let fail = |step: u8, errno: i32| -> ! {
            let e = errno.to_ne_bytes();
            let msg = [step, e[0], e[1], e[2], e[3]];
            // SAFETY: `msg` is a live 5-byte buffer; `write_end` is our pipe end;
            // `_exit` ends the child without running any Rust or libc cleanup.
            unsafe {
                libc::write(write_end, msg.as_ptr().cast(), msg.len());
                libc::_exit(1)
            }
        };
        let errno = || io::Error::last_os_error().raw_os_error().unwrap_or(0);
        // SAFETY: a plain system call with constant flags.
        if unsafe { libc::unshare(libc::CLONE_NEWUSER | libc::CLONE_NEWNS) } != 0 {
            fail(1, errno());
        }
        for (path, content) in files {
            // SAFETY: `path` is NUL-terminated, `content` a live buffer of the
            // given length, and `fd` is only used while open.
            let ok = unsafe {
                let fd = libc::open(path.as_ptr(), libc::O_WRONLY | libc::O_CLOEXEC);
                if fd < 0 {
                    false
                } else {
                    let n = libc::write(fd, content.as_ptr().cast(), content.len());
                    let failed = n < 0;
                    libc::close(fd);
                    !failed
                }
            };
            if !ok {
                fail(2, errno());
            }
        }
        // SAFETY: the target is a C string literal; the other pointers may be null for a
        // propagation change.
        let rc = unsafe {
            libc::mount(
                std::ptr::null(),
                c"/".as_ptr(),
                std::ptr::null(),
                libc::MS_REC | libc::MS_PRIVATE,
                std::ptr::null(),
            )
        };
        if rc != 0 {
            fail(3, errno());
        }
        // SAFETY: a plain system call with a constant flag.
        if unsafe { libc::unshare(libc::CLONE_NEWPID) } != 0 {
            fail(1, errno());
        }
        // SAFETY: this child is single-threaded; the grandchild only mounts and
        // leaves with `_exit`.
        let grandchild = unsafe { libc::fork() };
        if grandchild == 0 {
            // SAFETY: NUL-terminated strings; null data is allowed for proc.
            let rc = unsafe {
                libc::mount(
                    c"proc".as_ptr(),
                    c"/proc".as_ptr(),
                    c"proc".as_ptr(),
                    libc::MS_NOSUID | libc::MS_NODEV | libc::MS_NOEXEC,
                    std::ptr::null(),
                )
            };
            let code = if rc == 0 { 0 } else { errno().clamp(1, 255) };
            // SAFETY: ends the grandchild without running any cleanup.
            unsafe { libc::_exit(code) }
        }
        if grandchild < 0 {
            fail(4, errno());
        }
        let mut status = 0;
        // SAFETY: `status` is a live int for `waitpid` to fill.
        while unsafe { libc::waitpid(grandchild, &mut status, 0) } < 0 {
            if errno() != libc::EINTR {
                fail(4, errno());
            }
        }
        if !libc::WIFEXITED(status) {
            fail(4, libc::EIO);
        }
        if libc::WEXITSTATUS(status) != 0 {
            fail(4, libc::WEXITSTATUS(status));
        }
        // SAFETY: ends the child without running any cleanup.
        unsafe { libc::_exit(0) }
    }
    let fork_error = (pid < 0).then(io::Error::last_os_error);
    // SAFETY: `write_end` is our descriptor and is not used after this.
    unsafe { libc::close(write_end) };
    if let Some(err) = fork_error {
        // SAFETY: `read_end` is our descriptor and is not used after this.
        unsafe { libc::close(read_end) };
        return Err(err);
    }

    let mut buf = [0u8; 5];
    let mut got = 0usize;
    while got < buf.len() {
        // SAFETY: the destination is the unfilled tail of `buf`.
        let n = unsafe { libc::read(read_end, buf[got..].as_mut_ptr().cast(), buf.len() - got) };
        if n > 0 {
            got += n as usize;
        } else if n == 0 || io::Error::last_os_error().kind() != io::ErrorKind::Interrupted {
            break;
        }
    }
    // SAFETY: `read_end` is our descriptor and is not used after this.
    unsafe { libc::close(read_end) };
    let child = Pid::from_raw(pid).ok_or_else(|| io::Error::other("fork returned pid 0"))?;
    let status = loop {
        match rustix::process::waitpid(Some(child), rustix::process::WaitOptions::empty()) {
            Ok(status) => break status,
            Err(rustix::io::Errno::INTR) => continue,
            Err(e) => return Err(e.into()),
        }
    };
    if got == buf.len() {
        let step = match buf[0] {
            1 => ProbeStep::Unshare,
            2 => ProbeStep::IdMap,
            3 => ProbeStep::Mount,
            _ => ProbeStep::Proc,
        };
        let errno = i32::from_ne_bytes([buf[1], buf[2], buf[3], buf[4]]);
        return Ok(Some((step, errno)));
    }
    match status.and_then(|(_, s)| s.exit_status()) {
        Some(0) => Ok(None),
        _ => Err(io::Error::other("the probe process ended unexpectedly")),
    }
}

/// Brings the loopback interface of this network namespace up (a new network
/// namespace has `lo`, down). Needs `CAP_NET_ADMIN` over the namespace.
pub(crate) fn loopback_up() -> io::Result<()> {
    let sock = rustix::net::socket(
        rustix::net::AddressFamily::INET,
        rustix::net::SocketType::DGRAM,
        None,
    )?;
    // SAFETY: `ifreq` is plain old data; all-zero is a valid value.
    let mut req: libc::ifreq = unsafe { std::mem::zeroed() };
    for (dst, src) in req.ifr_name.iter_mut().zip(b"lo\0") {
        *dst = *src as libc::c_char;
    }
    use std::os::fd::AsRawFd;
    // SAFETY: SIOCGIFFLAGS reads into `req`, a valid, live ifreq with a
    // NUL-terminated name; the fd is an open socket.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCGIFFLAGS, &mut req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    // SAFETY: `ifru_flags` is the union member SIOCGIFFLAGS just filled in.
    unsafe {
        req.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
    }
    // SAFETY: as above; SIOCSIFFLAGS only reads `req`.
    if unsafe { libc::ioctl(sock.as_raw_fd(), libc::SIOCSIFFLAGS, &req) } < 0 {
        return Err(io::Error::last_os_error());
    }
    Ok(())
}

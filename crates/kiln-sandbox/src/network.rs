//! `RUN --network=none`: a network namespace of the command's own, with loopback up.

use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

use nix::errno::Errno;
use nix::sched::{CloneFlags, unshare};

/// Moves the calling process into a new network namespace and brings its `lo` up. A fresh
/// namespace has only `lo`, and down: without it up even 127.0.0.1 is unreachable.
pub(crate) fn isolate() -> Result<(), String> {
    unshare(CloneFlags::CLONE_NEWNET).map_err(|err| format!("unshare(CLONE_NEWNET): {err}"))?;
    bring_loopback_up().map_err(|err| format!("bringing up lo: {err}"))
}

fn bring_loopback_up() -> Result<(), Errno> {
    // SAFETY: socket() has no memory arguments; the fd it returns is owned right away.
    let socket = unsafe {
        let fd = libc::socket(libc::AF_INET, libc::SOCK_DGRAM | libc::SOCK_CLOEXEC, 0);
        if fd == -1 {
            return Err(Errno::last());
        }
        OwnedFd::from_raw_fd(fd)
    };
    // SAFETY: ifreq is plain old data; all zeroes is a valid value.
    let mut request: libc::ifreq = unsafe { std::mem::zeroed() };
    for (slot, byte) in request.ifr_name.iter_mut().zip(b"lo") {
        *slot = *byte as libc::c_char;
    }
    // SAFETY: SIOCGIFFLAGS and SIOCSIFFLAGS read and write the ifreq they are given, which
    // lives across the calls; only its flags member is used.
    unsafe {
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCGIFFLAGS, &mut request) == -1 {
            return Err(Errno::last());
        }
        request.ifr_ifru.ifru_flags |= libc::IFF_UP as libc::c_short;
        if libc::ioctl(socket.as_raw_fd(), libc::SIOCSIFFLAGS, &request) == -1 {
            return Err(Errno::last());
        }
    }
    Ok(())
}

//! The capabilities of a RUN step: Docker's default set, in the bounding set too, so that
//! nothing the step executes (a set-user-ID or file-capability program of the image) gets
//! more.

use nix::errno::Errno;

/// Docker's default capabilities, by number (linux/capability.h).
const DEFAULT: [u32; 14] = [
    0,  // CAP_CHOWN
    1,  // CAP_DAC_OVERRIDE
    3,  // CAP_FOWNER
    4,  // CAP_FSETID
    5,  // CAP_KILL
    6,  // CAP_SETGID
    7,  // CAP_SETUID
    8,  // CAP_SETPCAP
    10, // CAP_NET_BIND_SERVICE
    13, // CAP_NET_RAW
    18, // CAP_SYS_CHROOT
    27, // CAP_MKNOD
    29, // CAP_AUDIT_WRITE
    31, // CAP_SETFCAP
];

/// `_LINUX_CAPABILITY_VERSION_3`: 64-bit sets, as two 32-bit halves.
const CAPABILITY_VERSION_3: u32 = 0x2008_0522;

#[repr(C)]
struct CapHeader {
    version: u32,
    pid: libc::c_int,
}

#[repr(C)]
#[derive(Clone, Copy, Default)]
struct CapData {
    effective: u32,
    permitted: u32,
    inheritable: u32,
}

/// [`DEFAULT`] as a bit mask: `0xa80425fb`, what `CapBnd` shows in /proc/self/status.
pub(crate) const DEFAULT_MASK: u64 = {
    let mut mask = 0;
    let mut index = 0;
    while index < DEFAULT.len() {
        mask |= 1 << DEFAULT[index];
        index += 1;
    }
    mask
};

/// Drops every capability outside [`DEFAULT`] from the bounding set, empties the ambient and
/// inheritable sets and sets the permitted and effective sets to [`DEFAULT`]. Needs
/// CAP_SETPCAP, so it runs before anything else is dropped. A later change to a non-zero uid
/// clears the permitted and effective sets, as in Docker for a non-root `USER`.
///
/// The inheritable set stays empty, as in Docker since CVE-2022-24769: a non-empty one would
/// hand its capabilities to programs with inheritable file capabilities run by any user.
pub(crate) fn limit_to_default() -> Result<(), String> {
    for capability in 0..64 {
        if DEFAULT_MASK & (1 << capability) != 0 {
            continue;
        }
        // SAFETY: prctl(PR_CAPBSET_DROP) takes a number and changes only this thread's
        // bounding set.
        if unsafe { libc::prctl(libc::PR_CAPBSET_DROP, capability, 0, 0, 0) } == -1 {
            match Errno::last() {
                // Past the kernel's last capability.
                Errno::EINVAL => break,
                err => return Err(format!("dropping capability {capability}: {err}")),
            }
        }
    }
    // SAFETY: as above, for the ambient set.
    let cleared = unsafe {
        libc::prctl(
            libc::PR_CAP_AMBIENT,
            libc::PR_CAP_AMBIENT_CLEAR_ALL,
            0,
            0,
            0,
        )
    };
    if cleared == -1 {
        return Err(format!(
            "clearing the ambient capabilities: {}",
            Errno::last()
        ));
    }
    let mut header = CapHeader {
        version: CAPABILITY_VERSION_3,
        pid: 0,
    };
    let low = DEFAULT_MASK as u32;
    let high = (DEFAULT_MASK >> 32) as u32;
    let data = [
        CapData {
            effective: low,
            permitted: low,
            inheritable: 0,
        },
        CapData {
            effective: high,
            permitted: high,
            inheritable: 0,
        },
    ];
    // SAFETY: capset reads a version 3 header and the two data structs that version takes;
    // both live across the call.
    if unsafe { libc::syscall(libc::SYS_capset, &mut header, data.as_ptr()) } == -1 {
        return Err(format!("setting capabilities: {}", Errno::last()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::DEFAULT_MASK;

    #[test]
    fn default_set_is_dockers() {
        assert_eq!(DEFAULT_MASK, 0xa804_25fb);
    }
}

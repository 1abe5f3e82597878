//! What kiln knows about each architecture it can emulate: the QEMU user-mode emulator's name,
//! the ELF header pattern binfmt_misc matches for it, and a tiny program that only exits 0,
//! used to probe whether binaries of the architecture run (and, for the machine's own
//! architecture, as the command of `Sandbox::trial`).

/// The QEMU binfmt_misc pattern: the first 20 bytes of an ELF header (ident, e_type and
/// e_machine), masked so that ET_EXEC and ET_DYN, and any OS ABI, match.
pub(crate) struct ForeignArch {
    /// OCI architecture name.
    pub oci: &'static str,
    /// Suffix of the `qemu-<name>-static` emulator.
    pub qemu: &'static str,
    pub magic: &'static [u8],
    pub mask: &'static [u8],
    probe: Probe,
}

/// Instructions of the probe program, which makes the `exit(0)` system call.
enum ProbeCode {
    /// Fixed-width instruction words, stored in the architecture's byte order.
    Words(&'static [u32]),
    /// Variable-length instructions, as they appear in memory.
    Bytes(&'static [u8]),
}

struct Probe {
    elf64: bool,
    big_endian: bool,
    machine: u16,
    flags: u32,
    code: ProbeCode,
}

/// The standard QEMU patterns, as qemu's `qemu-binfmt-conf.sh` and Debian's binfmt.d files
/// have them.
pub(crate) const FOREIGN_ARCHES: &[ForeignArch] = &[
    ForeignArch {
        oci: "arm64",
        qemu: "aarch64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xb7\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        probe: Probe {
            elf64: true,
            big_endian: false,
            machine: 183,
            flags: 0,
            // mov x0, #0; mov x8, #93 (exit); svc #0
            code: ProbeCode::Words(&[0xd280_0000, 0xd280_0ba8, 0xd400_0001]),
        },
    },
    ForeignArch {
        oci: "arm",
        qemu: "arm",
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x28\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        probe: Probe {
            elf64: false,
            big_endian: false,
            machine: 40,
            // EABI version 5
            flags: 0x0500_0000,
            // mov r0, #0; mov r7, #1 (exit); svc #0
            code: ProbeCode::Words(&[0xe3a0_0000, 0xe3a0_7001, 0xef00_0000]),
        },
    },
    ForeignArch {
        oci: "ppc64le",
        qemu: "ppc64le",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x15\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\x00",
        probe: Probe {
            elf64: true,
            big_endian: false,
            machine: 21,
            // ELFv2 ABI: the entry point is code, not a function descriptor.
            flags: 2,
            // li r0, 1 (exit); li r3, 0; sc
            code: ProbeCode::Words(&[0x3800_0001, 0x3860_0000, 0x4400_0002]),
        },
    },
    ForeignArch {
        oci: "s390x",
        qemu: "s390x",
        magic: b"\x7fELF\x02\x02\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x16",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\xfc\xff\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff",
        probe: Probe {
            elf64: true,
            big_endian: true,
            machine: 22,
            flags: 0,
            // lghi %r2, 0; svc 1 (exit)
            code: ProbeCode::Bytes(&[0xa7, 0x29, 0x00, 0x00, 0x0a, 0x01]),
        },
    },
    ForeignArch {
        oci: "riscv64",
        qemu: "riscv64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\xf3\x00",
        mask: b"\xff\xff\xff\xff\xff\xff\xff\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        probe: Probe {
            elf64: true,
            big_endian: false,
            machine: 243,
            // RVC, double-float ABI, as Debian's riscv64 binaries
            flags: 0x5,
            // li a0, 0; li a7, 93 (exit); ecall
            code: ProbeCode::Words(&[0x0000_0513, 0x05d0_0893, 0x0000_0073]),
        },
    },
    ForeignArch {
        oci: "386",
        qemu: "i386",
        magic: b"\x7fELF\x01\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x03\x00",
        mask: b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        probe: Probe {
            elf64: false,
            big_endian: false,
            machine: 3,
            flags: 0,
            // xor ebx, ebx; mov eax, 1 (exit); int 0x80
            code: ProbeCode::Bytes(&[0x31, 0xdb, 0xb8, 0x01, 0x00, 0x00, 0x00, 0xcd, 0x80]),
        },
    },
    ForeignArch {
        oci: "amd64",
        qemu: "x86_64",
        magic: b"\x7fELF\x02\x01\x01\x00\x00\x00\x00\x00\x00\x00\x00\x00\x02\x00\x3e\x00",
        mask: b"\xff\xff\xff\xff\xff\xfe\xfe\x00\xff\xff\xff\xff\xff\xff\xff\xff\xfe\xff\xff\xff",
        probe: Probe {
            elf64: true,
            big_endian: false,
            machine: 62,
            flags: 0,
            // xor edi, edi; mov eax, 60 (exit); syscall
            code: ProbeCode::Bytes(&[0x31, 0xff, 0xb8, 0x3c, 0x00, 0x00, 0x00, 0x0f, 0x05]),
        },
    },
];

/// The entry for an OCI architecture; a variant suffix (`arm/v7`) is ignored.
pub(crate) fn foreign_arch(arch: &str) -> Option<&'static ForeignArch> {
    let base = arch.split('/').next().unwrap_or(arch);
    FOREIGN_ARCHES.iter().find(|known| known.oci == base)
}

/// The entry for the architecture this program was built for, whose probe runs natively.
pub(crate) fn native() -> Option<&'static ForeignArch> {
    let oci = match std::env::consts::ARCH {
        "x86_64" => "amd64",
        "x86" => "386",
        "aarch64" => "arm64",
        "powerpc64" if cfg!(target_endian = "little") => "ppc64le",
        "arm" | "s390x" | "riscv64" => std::env::consts::ARCH,
        _ => return None,
    };
    foreign_arch(oci)
}

/// Load address of the probe: page-aligned for every page size up to 64 KiB.
const PROBE_BASE: u64 = 0x40_0000;

impl ForeignArch {
    /// A complete static ELF executable for this architecture that only exits with status 0:
    /// ELF header, one PT_LOAD program header mapping the whole file, then the code.
    pub(crate) fn probe_program(&self) -> Vec<u8> {
        let probe = &self.probe;
        let code: Vec<u8> = match probe.code {
            ProbeCode::Words(words) => words
                .iter()
                .flat_map(|word| match probe.big_endian {
                    true => word.to_be_bytes(),
                    false => word.to_le_bytes(),
                })
                .collect(),
            ProbeCode::Bytes(bytes) => bytes.to_vec(),
        };
        let (header_size, program_header_size): (u16, u16) = match probe.elf64 {
            true => (64, 56),
            false => (52, 32),
        };
        let code_offset = u64::from(header_size + program_header_size);
        let file_size = code_offset + code.len() as u64;

        let mut elf = ElfWriter {
            bytes: Vec::new(),
            elf64: probe.elf64,
            big_endian: probe.big_endian,
        };
        elf.bytes.extend_from_slice(b"\x7fELF");
        elf.bytes.push(if probe.elf64 { 2 } else { 1 });
        elf.bytes.push(if probe.big_endian { 2 } else { 1 });
        elf.bytes.push(1); // EV_CURRENT
        elf.bytes.resize(16, 0); // System V ABI, padding
        elf.u16(2); // ET_EXEC
        elf.u16(probe.machine);
        elf.u32(1); // EV_CURRENT
        elf.address(PROBE_BASE + code_offset); // entry point
        elf.address(u64::from(header_size)); // program headers right after this header
        elf.address(0); // no section headers
        elf.u32(probe.flags);
        elf.u16(header_size);
        elf.u16(program_header_size);
        elf.u16(1);
        elf.u16(0);
        elf.u16(0);
        elf.u16(0);

        const PT_LOAD: u32 = 1;
        const READ_EXECUTE: u32 = 0b101;
        elf.u32(PT_LOAD);
        if probe.elf64 {
            elf.u32(READ_EXECUTE);
        }
        elf.address(0); // offset
        elf.address(PROBE_BASE); // virtual address
        elf.address(PROBE_BASE); // physical address
        elf.address(file_size);
        elf.address(file_size);
        if !probe.elf64 {
            elf.u32(READ_EXECUTE);
        }
        elf.address(0x1_0000); // alignment
        debug_assert_eq!(elf.bytes.len() as u64, code_offset);
        elf.bytes.extend_from_slice(&code);
        elf.bytes
    }
}

struct ElfWriter {
    bytes: Vec<u8>,
    elf64: bool,
    big_endian: bool,
}

impl ElfWriter {
    fn u16(&mut self, value: u16) {
        let bytes = match self.big_endian {
            true => value.to_be_bytes(),
            false => value.to_le_bytes(),
        };
        self.bytes.extend_from_slice(&bytes);
    }

    fn u32(&mut self, value: u32) {
        let bytes = match self.big_endian {
            true => value.to_be_bytes(),
            false => value.to_le_bytes(),
        };
        self.bytes.extend_from_slice(&bytes);
    }

    /// An address or offset: 8 bytes in ELF64, 4 in ELF32.
    fn address(&mut self, value: u64) {
        match (self.elf64, self.big_endian) {
            (true, true) => self.bytes.extend_from_slice(&value.to_be_bytes()),
            (true, false) => self.bytes.extend_from_slice(&value.to_le_bytes()),
            (false, _) => self.u32(u32::try_from(value).expect("probe addresses fit 32 bits")),
        }
    }
}

/// `bytes` as binfmt_misc's `\xHH` escapes, as lowercase hex.
pub(crate) fn escaped(bytes: &[u8]) -> String {
    bytes.iter().map(|byte| format!("\\x{byte:02x}")).collect()
}

#[cfg(test)]
mod tests {
    use std::os::unix::fs::PermissionsExt;
    use std::process::Command;

    use super::FOREIGN_ARCHES;

    /// Each probe program runs under its QEMU emulator, started explicitly, and exits 0.
    #[test]
    fn probe_programs_exit_0_under_their_emulator() {
        let dir = tempfile::tempdir().unwrap();
        for arch in FOREIGN_ARCHES {
            let path = dir.path().join(format!("probe-{}", arch.oci));
            std::fs::write(&path, arch.probe_program()).unwrap();
            std::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o755)).unwrap();
            let qemu = format!("/usr/bin/qemu-{}-static", arch.qemu);
            let output = Command::new(&qemu).arg(&path).output().unwrap();
            assert!(
                output.status.success(),
                "{qemu} {}: {} {}",
                path.display(),
                output.status,
                String::from_utf8_lossy(&output.stderr)
            );
        }
    }

    /// The trial step's program is this machine's own, and runs without an emulator.
    #[test]
    fn the_native_probe_runs_directly() {
        let native = super::native().expect("a probe program for this machine");
        assert!(crate::runs_natively(native.oci), "{}", native.oci);
        let dir = tempfile::tempdir().unwrap();
        let written = dir.path().join("written");
        std::fs::write(&written, native.probe_program()).unwrap();
        std::fs::set_permissions(&written, std::fs::Permissions::from_mode(0o755)).unwrap();
        // Run a copy written by another process: a write descriptor of this multi-threaded
        // test process could be inherited by another test's fork and fail the exec (ETXTBSY).
        let path = dir.path().join("probe");
        kiln_testkit::copy_executable(&written, &path);
        let status = Command::new(&path).status().unwrap();
        assert!(status.success(), "{}: {status}", path.display());
    }

    /// The emulator would not even be asked to run a probe that its pattern does not match.
    #[test]
    fn probe_programs_match_their_binfmt_pattern() {
        for arch in FOREIGN_ARCHES {
            assert_eq!(arch.magic.len(), arch.mask.len(), "{}", arch.oci);
            let probe = arch.probe_program();
            let matches = arch
                .magic
                .iter()
                .zip(arch.mask)
                .zip(&probe)
                .all(|((magic, mask), byte)| byte & mask == magic & mask);
            assert!(matches, "{}", arch.oci);
            for other in FOREIGN_ARCHES.iter().filter(|other| other.oci != arch.oci) {
                let also = other
                    .magic
                    .iter()
                    .zip(other.mask)
                    .zip(&probe)
                    .all(|((magic, mask), byte)| byte & mask == magic & mask);
                assert!(!also, "{} probe matches {}", arch.oci, other.oci);
            }
        }
    }

    /// The patterns agree with the ones Debian's qemu-user-static installs, where it has one.
    #[test]
    fn patterns_agree_with_debians_binfmt_files() {
        let mut compared = 0;
        for arch in FOREIGN_ARCHES {
            let file = format!("/usr/lib/binfmt.d/qemu-{}.conf", arch.qemu);
            let Ok(line) = std::fs::read_to_string(&file) else {
                continue;
            };
            // :name:M::magic:mask:interpreter:flags
            let fields: Vec<&str> = line.trim().split(':').collect();
            assert_eq!(fields[4], super::escaped(arch.magic), "{file}");
            assert_eq!(fields[5], super::escaped(arch.mask), "{file}");
            compared += 1;
        }
        // qemu-user-static is installed here: arm64, arm, ppc64le, s390x and riscv64 at least.
        assert!(compared >= 5, "only {compared} binfmt.d files found");
    }
}

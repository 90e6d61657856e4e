"""A hand-assembled classic-BPF seccomp filter for bubblewrap's `--seccomp FD`.

`--unshare-net` gives the sandbox an empty network namespace, but AF_VSOCK sockets are not
namespaced: on a VM they reach the hypervisor's host. The filter makes `socket(AF_VSOCK, ...)`
and `socketpair(AF_VSOCK, ...)` fail with EAFNOSUPPORT.

It also closes the side doors to the same syscall: the x86 compat ABIs (i386 via `int 0x80`,
x32 via the 0x40000000 syscall bit), the 32-bit `socketcall` multiplexer whose arguments
live in memory BPF cannot read, and io_uring, whose IORING_OP_SOCKET creates sockets without
calling socket(2). Programs fall back from io_uring on ENOSYS, so nothing legitimate breaks.
It turns off the kernel keyring calls: a uid's keyring outlives the run, and sandbox uids
are reused, so it could carry data from one run to a later one.

Finally it keeps the code from making namespaces of its own. As root the sandbox has no user
namespace (it drops to a per-run uid instead), so bwrap's --disable-userns cannot apply, and
an unprivileged `unshare(CLONE_NEWUSER)` would give the code uid 0 and every capability in a
namespace of its own, from which it could build new network and mount namespaces.
`unshare` and `clone` with any CLONE_NEW* flag fail with EPERM, and so does `setns`.
`clone3` passes its flags in a struct that BPF cannot read, so it fails with ENOSYS: glibc
then falls back to `clone`, where the flags are checked, so threads, fork, posix_spawn and
multiprocessing keep working.

No libseccomp: the program is a list of `struct sock_filter {u16 code; u8 jt; u8 jf; u32 k}`.
"""

from __future__ import annotations

import platform
import struct
from dataclasses import dataclass

from bot.errors import SandboxUnavailable

# Classic BPF opcodes (linux/bpf_common.h).
BPF_LD_W_ABS = 0x20  # BPF_LD | BPF_W | BPF_ABS
BPF_JEQ_K = 0x15  # BPF_JMP | BPF_JEQ | BPF_K
BPF_JGE_K = 0x35  # BPF_JMP | BPF_JGE | BPF_K
BPF_JSET_K = 0x45  # BPF_JMP | BPF_JSET | BPF_K: jump if A & k
BPF_RET_K = 0x06  # BPF_RET | BPF_K

# linux/seccomp.h
SECCOMP_RET_ALLOW = 0x7FFF0000
SECCOMP_RET_ERRNO = 0x00050000

# struct seccomp_data: int nr; u32 arch; u64 instruction_pointer; u64 args[6].
OFFSET_NR = 0
OFFSET_ARCH = 4
# The low 32 bits of args[0] on little-endian machines. The kernel reads `int domain` (and
# only the low word of clone's and unshare's flags holds namespace bits), so only the low
# word matters: comparing the high word too would let garbage there slip by.
OFFSET_ARG0_LOW = 16

AF_VSOCK = 40
EAFNOSUPPORT = 97
ENOSYS = 38
EPERM = 1
X32_SYSCALL_BIT = 0x40000000
IO_URING_SETUP = 425  # same number on every architecture since the unified table (5.1)
CLONE3 = 435  # likewise

# linux/sched.h. Namespace flags all sit in the low word, the one the kernel reads for
# clone and unshare. CLONE_NEWTIME shares its bit with the exit signal in clone()'s flags,
# so it is checked for unshare only (clone() cannot create a time namespace anyway).
CLONE_NEWTIME = 0x00000080
CLONE_NEWNS = 0x00020000
CLONE_NEWCGROUP = 0x02000000
CLONE_NEWUTS = 0x04000000
CLONE_NEWIPC = 0x08000000
CLONE_NEWUSER = 0x10000000
CLONE_NEWPID = 0x20000000
CLONE_NEWNET = 0x40000000
CLONE_NAMESPACE_FLAGS = (
    CLONE_NEWNS
    | CLONE_NEWCGROUP
    | CLONE_NEWUTS
    | CLONE_NEWIPC
    | CLONE_NEWUSER
    | CLONE_NEWPID
    | CLONE_NEWNET
)
UNSHARE_NAMESPACE_FLAGS = CLONE_NAMESPACE_FLAGS | CLONE_NEWTIME

SOCK_FILTER = struct.Struct("=HBBI")


@dataclass(frozen=True)
class AbiSyscalls:
    """Syscall numbers of one audit architecture that can create sockets."""

    name: str
    audit_arch: int
    socket: int
    socketpair: int
    keyring: tuple[int, int, int]  # add_key, request_key, keyctl
    clone: int  # flags in args[0] on every ABI here
    unshare: int
    setns: int
    socketcall: int | None = None  # 32-bit multiplexer: arguments are behind a pointer
    block_x32: bool = False


X86_64 = AbiSyscalls(
    "x86_64",
    0xC000003E,
    socket=41,
    socketpair=53,
    keyring=(248, 249, 250),
    clone=56,
    unshare=272,
    setns=308,
    block_x32=True,
)
I386 = AbiSyscalls(
    "i386",
    0x40000003,
    socket=359,
    socketpair=360,
    keyring=(286, 287, 288),
    clone=120,
    unshare=310,
    setns=346,
    socketcall=102,
)
AARCH64 = AbiSyscalls(
    "aarch64",
    0xC00000B7,
    socket=198,
    socketpair=199,
    keyring=(217, 218, 219),
    clone=220,
    unshare=97,
    setns=268,
)
ARM = AbiSyscalls(
    "arm",
    0x40000028,
    socket=281,
    socketpair=288,
    keyring=(309, 310, 311),
    clone=120,
    unshare=337,
    setns=375,
    socketcall=102,
)

# Each machine, with the compat ABIs a process on it can switch to without privileges.
MACHINE_ABIS: dict[str, tuple[AbiSyscalls, ...]] = {
    "x86_64": (X86_64, I386),
    "amd64": (X86_64, I386),
    "aarch64": (AARCH64, ARM),
    "arm64": (AARCH64, ARM),
}


class _Assembler:
    """Forward-only jumps to named labels, resolved to BPF's relative u8 offsets."""

    def __init__(self) -> None:
        self.items: list[tuple[int, str | int, str | int, int] | str] = []

    def label(self, name: str) -> None:
        self.items.append(name)

    def op(self, code: int, k: int, jt: str | int = 0, jf: str | int = 0) -> None:
        self.items.append((code, jt, jf, k))

    def assemble(self) -> bytes:
        positions: dict[str, int] = {}
        pc = 0
        for item in self.items:
            if isinstance(item, str):
                positions[item] = pc
            else:
                pc += 1
        out = bytearray()
        pc = 0
        for item in self.items:
            if isinstance(item, str):
                continue
            code, jt, jf, k = item
            out += SOCK_FILTER.pack(
                code, self._rel(jt, pc, positions), self._rel(jf, pc, positions), k
            )
            pc += 1
        return bytes(out)

    @staticmethod
    def _rel(target: str | int, pc: int, positions: dict[str, int]) -> int:
        if isinstance(target, int):
            return target
        offset = positions[target] - pc - 1
        if not 0 <= offset <= 255:
            raise ValueError(f"BPF jump to {target!r} out of range ({offset})")
        return offset


def machine_abis(machine: str | None = None) -> tuple[AbiSyscalls, ...]:
    """The ABIs to filter on `machine` (default: this one); refuses unknown machines."""
    machine = (machine or platform.machine()).lower()
    try:
        return MACHINE_ABIS[machine]
    except KeyError:
        # Refusing beats running unfiltered: an allow-all filter would hide that the vsock
        # escape is open, and guessing syscall numbers for an unknown ABI could block the
        # wrong call. The E2B backend does not need this filter.
        raise SandboxUnavailable(
            f"no seccomp filter for machine {machine!r} (known: x86_64, aarch64): the local "
            "sandbox cannot block AF_VSOCK sockets here; use the E2B backend (E2B_API_KEY)"
        ) from None


def build_filter(machine: str | None = None) -> bytes:
    """The filter program for `machine`, ready to write to bwrap's `--seccomp` fd."""
    abis = machine_abis(machine)
    asm = _Assembler()
    asm.op(BPF_LD_W_ABS, OFFSET_ARCH)
    for abi in abis:
        asm.op(BPF_JEQ_K, abi.audit_arch, jt=f"abi_{abi.name}")
    # An audit arch this machine should never produce: refuse the call rather than guess
    # what its numbers mean.
    asm.op(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS)
    for abi in abis:
        asm.label(f"abi_{abi.name}")
        asm.op(BPF_LD_W_ABS, OFFSET_NR)
        if abi.block_x32:
            asm.op(BPF_JGE_K, X32_SYSCALL_BIT, jt="enosys")
        asm.op(BPF_JEQ_K, IO_URING_SETUP, jt="enosys")
        for number in abi.keyring:
            asm.op(BPF_JEQ_K, number, jt="enosys")
        asm.op(BPF_JEQ_K, CLONE3, jt="enosys")
        asm.op(BPF_JEQ_K, abi.clone, jt="check_clone")
        asm.op(BPF_JEQ_K, abi.unshare, jt="check_unshare")
        asm.op(BPF_JEQ_K, abi.setns, jt="eperm")
        asm.op(BPF_JEQ_K, abi.socket, jt="check_domain")
        asm.op(BPF_JEQ_K, abi.socketpair, jt="check_domain")
        if abi.socketcall is not None:
            asm.op(BPF_JEQ_K, abi.socketcall, jt="eafnosupport")
        asm.op(BPF_RET_K, SECCOMP_RET_ALLOW)
    asm.label("check_clone")
    asm.op(BPF_LD_W_ABS, OFFSET_ARG0_LOW)
    asm.op(BPF_JSET_K, CLONE_NAMESPACE_FLAGS, jt="eperm")
    asm.op(BPF_RET_K, SECCOMP_RET_ALLOW)
    asm.label("check_unshare")
    asm.op(BPF_LD_W_ABS, OFFSET_ARG0_LOW)
    asm.op(BPF_JSET_K, UNSHARE_NAMESPACE_FLAGS, jt="eperm")
    asm.op(BPF_RET_K, SECCOMP_RET_ALLOW)
    asm.label("eperm")
    asm.op(BPF_RET_K, SECCOMP_RET_ERRNO | EPERM)
    asm.label("check_domain")
    asm.op(BPF_LD_W_ABS, OFFSET_ARG0_LOW)
    asm.op(BPF_JEQ_K, AF_VSOCK, jt="eafnosupport")
    asm.op(BPF_RET_K, SECCOMP_RET_ALLOW)
    asm.label("eafnosupport")
    asm.op(BPF_RET_K, SECCOMP_RET_ERRNO | EAFNOSUPPORT)
    asm.label("enosys")
    asm.op(BPF_RET_K, SECCOMP_RET_ERRNO | ENOSYS)
    return asm.assemble()


# The filter's first job, and its name in older callers.
build_vsock_filter = build_filter


def decode(program: bytes) -> list[tuple[int, int, int, int]]:
    """The program as (code, jt, jf, k) tuples, for tests and debugging."""
    return [SOCK_FILTER.unpack_from(program, i) for i in range(0, len(program), SOCK_FILTER.size)]

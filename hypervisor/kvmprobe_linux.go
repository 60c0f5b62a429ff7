package hypervisor

import (
	"encoding/binary"
	"fmt"
	"os"
	"unsafe"

	"golang.org/x/sys/unix"
)

// KVM ioctl numbers and exit reasons from <linux/kvm.h>.
const (
	kvmGetAPIVersion       = 0xAE00
	kvmCreateVM            = 0xAE01
	kvmGetVCPUMmapSize     = 0xAE04
	kvmCreateVCPU          = 0xAE41
	kvmRun                 = 0xAE80
	kvmGetRegs             = 0x8090AE81
	kvmSetRegs             = 0x4090AE82
	kvmGetSregs            = 0x8138AE83
	kvmSetSregs            = 0x4138AE84
	kvmSetUserMemoryRegion = 0x4020AE46
	kvmExitHLT             = 5
	kvmExitMMIO            = 6
)

// ProbeKVM runs one guest instruction (hlt) in a throw-away KVM virtual machine. A
// /dev/kvm that opens is not enough: without nested virtualisation a VM's /dev/kvm can
// exist while every guest dies with "KVM internal error". Only a guest that really runs
// proves KVM works, so that is what is checked.
func ProbeKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR|unix.O_CLOEXEC, 0)
	if err != nil {
		return fmt.Errorf("open /dev/kvm: %w", err)
	}
	defer f.Close()
	ioctl := func(fd uintptr, req, arg uintptr) (uintptr, error) {
		r, _, e := unix.Syscall(unix.SYS_IOCTL, fd, req, arg)
		if e != 0 {
			return 0, e
		}
		return r, nil
	}
	if v, err := ioctl(f.Fd(), kvmGetAPIVersion, 0); err != nil || v != 12 {
		return fmt.Errorf("kvm api version %d: %v", v, err)
	}
	vm, err := ioctl(f.Fd(), kvmCreateVM, 0)
	if err != nil {
		return fmt.Errorf("create vm: %w", err)
	}
	defer unix.Close(int(vm))

	const memSize = 0x10000
	mem, err := unix.Mmap(-1, 0, memSize, unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED|unix.MAP_ANONYMOUS)
	if err != nil {
		return fmt.Errorf("mmap guest memory: %w", err)
	}
	defer unix.Munmap(mem)
	// mov [0x8000], al with DS based at 0x10000: a store to unbacked guest memory, so
	// KVM must decode and emulate it as MMIO (where broken nested setups fail with an
	// internal emulation error), then hlt.
	copy(mem[0x1000:], []byte{0xa2, 0x00, 0x80, 0xf4})
	region := make([]byte, 32)
	binary.LittleEndian.PutUint64(region[8:], 0)
	binary.LittleEndian.PutUint64(region[16:], memSize)
	binary.LittleEndian.PutUint64(region[24:], uint64(uintptr(unsafe.Pointer(&mem[0]))))
	if _, err := ioctl(vm, kvmSetUserMemoryRegion, uintptr(unsafe.Pointer(&region[0]))); err != nil {
		return fmt.Errorf("set memory region: %w", err)
	}
	vcpu, err := ioctl(vm, kvmCreateVCPU, 0)
	if err != nil {
		return fmt.Errorf("create vcpu: %w", err)
	}
	defer unix.Close(int(vcpu))
	runSize, err := ioctl(f.Fd(), kvmGetVCPUMmapSize, 0)
	if err != nil {
		return fmt.Errorf("vcpu mmap size: %w", err)
	}
	run, err := unix.Mmap(int(vcpu), 0, int(runSize), unix.PROT_READ|unix.PROT_WRITE, unix.MAP_SHARED)
	if err != nil {
		return fmt.Errorf("mmap vcpu: %w", err)
	}
	defer unix.Munmap(run)

	// Real mode with CS at 0, so the vcpu starts at guest address 0x1000.
	sregs := make([]byte, 0x138)
	if _, err := ioctl(vcpu, kvmGetSregs, uintptr(unsafe.Pointer(&sregs[0]))); err != nil {
		return fmt.Errorf("get sregs: %w", err)
	}
	binary.LittleEndian.PutUint64(sregs[0:], 0)          // cs.base
	binary.LittleEndian.PutUint16(sregs[12:], 0)         // cs.selector
	binary.LittleEndian.PutUint64(sregs[24:], 0x10000)   // ds.base
	binary.LittleEndian.PutUint16(sregs[24+12:], 0x1000) // ds.selector
	if _, err := ioctl(vcpu, kvmSetSregs, uintptr(unsafe.Pointer(&sregs[0]))); err != nil {
		return fmt.Errorf("set sregs: %w", err)
	}
	regs := make([]byte, 0x90)
	binary.LittleEndian.PutUint64(regs[128:], 0x1000) // rip
	binary.LittleEndian.PutUint64(regs[136:], 0x2)    // rflags: reserved bit 1
	if _, err := ioctl(vcpu, kvmSetRegs, uintptr(unsafe.Pointer(&regs[0]))); err != nil {
		return fmt.Errorf("set regs: %w", err)
	}
	for _, want := range []uint32{kvmExitMMIO, kvmExitHLT} {
		if _, err := ioctl(vcpu, kvmRun, 0); err != nil {
			return fmt.Errorf("run: %w", err)
		}
		if reason := binary.LittleEndian.Uint32(run[8:]); reason != want {
			return fmt.Errorf("probe guest exited with reason %d, not %d: KVM cannot run guests here", reason, want)
		}
	}
	return nil
}

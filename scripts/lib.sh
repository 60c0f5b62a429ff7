# Shared set-up for scripts/demo and scripts/test: root, Debian packages, Go, libvirtd.
# Sourced, not run.

die() { echo "dvm: $*" >&2; exit 1; }
say() { echo "== $*" >&2; }

# Packages dvm builds and tests with. libvirt-dev for the cgo binding; qemu and libvirtd
# for real guests; busybox-static, cpio and tini for the lab guest and nodes; iproute2
# and nftables for the lab network; prometheus for promtool; libarchive-tools (bsdtar)
# to read back the cloud-init seeds dvm writes; fdisk (sfdisk), e2fsprogs, mount (a
# loop mount), extlinux, syslinux-common (mbr.bin, ldlinux.c32), isolinux and xorriso
# for the boot disk and install ISO that internal/lab/imagebuild makes for the image
# tests; ceph-mon, ceph-mgr, ceph-osd and ceph-common for the lab's one-node Ceph
# (vmctl lab up --ceph), qemu-block-extra for QEMU's rbd driver.
DVM_PACKAGES="gcc pkg-config libc6-dev libvirt-dev libvirt-daemon-system libvirt-daemon-driver-qemu \
libvirt-clients qemu-system-x86 qemu-utils busybox-static cpio tini iproute2 nftables prometheus \
ca-certificates git vagrant vagrant-libvirt shellcheck libarchive-tools \
fdisk e2fsprogs mount extlinux syslinux-common isolinux xorriso \
ceph-mon ceph-mgr ceph-osd ceph-common qemu-block-extra"

ensure_root() {
	if [ "$(id -u)" -ne 0 ]; then
		if command -v sudo >/dev/null 2>&1; then
			say "re-running as root with sudo (packages, libvirtd and the lab need root)"
			exec sudo -E "$0" "$@"
		fi
		die "needs root (to install packages and run libvirtd and the lab): run as root or install sudo"
	fi
}

ensure_packages() {
	command -v apt-get >/dev/null 2>&1 || die "needs a Debian or Ubuntu machine (apt-get); on others install: $DVM_PACKAGES"
	missing=""
	for p in $DVM_PACKAGES; do
		dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing="$missing $p"
	done
	# The lab's guest kernel is fetched with `apt-get download`, which needs package lists
	# even when every package above is installed already. apt may keep them compressed
	# (Debian 12: *_Packages.lz4).
	if [ -z "$missing" ] && ! ls /var/lib/apt/lists/*_Packages* >/dev/null 2>&1; then
		apt-get update -qq || die "apt-get update failed"
	fi
	if [ -n "$missing" ]; then
		say "installing:$missing"
		export DEBIAN_FRONTEND=noninteractive
		apt-get update -qq || die "apt-get update failed"
		# shellcheck disable=SC2086
		apt-get install -y -qq --no-install-recommends $missing >/dev/null || die "apt-get install failed:$missing"
	fi
}

ensure_go() {
	export PATH="$PATH:/usr/local/go/bin:/root/go/bin"
	command -v go >/dev/null 2>&1 || die "needs Go 1.21 or newer on PATH (go.mod asks for $(awk '/^go /{print $2}' go.mod); a newer toolchain is fetched through the Go module proxy)"
}

# start_libvirtd starts virtlogd and libvirtd when they are not running: with systemd
# through its units, without it (containers, CI) by hand.
start_libvirtd() {
	# Without udev (containers, CI) /dev/kvm stays root-only. QEMU then runs as
	# libvirt-qemu without KVM while libvirtd (root) sees KVM usable, and libvirt throws
	# its capability cache away on every define (seconds each). Set what Debian's udev
	# rule sets on every normal host.
	if [ -c /dev/kvm ] && getent group kvm >/dev/null && [ "$(stat -c %G /dev/kvm)" != kvm ]; then
		chgrp kvm /dev/kvm && chmod 0660 /dev/kvm
	fi
	if [ -d /run/systemd/system ]; then
		virsh -c qemu:///system version >/dev/null 2>&1 ||
			systemctl start virtlogd.socket libvirtd.socket libvirtd.service || true
	else
		# Look at the host's daemons, not at processes: lab nodes run their own daemons
		# in their namespaces, and those must not count. A socket file alone proves
		# nothing either: a virtlogd that died leaves it behind, and every guest start
		# then fails with "Connection refused"; so ask each daemon itself. tini -s adopts
		# and reaps the QEMU processes libvirtd double-forks: where PID 1 does not reap
		# orphans (a container), their zombies otherwise hang libvirtd's next QEMU start.
		mkdir -p /var/log/libvirt
		if ! virt-admin -c virtlogd:///system version >/dev/null 2>&1; then
			setsid tini -s -- virtlogd >>/var/log/libvirt/dvm-virtlogd.log 2>&1 </dev/null &
		fi
		if ! virsh -c qemu:///system version >/dev/null 2>&1; then
			setsid tini -s -- libvirtd >>/var/log/libvirt/dvm-libvirtd.log 2>&1 </dev/null &
		fi
	fi
	for _ in $(seq 1 50); do
		if virsh -c qemu:///system version >/dev/null 2>&1 &&
			{ [ -d /run/systemd/system ] || virt-admin -c virtlogd:///system version >/dev/null 2>&1; }; then
			return
		fi
		sleep 0.2
	done
	die "libvirtd (qemu:///system) or virtlogd does not answer: see /var/log/libvirt/dvm-libvirtd.log and dvm-virtlogd.log"
}

build() {
	say "building dvmd, vmctl and vmctl-lab (vmctl lab) into ./bin"
	mkdir -p bin
	go build -o bin/ ./cmd/dvmd ./cmd/vmctl ./cmd/vmctl-lab || die "go build failed"
}

# bench_profile sets DVM_LAB_SET, the dvmd.conf settings of the benches' lab nodes:
# the fast profile of docs/operator-guide.md section 4 unless PROFILE=default.
bench_profile() {
	case "${PROFILE:-fast}" in
	fast)
		export DVM_LAB_SET="lease_duration=1s lease_margin=350ms renew_interval=150ms fence_grace=150ms max_clock_skew=50ms raft_election_timeout=300ms gossip_probe_interval=200ms gossip_probe_timeout=100ms gossip_suspicion_mult=2"
		;;
	default) export DVM_LAB_SET="" ;;
	*) die "PROFILE=$PROFILE: use fast or default" ;;
	esac
	say "timing profile ${PROFILE:-fast}: ${DVM_LAB_SET:-the defaults of dvmd}"
}

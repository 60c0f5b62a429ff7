#!/usr/bin/env bash
# Provisions one Vagrant lab host (see the Vagrantfile): libvirt and QEMU, dvmd and vmctl
# built from /vagrant, the node's cluster credentials, its dvmd.conf, and dvmd under
# systemd. Safe to run again (vagrant provision): it rewrites the config and restarts dvmd.
#
# Arguments: NAME ADDR BOOTSTRAP RACK NODES TOKEN [DRAGONFLY_URL]
#   NAME       node name (dvm1)            ADDR   its address on the cluster network
#   BOOTSTRAP  true on the one node that forms the cluster, false on the others
#   RACK       its rack label (a failure domain for twins)
#   NODES      every node's address, comma-separated, the bootstrap node first
#   TOKEN      the bootstrap (admin) API token: dvm1 records it at its first start
#   DRAGONFLY_URL  optional: a DragonFly BSD disk image (.img, .img.bz2 or .qcow2) that the
#              bootstrap node makes the image "dragonfly" of every node
# The file provisioner has put the node's credentials in /tmp/dvm-credentials.
set -euo pipefail
[ $# -eq 6 ] || [ $# -eq 7 ] || { echo "usage: provision.sh NAME ADDR BOOTSTRAP RACK NODES TOKEN [DRAGONFLY_URL]" >&2; exit 2; }
name=$1 addr=$2 bootstrap=$3 rack=$4 nodes=$5 token=$6 dragonfly=${7:-}
first=${nodes%%,*} # the bootstrap node: it serves the shared storage

export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends libvirt-daemon-system libvirt-daemon-driver-qemu \
	libvirt-clients libvirt-dev qemu-system-x86 qemu-utils gcc pkg-config golang-go git ca-certificates \
	busybox-static cpio nfs-kernel-server nfs-common bzip2 curl
cd /vagrant
# go.mod names the toolchain; Debian's Go fetches it through the module proxy.
GOTOOLCHAIN=auto go build -o /usr/local/bin/ ./cmd/dvmd ./cmd/vmctl

# Shared storage: guest disks and images at the same path on every node, so a guest with
# failover policy restart starts on another node from its disk. The bootstrap node
# exports /srv/dvm over NFS on the cluster network (no_root_squash: libvirt hands the
# files to QEMU's user); the others mount it, waiting while it is still being set up
# (vagrant-libvirt brings the VMs up in parallel).
install -d /srv/dvm
if [ "$addr" = "$first" ]; then
	install -d /srv/dvm/images /srv/dvm/disks /srv/dvm/locks /etc/exports.d
	echo "/srv/dvm ${addr%.*}.0/24(rw,sync,no_subtree_check,no_root_squash)" >/etc/exports.d/dvm.exports
	systemctl enable --now nfs-server
	exportfs -ra
else
	grep -q ' /srv/dvm ' /etc/fstab || echo "$first:/srv/dvm /srv/dvm nfs _netdev,nofail,hard 0 0" >>/etc/fstab
	systemctl daemon-reload
	for _ in $(seq 180); do
		mountpoint -q /srv/dvm && break
		timeout 60 mount /srv/dvm 2>/dev/null || sleep 5
	done
	mountpoint -q /srv/dvm || { echo "dvm: $first:/srv/dvm did not mount in 15 minutes: is $first provisioned?" >&2; exit 1; }
fi
if [ -n "$dragonfly" ] && [ "$addr" = "$first" ] && [ ! -f /srv/dvm/images/dragonfly/disk.qcow2 ]; then
	install -d /srv/dvm/images/dragonfly
	tmp=$(mktemp -d)
	curl -fL --retry 3 -o "$tmp/image" "$dragonfly"
	case "$dragonfly" in *.bz2) bunzip2 -c "$tmp/image" >"$tmp/image.raw" && mv "$tmp/image.raw" "$tmp/image" ;; esac
	qemu-img convert -O qcow2 "$tmp/image" /srv/dvm/images/dragonfly/disk.qcow2
	rm -rf "$tmp"
fi

# libvirt's lock manager, the second guard on guest disks (docs/operator-guide.md, section
# 1.1): virtlockd holds a lease on every running guest's disk in /srv/dvm/locks, which
# every node sees over NFS; libvirtd is restarted below.
install -m 0644 configs/libvirt/qemu-lockd.conf /etc/libvirt/qemu-lockd.conf
sed -i 's/^#\?lock_manager = .*/lock_manager = "lockd"/' /etc/libvirt/qemu.conf
systemctl enable --now virtlockd.socket virtlockd-admin.socket

# Credentials: the node's certificate and key, the CA certificate, the gossip key.
install -d -m 0700 /etc/dvm /etc/dvm/credentials /var/lib/dvm
src=/tmp/dvm-credentials
[ -f "$src/node-$name.crt" ] || src=/tmp/dvm-credentials/$name # a re-run nests the upload
install -m 0644 "$src/ca.crt" "$src/node-$name.crt" /etc/dvm/credentials/
install -m 0600 "$src/gossip.key" "$src/node-$name.key" /etc/dvm/credentials/
rm -rf /tmp/dvm-credentials
(umask 077; printf '%s\n' "$token" >/var/lib/dvm/token)

# Live migration: dvmd opens the destination's libvirt at advertise_libvirt_uri. In this
# lab that is libvirtd's TCP socket without authentication, bound to the cluster network
# only (forward mode none, no DHCP: only lab hosts are on it). A real cluster uses
# qemu+tls (see docs/operator-guide.md).
sed -i 's/^#\?auth_tcp = .*/auth_tcp = "none"/' /etc/libvirt/libvirtd.conf
install -d /etc/systemd/system/libvirtd-tcp.socket.d
printf '[Socket]\nListenStream=\nListenStream=%s:16509\n' "$addr" >/etc/systemd/system/libvirtd-tcp.socket.d/dvm.conf
systemctl daemon-reload
systemctl stop libvirtd.service || true
systemctl enable --now libvirtd-tcp.socket
systemctl start libvirtd.service

# master: every management node's API, the bootstrap node first (the agent and vmctl
# use the first that answers as master); gossip_peers: every other node.
master="" gossip=""
for p in ${nodes//,/ }; do
	master="${master:+$master,}https://$p:7460"
	[ "$p" = "$addr" ] || gossip="${gossip:+$gossip,}$p:7462"
done
cat >/etc/dvm/dvmd.conf <<EOT
# Written by configs/vagrant/provision.sh; configs/dvmd.conf documents every key.
name = $name
libvirt_uri = qemu:///system
advertise_libvirt_uri = qemu+tcp://$addr/system
listen = $addr:7460
raft_listen = $addr:7461
gossip_listen = $addr:7462
gossip_peers = $gossip
credentials_dir = /etc/dvm/credentials
data_dir = /var/lib/dvm
management = true
bootstrap = $bootstrap
master = $master
images_dir = /srv/dvm/images
disks_dir = /srv/dvm/disks
lockspace_dir = /srv/dvm/locks
labels = rack=$rack
EOT
install -m 0644 configs/systemd/dvmd.service /etc/systemd/system/dvmd.service
# dvmd writes guest disks on the shared storage, which must be mounted first.
install -d /etc/systemd/system/dvmd.service.d
printf '[Unit]\nRequiresMountsFor=/srv/dvm\n[Service]\nReadWritePaths=/srv/dvm\n' >/etc/systemd/system/dvmd.service.d/shared-storage.conf
systemctl daemon-reload
systemctl enable dvmd
systemctl restart dvmd
printf 'DVM_ADDR=%s\nDVM_TOKEN=%s\nDVM_CA=/etc/dvm/credentials/ca.crt\n' "$master" "$token" >/etc/dvm/env
chmod 0600 /etc/dvm/env
echo "dvm: $name provisioned (bootstrap=$bootstrap); dvmd: systemctl status dvmd; API: . /etc/dvm/env"

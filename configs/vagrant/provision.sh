#!/usr/bin/env bash
# Provisions one Vagrant lab host: libvirt, QEMU, Go, dvmd built from /vagrant, a node
# config, and dvmd under systemd. Arguments: NAME ADDR MASTER_ADDR MANAGEMENT RACK TOKEN.
set -euo pipefail
name=$1 addr=$2 master=$3 management=$4 rack=$5 token=$6
export DEBIAN_FRONTEND=noninteractive
apt-get update -qq
apt-get install -y -qq --no-install-recommends libvirt-daemon-system libvirt-daemon-driver-qemu \
	libvirt-clients libvirt-dev qemu-system-x86 qemu-utils gcc pkg-config golang-go git ca-certificates
cd /vagrant
GOTOOLCHAIN=auto go build -o /usr/local/bin/ ./cmd/dvmd ./cmd/vmctl
install -d -m 0700 /var/lib/dvm /etc/dvm
install -d /var/lib/dvm/images /var/lib/dvm/disks
(umask 077; printf '%s\n' "$token" >/var/lib/dvm/token)
cat >/etc/dvm/dvmd.conf <<EOT
name = $name
libvirt_uri = qemu:///system
advertise_libvirt_uri = qemu+ssh://root@$addr/system
listen = $addr:7460
data_dir = /var/lib/dvm
management = $management
master = http://$master:7460
images_dir = /var/lib/dvm/images
disks_dir = /var/lib/dvm/disks
labels = rack=$rack
EOT
install -m 0644 configs/systemd/dvmd.service /etc/systemd/system/dvmd.service
systemctl daemon-reload
systemctl enable --now dvmd
printf 'DVM_ADDR=http://%s:7460\nDVM_TOKEN=%s\n' "$master" "$(cat /var/lib/dvm/token)" >/etc/dvm/env
chmod 0600 /etc/dvm/env

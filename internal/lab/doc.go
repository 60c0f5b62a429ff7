// Package lab runs a cluster of real dvm nodes on one Linux machine: the lab.
//
// Each node (n1 … n7) is a set of Linux namespaces (mount, net, uts, pid) started
// with `unshare … tini -- DIR/nodes/nK/node.sh`. tini is PID 1 of the node and reaps
// the orphans of libvirtd; killing it ends every process of the node at once, like a
// power loss. Inside, the node has its own /run, /dev/shm, /etc/hosts, /etc/libvirt,
// /var/lib/libvirt, /var/log/libvirt and /var/cache/libvirt (bind mounts of
// directories under DIR/nodes/nK), its own virtlogd and libvirtd (listening on
// qemu+tcp://10.77.0.(10+K)/system) and, unless Options.NoAgent, the dvmd agent.
//
// The nodes are joined by the bridge dvmlab0 (10.77.0.1/24) in the root namespace,
// one veth pair per node (dvmlab-nK in the root namespace, eth0 in the node). Faults
// are made with an nftables table of the lab's own (bridge family, "dvmlab"), by
// killing a node's PID 1 (Kill), and by stopping every process of its PID namespace
// with SIGSTOP (Pause) until SIGCONT (Resume). Package faults (internal/lab/faults)
// chains them into seeded schedules and checks what dvm promises; package imagebuild
// (internal/lab/imagebuild) makes bootable disk images and install ISOs from the lab
// guest's kernel and busybox, for tests of images and installs.
// DIR/shared/images and DIR/shared/disks are the same path in every node and stand in
// for shared storage.
//
// Files. Everything the lab writes lives under DIR (default DefaultDir,
// /var/lib/dvm-lab): lab.json (the state read by Load), token, env, and per node
// nodes/nK/{node.sh,node.log,dvmd.conf,dvmd.log,data,etc,lib,log,cache,run}. The one
// exception, on purpose, is the guest image cache in DefaultImageCache
// (/var/cache/dvm/lab-image): the kernel package download and the built initramfs,
// shared by every lab so that `lab up` does not rebuild them. Down leaves no process,
// namespace, link, nftables table or mount behind; DIR stays, with its logs, until
// the next Up in the same DIR or Purge.
//
// Only one lab runs on a machine at a time: the bridge name and the 10.77.0.0/24
// range are fixed, so that the addresses in docs, env files and tests are stable.
package lab

package agent

import (
	"fmt"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/config"
)

// Storage pools (dvmd.conf's pool.NAME keys): a guest assigned with a pool has its
// disks there instead of disks_dir. A dir or shared pool is a libvirt directory pool
// (hypervisor.DirPool); an rbd pool is a Ceph pool QEMU reaches with its own librbd,
// authenticated by a libvirt secret holding the pool's cephx key.

// ensurePools prepares every pool of the node at start: the directory pools defined
// and started, the rbd pools' secrets defined from their keyrings. A pool that cannot
// be prepared stops dvmd with an error naming it.
func ensurePools(cfg Config) error {
	for _, p := range cfg.Pools {
		switch p.Kind {
		case config.PoolDir, config.PoolShared:
			if err := cfg.Node.EnsureDirPool(hypervisor.DirPool(p.Name), p.Path); err != nil {
				return fmt.Errorf("storage pool %s: %w", p.Name, err)
			}
		case config.PoolRBD:
			key, err := hypervisor.ReadKeyring(p.Keyring)
			if err != nil {
				return fmt.Errorf("storage pool %s: %w (the keyring option of pool.%s names the cephx user's keyring)", p.Name, err, p.Name)
			}
			if err := cfg.Node.EnsureRBDSecret(rbdSecret(p.Name), key); err != nil {
				return fmt.Errorf("storage pool %s: %w", p.Name, err)
			}
		}
	}
	return nil
}

// rbdSecret is the usage name of the libvirt secret of rbd pool name.
func rbdSecret(name string) string { return "dvm-pool-" + name }

func rbdOf(p config.Pool) hypervisor.RBD {
	return hypervisor.RBD{Monitors: p.Monitors, Pool: p.RBDPool, Client: p.Client, Keyring: p.Keyring, Secret: rbdSecret(p.Name)}
}

// poolKinds is what the node reports of its pools: kind by name.
func poolKinds(pools []config.Pool) map[string]string {
	if len(pools) == 0 {
		return nil
	}
	out := make(map[string]string, len(pools))
	for _, p := range pools {
		out[p.Name] = p.Kind
	}
	return out
}

// guestPool is the pool a guest is assigned with; an error names a pool this node
// lacks (the master places a guest only on nodes that report its pool, so this
// means the node's dvmd.conf changed since).
func (a *Agent) guestPool(g api.AssignedGuest) (config.Pool, error) {
	for _, p := range a.cfg.Pools {
		if p.Name == g.Pool {
			return p, nil
		}
	}
	return config.Pool{}, fmt.Errorf("guest %q has its disks on storage pool %q, which node %s does not have: add pool.%s to its dvmd.conf, or move the guest", g.Name, g.Pool, a.cfg.Name, g.Pool)
}

// ensurePoolDisk makes disk i of g on its pool, or finds it made, and returns it as
// the domain names it.
func (a *Agent) ensurePoolDisk(g api.AssignedGuest, i int, size int64, base *hypervisor.Base) (hypervisor.Disk, error) {
	p, err := a.guestPool(g)
	if err != nil {
		return hypervisor.Disk{}, err
	}
	if p.Kind == config.PoolRBD {
		r := rbdOf(p)
		if base != nil && i == 0 {
			a.cfg.Log.Info("copying image into rbd pool (qemu-img convert)", "guest", g.Name, "image", base.Path, "pool", p.Name)
		}
		if err := r.EnsureImage(g.Name, i, size, base); err != nil {
			return hypervisor.Disk{}, fmt.Errorf("storage pool %s: %w", p.Name, err)
		}
		return r.Disk(g.Name, i), nil
	}
	path, err := a.cfg.Node.EnsureDiskIn(hypervisor.DirPool(p.Name), g.Name, i, size, base)
	if err != nil {
		return hypervisor.Disk{}, fmt.Errorf("storage pool %s: %w", p.Name, err)
	}
	return hypervisor.Disk{Path: path, Format: "qcow2"}, nil
}

// deletePoolDisks removes g's disks from its pool.
func (a *Agent) deletePoolDisks(g api.AssignedGuest) error {
	p, err := a.guestPool(g)
	if err != nil {
		return err
	}
	if p.Kind == config.PoolRBD {
		return rbdOf(p).DeleteImages(g.Name)
	}
	return a.cfg.Node.DeleteDisksIn(hypervisor.DirPool(p.Name), g.Name)
}

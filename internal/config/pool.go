package config

import (
	"fmt"
	"net"
	"path/filepath"
	"sort"
	"strings"

	"github.com/dvmproject/dvm/internal/api"
)

// Storage pool kinds: where a pool's guest disks are.
const (
	// PoolDir is a directory of the node's own: its guests' disks are on that node
	// only, so a guest on it stays there (no restart elsewhere, no live migration).
	PoolDir = "dir"
	// PoolShared is a directory every node mounts at the same path (NFS, CephFS).
	PoolShared = "shared"
	// PoolRBD is a Ceph RBD pool, reached through QEMU's own librbd.
	PoolRBD = "rbd"
)

// Pool is a storage pool a node names: `pool.NAME = kind=KIND,…` in dvmd.conf.
type Pool struct {
	Name string
	Kind string // PoolDir, PoolShared or PoolRBD
	Path string // dir and shared: the directory
	// rbd: the monitors (host:port), the Ceph pool, the cephx user (without
	// "client.") and the node's keyring file for it.
	Monitors []string
	RBDPool  string
	Client   string
	Keyring  string
}

// poolKeyPrefix starts every storage pool's key.
const poolKeyPrefix = "pool."

// parsePool reads `pool.NAME = kind=…,…`.
func parsePool(name, val string) (Pool, error) {
	if fe := api.ValidateName("pool", name); fe != nil {
		return Pool{}, fmt.Errorf("pool name %q: %s", name, fe.Msg)
	}
	p := Pool{Name: name}
	seen := map[string]bool{}
	for _, kv := range strings.Split(val, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		k, v = strings.TrimSpace(k), strings.TrimSpace(v)
		if !ok || k == "" || v == "" {
			return Pool{}, fmt.Errorf("%q is not option=value: write kind=dir,path=/srv/dvm/disks, kind=shared,path=…, or kind=rbd,monitors=HOST:6789,rbd_pool=…,client=…,keyring=…", kv)
		}
		if seen[k] {
			return Pool{}, fmt.Errorf("option %s given twice", k)
		}
		seen[k] = true
		var err error
		switch k {
		case "kind":
			if v != PoolDir && v != PoolShared && v != PoolRBD {
				return Pool{}, fmt.Errorf("kind %q is not dir, shared or rbd", v)
			}
			p.Kind = v
		case "path":
			p.Path, err = absPath(v)
		case "monitors":
			for _, m := range strings.Split(v, ";") {
				m = strings.TrimSpace(m)
				if _, port, err := net.SplitHostPort(m); err != nil || port == "" {
					return Pool{}, fmt.Errorf("monitor %q is not host:port (such as 10.0.0.5:6789; several separated by ';')", m)
				}
				p.Monitors = append(p.Monitors, m)
			}
		case "rbd_pool":
			p.RBDPool = v
			if strings.ContainsAny(v, "/@: ") {
				return Pool{}, fmt.Errorf("rbd_pool %q: a Ceph pool name has no '/', '@', ':' or space", v)
			}
		case "client":
			p.Client = strings.TrimPrefix(v, "client.")
			if strings.ContainsAny(p.Client, ":,; ") {
				return Pool{}, fmt.Errorf("client %q: a cephx user name has no ':', ',', ';' or space", v)
			}
		case "keyring":
			p.Keyring, err = absPath(v)
		default:
			return Pool{}, fmt.Errorf("unknown option %q: a pool has kind, and path (dir, shared) or monitors, rbd_pool, client and keyring (rbd)", k)
		}
		if err != nil {
			return Pool{}, fmt.Errorf("%s: %w", k, err)
		}
	}
	need := func(opts ...string) error {
		var miss []string
		for _, o := range opts {
			if !seen[o] {
				miss = append(miss, o)
			}
		}
		if len(miss) > 0 {
			return fmt.Errorf("a pool of kind %s needs %s", p.Kind, strings.Join(miss, ", "))
		}
		return nil
	}
	only := func(opts ...string) error {
		for o := range seen {
			if o != "kind" && !contains(opts, o) {
				return fmt.Errorf("option %s is not for a pool of kind %s", o, p.Kind)
			}
		}
		return nil
	}
	switch p.Kind {
	case "":
		return Pool{}, fmt.Errorf("kind is required: dir (a directory of this node), shared (a directory every node mounts) or rbd (Ceph)")
	case PoolDir, PoolShared:
		if err := need("path"); err != nil {
			return Pool{}, err
		}
		if err := only("path"); err != nil {
			return Pool{}, err
		}
	case PoolRBD:
		if err := need("monitors", "rbd_pool", "client", "keyring"); err != nil {
			return Pool{}, err
		}
		if err := only("monitors", "rbd_pool", "client", "keyring"); err != nil {
			return Pool{}, err
		}
	}
	return p, nil
}

func contains(s []string, v string) bool {
	for _, x := range s {
		if x == v {
			return true
		}
	}
	return false
}

// PoolKinds is every pool's kind by name, as the node reports them to the master.
func (n *Node) PoolKinds() map[string]string {
	if len(n.Pools) == 0 {
		return nil
	}
	out := make(map[string]string, len(n.Pools))
	for _, p := range n.Pools {
		out[p.Name] = p.Kind
	}
	return out
}

// Pool returns the pool called name.
func (n *Node) Pool(name string) (Pool, bool) {
	for _, p := range n.Pools {
		if p.Name == name {
			return p, true
		}
	}
	return Pool{}, false
}

// checkPools refuses two pools on one directory: a guest's disks in one would be
// another's too.
func (n *Node) checkPools() error {
	sort.Slice(n.Pools, func(i, j int) bool { return n.Pools[i].Name < n.Pools[j].Name })
	dirs := map[string]string{}
	for _, p := range n.Pools {
		if p.Path == "" {
			continue
		}
		if o, dup := dirs[filepath.Clean(p.Path)]; dup {
			return fmt.Errorf("pools %s and %s are both at %s: give each its own directory", o, p.Name, p.Path)
		}
		dirs[filepath.Clean(p.Path)] = p.Name
	}
	return nil
}

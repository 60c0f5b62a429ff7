// Package store keeps the cluster's desired state: nodes, guests and their placements.
// Changes are small commands applied in order, each raising the store's index; readers
// wait on the index (blocking queries). The commands are what a replicated log carries:
// this package applies them to a bbolt file on one node, and the same Apply is the state
// machine a raft log feeds.
package store

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"sort"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
)

// NodeRecord is a node the cluster knows.
type NodeRecord struct {
	Name          string            `json:"name"`
	Address       string            `json:"address"`
	LibvirtURI    string            `json:"libvirt_uri"`
	Accelerator   string            `json:"accelerator"`
	HostCPUs      int               `json:"host_cpus"`
	HostMemory    int64             `json:"host_memory_bytes"`
	CPUs          int               `json:"cpus"`
	MemoryBytes   int64             `json:"memory_bytes"`
	Labels        map[string]string `json:"labels,omitempty"`
	Unschedulable bool              `json:"unschedulable,omitempty"`
	Draining      bool              `json:"draining,omitempty"`
	RegisteredAt  time.Time         `json:"registered_at"`
}

// GuestRecord is a guest the cluster keeps, with where it runs and what is wanted of it.
type GuestRecord struct {
	Name          string            `json:"name"`
	UUID          string            `json:"uuid"`
	OS            string            `json:"os"`
	CPUs          int               `json:"cpus"`
	MemoryBytes   int64             `json:"memory_bytes"`
	DiskBytes     int64             `json:"disk_bytes"`
	Image         string            `json:"image,omitempty"`
	Failover      string            `json:"failover"`
	Constraints   map[string]string `json:"constraints,omitempty"`
	Desired       string            `json:"desired"` // running, stopped, deleted
	Node          string            `json:"node,omitempty"`
	TwinNode      string            `json:"twin_node,omitempty"`
	MigrateTo     string            `json:"migrate_to,omitempty"`
	PendingReason string            `json:"pending_reason,omitempty"`
	LastMigration json.RawMessage   `json:"last_migration,omitempty"`
	CreatedAt     time.Time         `json:"created_at"`
}

// Desired states of a guest.
const (
	DesiredRunning = "running"
	DesiredStopped = "stopped"
	DesiredDeleted = "deleted"
)

// Op is a kind of command.
type Op string

const (
	OpPutNode     Op = "put_node"
	OpDeleteNode  Op = "delete_node"
	OpPutGuest    Op = "put_guest"
	OpDeleteGuest Op = "delete_guest"
)

// Command is one change. Commands are applied in order and must be deterministic: the
// same commands give the same state on every node that applies them.
type Command struct {
	Op    Op           `json:"op"`
	Node  *NodeRecord  `json:"node,omitempty"`
	Guest *GuestRecord `json:"guest,omitempty"`
	Name  string       `json:"name,omitempty"` // for deletes
}

// ErrConflict: a guest with that name already exists.
var ErrConflict = errors.New("already exists")

var (
	bucketNodes  = []byte("nodes")
	bucketGuests = []byte("guests")
	bucketMeta   = []byte("meta")
	keyIndex     = []byte("index")
)

// Store is the cluster state of one node, persisted in a bbolt file.
type Store struct {
	db *bolt.DB

	mu      sync.RWMutex
	index   uint64
	nodes   map[string]*NodeRecord
	guests  map[string]*GuestRecord
	changed chan struct{} // closed and replaced on every apply
}

// Open loads the store from path, creating it when missing.
func Open(path string) (*Store, error) {
	db, err := bolt.Open(path, 0o600, &bolt.Options{Timeout: 2 * time.Second})
	if err != nil {
		return nil, fmt.Errorf("open state file %s: %w (is another dvmd using it?)", path, err)
	}
	s := &Store{db: db, nodes: map[string]*NodeRecord{}, guests: map[string]*GuestRecord{}, changed: make(chan struct{})}
	err = db.Update(func(tx *bolt.Tx) error {
		for _, b := range [][]byte{bucketNodes, bucketGuests, bucketMeta} {
			if _, err := tx.CreateBucketIfNotExists(b); err != nil {
				return err
			}
		}
		if v := tx.Bucket(bucketMeta).Get(keyIndex); v != nil {
			if err := json.Unmarshal(v, &s.index); err != nil {
				return fmt.Errorf("index: %w", err)
			}
		}
		if err := tx.Bucket(bucketNodes).ForEach(func(k, v []byte) error {
			var n NodeRecord
			if err := json.Unmarshal(v, &n); err != nil {
				return fmt.Errorf("node %s: %w", k, err)
			}
			s.nodes[n.Name] = &n
			return nil
		}); err != nil {
			return err
		}
		return tx.Bucket(bucketGuests).ForEach(func(k, v []byte) error {
			var g GuestRecord
			if err := json.Unmarshal(v, &g); err != nil {
				return fmt.Errorf("guest %s: %w", k, err)
			}
			s.guests[g.Name] = &g
			return nil
		})
	})
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("load state file %s: %w", path, err)
	}
	return s, nil
}

// Close closes the file.
func (s *Store) Close() error { return s.db.Close() }

// Apply persists and applies commands as one step, raising the index by one.
func (s *Store) Apply(cmds ...Command) (uint64, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	next := s.index + 1
	err := s.db.Update(func(tx *bolt.Tx) error {
		for _, c := range cmds {
			if err := persist(tx, c); err != nil {
				return err
			}
		}
		v, _ := json.Marshal(next)
		return tx.Bucket(bucketMeta).Put(keyIndex, v)
	})
	if err != nil {
		return 0, fmt.Errorf("write state: %w", err)
	}
	for _, c := range cmds {
		s.apply(c)
	}
	s.index = next
	close(s.changed)
	s.changed = make(chan struct{})
	return next, nil
}

func persist(tx *bolt.Tx, c Command) error {
	switch c.Op {
	case OpPutNode:
		v, err := json.Marshal(c.Node)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketNodes).Put([]byte(c.Node.Name), v)
	case OpDeleteNode:
		return tx.Bucket(bucketNodes).Delete([]byte(c.Name))
	case OpPutGuest:
		v, err := json.Marshal(c.Guest)
		if err != nil {
			return err
		}
		return tx.Bucket(bucketGuests).Put([]byte(c.Guest.Name), v)
	case OpDeleteGuest:
		return tx.Bucket(bucketGuests).Delete([]byte(c.Name))
	}
	return fmt.Errorf("unknown command %q", c.Op)
}

func (s *Store) apply(c Command) {
	switch c.Op {
	case OpPutNode:
		n := *c.Node
		s.nodes[n.Name] = &n
	case OpDeleteNode:
		delete(s.nodes, c.Name)
	case OpPutGuest:
		g := *c.Guest
		s.guests[g.Name] = &g
	case OpDeleteGuest:
		delete(s.guests, c.Name)
	}
}

// Index is the index of the last applied change.
func (s *Store) Index() uint64 {
	s.mu.RLock()
	defer s.mu.RUnlock()
	return s.index
}

// Wait blocks until the index passes after, or ctx ends, and returns the index then.
func (s *Store) Wait(ctx context.Context, after uint64) uint64 {
	for {
		s.mu.RLock()
		idx, ch := s.index, s.changed
		s.mu.RUnlock()
		if idx > after {
			return idx
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return idx
		}
	}
}

// Node returns a copy of a node record.
func (s *Store) Node(name string) (NodeRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	n, ok := s.nodes[name]
	if !ok {
		return NodeRecord{}, false
	}
	return *n, true
}

// Guest returns a copy of a guest record.
func (s *Store) Guest(name string) (GuestRecord, bool) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	g, ok := s.guests[name]
	if !ok {
		return GuestRecord{}, false
	}
	return *g, true
}

// Snapshot returns copies of all nodes and guests, sorted by name, and the index they
// were read at.
func (s *Store) Snapshot() ([]NodeRecord, []GuestRecord, uint64) {
	s.mu.RLock()
	defer s.mu.RUnlock()
	nodes := make([]NodeRecord, 0, len(s.nodes))
	for _, n := range s.nodes {
		nodes = append(nodes, *n)
	}
	guests := make([]GuestRecord, 0, len(s.guests))
	for _, g := range s.guests {
		guests = append(guests, *g)
	}
	sort.Slice(nodes, func(i, j int) bool { return nodes[i].Name < nodes[j].Name })
	sort.Slice(guests, func(i, j int) bool { return guests[i].Name < guests[j].Name })
	return nodes, guests, s.index
}

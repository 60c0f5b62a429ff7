package api

import "time"

// SnapshotRestored answers PUT /v1/cluster/snapshot: what the snapshot held, and the
// adoption that follows the restore.
type SnapshotRestored struct {
	SnapshotIndex   uint64    `json:"snapshot_index"`
	SnapshotTakenAt time.Time `json:"snapshot_taken_at"`
	SnapshotVersion string    `json:"snapshot_version"`
	Nodes           int       `json:"nodes"`
	Guests          int       `json:"guests"`
	Networks        int       `json:"networks"`
	Tokens          int       `json:"tokens"`
	Adoption        Adoption  `json:"adoption"`
}

// Adoption is the cluster taking in the guests its nodes run after a restore: until
// every node of the restored state has reported (its running guests are then adopted
// where they run) or been declared lost, the master starts, places and moves no guest.
type Adoption struct {
	Adopting        bool      `json:"adopting"`
	RestoredAt      time.Time `json:"restored_at"`
	SnapshotIndex   uint64    `json:"snapshot_index"`
	SnapshotTakenAt time.Time `json:"snapshot_taken_at"`
	SnapshotVersion string    `json:"snapshot_version"`
	// Awaiting are the nodes not heard from yet.
	Awaiting []string `json:"awaiting"`
	// Deadline is when awaited nodes that hold no lease are declared lost.
	Deadline time.Time `json:"deadline"`
	DoneAt   time.Time `json:"done_at,omitzero"`
}

// HeaderSnapshotIndex names, on GET /v1/cluster/snapshot's answer, the raft index
// the snapshot was taken at.
const HeaderSnapshotIndex = "Dvm-Snapshot-Index"

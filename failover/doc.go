// Package failover is dvm's role machine: who manages the cluster, and when a
// node may be declared lost. It is a pure state machine in the style of
// etcd-io/raft: one Machine per node is fed Events (ticks, probe results,
// health reports, raft leadership, messages from other Machines) and returns
// Actions (promote, demote, replace voter, declare lost, fence, re-form, send a
// message). It does no I/O and reads no clock, so every role change can be
// replayed from a trace; see README.md and testdata/.
//
// Safety rests on leases. Every registered node grants a lease to at most one
// holder at a time, and a holder (master or semi-master) acts only while it
// holds unexpired leases from a majority of all registered nodes, so two
// holders can never act at once. A node runs its HA guests only while a lease
// it granted to an acting master is fresh; when that lapses it fences itself,
// before any master may declare it lost.
package failover

// Package depcheck holds no code: its test enforces which way imports run in dvm, the
// rules of docs/architecture.md and the design brief, read from `go list -deps`:
//
//   - vmctl links no libvirt, raft, memberlist or other cgo: it is one static program
//     for Linux and macOS, and talks to the cluster only through internal/api.
//   - scheduler/ and failover/ are pure policy: the standard library only, and no
//     I/O (no os, net or syscall), so they can be simulated and fuzzed.
//   - hypervisor/ and netplane/ decide no policy and know no HTTP.
//   - internal/api, the client every program uses, stays free of cgo, raft and
//     memberlist too.
//   - the lab (internal/lab) is a test rig: only vmctl-lab, the lab's own packages and
//     the end-to-end tests import it, never dvmd or vmctl.
package depcheck

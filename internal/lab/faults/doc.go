// Package faults runs seeded fault schedules on a lab and checks what an outside
// observer can check of dvm's promises.
//
// It is a package of its own, beside the lab it drives, because both `vmctl lab faults
// run` (on a lab an operator brought up) and the end-to-end tests (internal/e2e, on a
// lab of their own) run it; test helpers in internal/e2e could serve only the tests.
//
// A schedule (Plan) is drawn from a seed alone: kill, pause, cut (a node from every
// peer), cut-link (two nodes from each other), heal, resume and restart, with waits
// between them, never more than fewer-than-half the nodes down at once, then a finale
// that resumes, heals and restarts whatever is left. Run starts from a cluster every
// node agrees on, with a running guest of each failover policy (two restart guests: one
// with a disk on the shared storage, where libvirt's lock manager guards against a
// second copy, one without, where fencing alone does), and carries the schedule out
// while a writer creates guests through the API (stopped ones, and two running restart
// guests). It checks:
//
//   - twice: a guest runs on at most one node at every sample. Every node is sampled
//     every 100 ms: its libvirtd is asked (qemu+tcp) which domains run; a node whose
//     libvirtd does not answer within the sample (a paused node's libvirtd is stopped
//     too) is read from /proc instead: a QEMU process of the guest in that node's PID
//     namespace that is not stopped by a signal counts as running there, since it runs
//     guest code whatever libvirt would say. A killed node runs nothing.
//   - two-masters: at most one master accepts writes at a time. Every answer of the
//     master names it and the raft generation and term it answered in (Dvm-Master,
//     Dvm-Generation, Dvm-Term; the term only when it did not change during the
//     request). Two acknowledged writes overlapping in time prove nothing by
//     themselves: the first master may have been replaced between them. What is a
//     violation: two masters acknowledging writes in the same generation and term
//     (raft allows one leader a term, and one group a generation), or a master
//     acknowledging a write in an older (generation, term) after another acknowledged
//     one in a newer — the answer of the newer came before the request of the older
//     was sent, so the older master accepted a write after it had been replaced.
//   - lost-write: every create answered 201 or 202 is listed at each checkpoint (after
//     every heal, resume and restart, and at the end). A list counts only when it
//     comes from a master of a (generation, term) at least as new as the write's (a
//     master newer than a write has all writes committed before it); a guest missing
//     is looked for again for a few seconds, since a new master may not have applied
//     its whole log when it answers the first time.
//   - stuck: after the finale, a master accepts writes within WriteBound, and every
//     guest with failover restart runs (per the samples) within RestartBound.
//
// The schedule, each step as it runs, and the verdict are printed; a failing verdict
// names the command that replays the schedule.
package faults

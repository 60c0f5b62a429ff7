package failover

import (
	"fmt"
	"slices"
	"time"
)

// DurableCopies is how many management nodes' raft logs must hold a client
// write before the master acknowledges it (every management-capable node, when
// the cluster has fewer): losing the master and a backup at once, the loss the
// seed plans for, then leaves a copy on a node whose vote a re-formation needs,
// and the group re-forms from the furthest log among its voters (tickSemi). With
// fewer management nodes in reach the master refuses client writes rather than
// acknowledge what two losses could take away; its own writes (recovery of a lost
// node's guests) need only raft's commit, since fencing, not durability, keeps
// those safe.
const DurableCopies = 3

// retryRaft is how long the machine waits for the replica to show a raft duty
// done before it asks again.
const retryRaft = 2 * time.Second

// joinAfter is how long a replica hears from no raft leader, while an acting
// master of its generation speaks to the node, before it asks to be taken in: a
// master that declared it lost removed it from raft, and its own copy of the
// configuration cannot tell it so.
const joinAfter = 5 * time.Second

// AckCopies is how many replicas (this one included) must hold a client write
// before this master acknowledges it: DurableCopies, or every
// management-capable node registered when there are fewer.
func (m *Machine) AckCopies() int {
	k := 0
	for _, n := range m.view.Nodes {
		if n.Capable {
			k++
		}
	}
	return max(1, min(DurableCopies, k))
}

// epochCurrent reports whether the replica belongs to the raft group of the
// view (a first cluster's replica may not have recorded its epoch yet).
func (m *Machine) epochCurrent() bool {
	return m.hasReplica && (m.replica.Epoch == m.view.Epoch || m.replica.Epoch == 0 && m.view.Epoch == 1)
}

// raftDuties reads the replica's report: raft's leadership of the view's
// generation is news for the roles (scenario 4), and the machine tells raft what
// the role table needs of it. Each duty is asked again until the replica shows it
// done, so a lost or failed attempt is not the end of it.
func (m *Machine) raftDuties() {
	if m.now.IsZero() || m.shutDown {
		return
	}
	self, r, v := m.cfg.Self, m.replica, &m.view
	if r.Leader != "" || m.leaderSilent.IsZero() {
		m.leaderSilent = m.now
	}
	masterHeard := m.seen.master == v.Master && m.seen.generation == v.Generation && m.now.Sub(m.seen.at) < m.cfg.LeaseDuration
	if (m.epochCurrent() || r.Epoch == 0) && v.Master != self && masterHeard &&
		m.now.Sub(m.leaderSilent) >= joinAfter && m.now.Sub(m.joinAt) >= retryRaft {
		m.joinAt = m.now
		m.emit(Join{Generation: v.Epoch})
	}
	if !m.epochCurrent() {
		switch {
		case r.Epoch > v.Epoch:
			// The replica joined a newer group; the view follows with that group's
			// first lease request.
		case v.Master == self && m.role == RoleMaster:
			// This node re-formed the group: its replica starts the new raft
			// group from its own log.
			if m.now.Sub(m.reformAt) >= retryRaft {
				m.reformed, m.reformAt = v.Epoch, m.now
				m.emit(ReForm{Generation: v.Epoch, Voters: slices.Clone(v.Voters)})
			}
		case r.Epoch != 0 && masterHeard:
			// An acting master of the newer group speaks for it: this replica
			// moves to that group, keeping its log until the new one replaces it.
			if m.rejoined < v.Epoch || m.now.Sub(m.rejoinAt) >= retryRaft {
				m.rejoined, m.rejoinAt = v.Epoch, m.now
				m.emit(Rejoin{Generation: v.Epoch})
			}
		}
		return
	}
	if r.Leader != "" {
		m.leaderObserved(r.Leader, r.Term)
	}
	if r.Leader == self || m.role != RoleMaster {
		m.ledRaft = m.now
	}
	if wait := m.cfg.LeaseDuration + 2*m.cfg.ConfirmTimeout; m.role == RoleMaster && m.now.Sub(m.ledRaft) >= wait && m.now.Sub(m.since) >= wait {
		// A master that raft has not let lead for this long writes nothing: its
		// replica is out of raft's configuration, or behind the voters. It gives
		// the role up; raft's leader takes it once this master's leases have run
		// out (scenario 4), or the survivors re-form.
		m.merge(r.Leader, fmt.Sprintf("raft's leadership stayed elsewhere for %v", wait))
		return
	}
	if m.role == RoleMaster && r.Leader != "" && r.Leader != self && !slices.Contains(r.Voters, self) {
		// Raft's configuration gives this master no vote (its server was removed
		// while it was held lost, before it won the majority lease again): it can
		// never lead raft nor write. It gives the role up; raft's leader, a voter,
		// takes it once this master's leases have run out (scenario 4).
		m.merge(r.Leader, "raft's configuration has no vote for this master")
		return
	}
	if r.Leader != self {
		return
	}
	if to, ok := m.MasterToLead(); ok {
		if m.now.Sub(m.handedBack) >= retryRaft {
			m.handedBack = m.now
			m.emit(TransferLeadership{To: to})
		}
		return
	}
	if m.role != RoleMaster || !m.Acting() {
		return
	}
	m.syncMembership()
	m.reconcileLost()
}

// syncMembership makes raft's configuration follow the role table: the view's
// voters vote (once they have joined the log), no other server votes, and the
// servers of nodes declared lost, or removed from the table, are removed (a node
// taken in again joins anew).
// Raft's elections then only ever pick a master or backup of the table.
func (m *Machine) syncMembership() {
	r, v := m.replica, &m.view
	var promote, remove []string
	for _, voter := range v.Voters {
		if slices.Contains(r.Servers, voter) && !slices.Contains(r.Voters, voter) {
			promote = append(promote, voter)
		}
	}
	demote := false
	for _, s := range r.Voters {
		if !slices.Contains(v.Voters, s) {
			demote = true
		}
	}
	for _, s := range r.Servers {
		if role := v.Role(s); (role == RoleLost || role == RoleOnHold || role == "") && !slices.Contains(v.Voters, s) {
			remove = append(remove, s)
		}
	}
	if len(promote) == 0 && !demote && len(remove) == 0 {
		return
	}
	// Sooner than the other duties: until every voter of the table votes in raft,
	// raft may hang on fewer voters than the table shows (two, of which one dies).
	if m.now.Sub(m.synced) < m.cfg.RenewInterval {
		return
	}
	m.synced = m.now
	m.emit(SetMembership{Voters: slices.Clone(v.Voters), Remove: remove})
}

// reconcileLost keeps the replicated state's record of lost nodes equal to the
// role table's: a node the table holds lost (or on hold) whose loss is not
// recorded is declared lost again (its guests are recovered in the same write
// that records it), and a node taken in again whose loss is still recorded is
// readmitted there. One-shot hooks would lose either to a master change or a
// failed write; this asks until the replica shows it.
func (m *Machine) reconcileLost() {
	for _, n := range m.view.Nodes {
		recorded := slices.Contains(m.replica.Lost, n.Name)
		lost := n.Role == RoleLost || n.Role == RoleOnHold
		switch {
		case lost && !recorded && m.now.Sub(m.declaredAt[n.Name]) >= retryRaft && m.mayDeclareLost():
			m.declaredAt[n.Name] = m.now
			m.emit(DeclareLost{Node: n.Name, Why: "lost in the role table; its recovery is not in the replicated state yet"})
		case !lost && recorded && m.now.Sub(m.readmit[n.Name]) >= retryRaft:
			m.readmit[n.Name] = m.now
			m.emit(Readmit{Node: n.Name})
		}
	}
}

// lossRecorded reports whether the replicated state records node as lost, as
// this master's replica (leading raft in the view's generation) says. A node is
// taken in again only then: until its guests' recovery is written, an assignment
// could still name them on it. A machine fed no replica (no raft) skips the check.
func (m *Machine) lossRecorded(node string) bool {
	if !m.hasReplica {
		return true
	}
	return m.epochCurrent() && m.replica.Leader == m.cfg.Self && slices.Contains(m.replica.Lost, node)
}

package e2e

import (
	"encoding/json"
	"os"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"libvirt.org/go/libvirt"
)

// TestRebalanceMovesGuestsLive is issue 15's rebalance on real libvirtd nodes: four
// guests gathered on one node, `vmctl cluster rebalance --dry-run` plans moves and
// changes nothing, then `vmctl cluster rebalance` makes them by live migration. Each
// moved guest's QEMU was migrated, not restarted: libvirt says its domain on the new
// node runs because it migrated there, a new QEMU process replaced the old one, and the
// guest's own console counts on (one boot, its tick counter never starting over); the
// guests that stayed keep their domain ID and QEMU process. No sample of every node's
// libvirtd ever saw a guest running on two nodes. A second rebalance finds nothing to
// move.
func TestRebalanceMovesGuestsLive(t *testing.T) {
	c := upCluster(t, 3)
	node := c.victim(t)
	guests := []string{"bal1", "bal2", "bal3", "bal4"}
	c.gatherOn(t, node, guests...)
	// A few ticks first, so that a guest started anew (its counter from 1 again) would
	// show.
	for _, g := range guests {
		c.waitTicking(t, node, g)
		waitFor(t, g+" at its third tick", 30*time.Second, func() bool { return c.console(g).last >= 3 })
	}

	t.Logf("vmctl cluster rebalance --dry-run:\n%s", c.run("cluster", "rebalance", "--dry-run"))
	var plan api.RebalancePlan
	if err := json.Unmarshal([]byte(c.run("-o", "json", "cluster", "rebalance", "--dry-run")), &plan); err != nil {
		t.Fatal(err)
	}
	// Four 1-CPU guests on one node of three: two leave it (2, 1, 1), a third would only
	// make another node the most used.
	if len(plan.Moves) != 2 || plan.Before.Hot != node || plan.After.Spread >= plan.Before.Spread {
		t.Fatalf("plan %+v: want two moves off %s", plan, node)
	}
	type qemu struct {
		id     uint
		reason int
		pid    int
	}
	// look finds g's QEMU on node on, once it is the only one on the machine (a migrated
	// guest's source QEMU may take a moment to end).
	look := func(on, g string) qemu {
		t.Helper()
		var pids []int
		waitFor(t, "one QEMU of "+g, 10*time.Second, func() bool { pids = qemuOf(g); return len(pids) == 1 })
		id, reason, ok := c.domainRun(on, g)
		if !ok {
			t.Fatalf("%s does not run on %s", g, on)
		}
		return qemu{id, reason, pids[0]}
	}
	before := map[string]qemu{}
	ticks := map[string]int{}
	for _, g := range guests {
		if got := c.guest(g); got.Node != node || got.LastMigration != nil {
			t.Fatalf("the dry run changed %s: %+v", g, got)
		}
		before[g] = look(node, g)
		if before[g].reason != int(libvirt.DOMAIN_RUNNING_BOOTED) {
			t.Fatalf("%s: libvirt's reason %d, want booted", g, before[g].reason)
		}
		ticks[g] = c.console(g).last
	}

	s := c.startSampler(guests...)
	out := c.run("cluster", "rebalance")
	t.Logf("vmctl cluster rebalance:\n%s", out)
	s.finish(t)

	var moved []string
	for _, g := range guests {
		got := c.guest(g)
		if got.State != api.GuestRunning {
			t.Fatalf("%s after the rebalance: %+v", g, got)
		}
		if got.Node == node {
			now := look(node, g)
			if now != before[g] {
				t.Fatalf("%s stayed on %s but its QEMU changed: %+v, was %+v", g, node, now, before[g])
			}
			t.Logf("%s stayed on %s: domain id %d and QEMU pid %d unchanged", g, node, now.id, now.pid)
			continue
		}
		moved = append(moved, g)
		if m := got.LastMigration; m == nil || !m.OK || m.From != node || m.To != got.Node {
			t.Fatalf("%s on %s: last migration %+v", g, got.Node, got.LastMigration)
		}
		if !strings.Contains(out, "guest "+g+" "+node+" -> "+got.Node+": migrated in ") {
			t.Fatalf("vmctl did not show %s's move", g)
		}
		if _, ok := c.domainState(node, g); ok {
			t.Fatalf("%s is still defined on %s, which it left", g, node)
		}
		now := look(got.Node, g)
		if now.reason != int(libvirt.DOMAIN_RUNNING_MIGRATED) || now.pid == before[g].pid {
			t.Fatalf("%s on %s: libvirt's reason %d (want %d, migrated), QEMU pid %d (was %d)",
				g, got.Node, now.reason, libvirt.DOMAIN_RUNNING_MIGRATED, now.pid, before[g].pid)
		}
		// The guest runs on: its tick counter goes past where it was, never from 1 again.
		var con consoleTicks
		waitFor(t, g+" ticking on "+got.Node, 30*time.Second, func() bool {
			con = c.console(g)
			return con.last > ticks[g]+2
		})
		if con.boots != 1 || con.resets > 0 {
			t.Fatalf("%s's console: %d boots, its tick counter started over %d times; a migration keeps the guest running", g, con.boots, con.resets)
		}
		t.Logf("%s moved live %s -> %s: libvirt says running (migrated), domain id %d -> %d, QEMU pid %d -> %d; its console, one boot, counted on from tick %d to %d",
			g, node, got.Node, before[g].id, now.id, before[g].pid, now.pid, ticks[g], con.last)
	}
	if len(moved) != len(plan.Moves) {
		t.Fatalf("moved %v, the plan had %d moves", moved, len(plan.Moves))
	}
	if ev := c.run("events"); strings.Count(ev, "rebalance: moved to ") != len(moved) {
		t.Fatalf("events:\n%s\nwant one \"rebalance: moved to\" per move", ev)
	}
	if again := c.run("cluster", "rebalance"); !strings.Contains(again, "nothing to move") {
		t.Fatalf("a second rebalance: %s", again)
	}
}

// domainRun asks a node's libvirtd for a running domain's ID and the reason libvirt
// gives for its running (booted, migrated, ...); ok is false unless it runs there.
func (c *cluster) domainRun(node, name string) (id uint, reason int, ok bool) {
	c.t.Helper()
	c.withDomain(node, name, func(d *libvirt.Domain) {
		st, r, err := d.GetState()
		if err != nil || st != libvirt.DOMAIN_RUNNING {
			return
		}
		id, err = d.GetID()
		reason, ok = r, err == nil
	})
	return id, reason, ok
}

// consoleTicks is what a lab guest printed on its serial console, in every node's
// console directory (a migrated QEMU goes on writing where its domain says, a guest
// started anew writes in its node's).
type consoleTicks struct {
	boots  int // "dvm-lab-guest: up" lines: the guest's init started
	last   int // the highest tick
	resets int // times a file's tick counter went down
}

var tickLine = regexp.MustCompile(`dvm-lab-guest: tick (\d+)`)

func (c *cluster) console(guest string) consoleTicks {
	var out consoleTicks
	for _, n := range c.lab.Nodes() {
		b, err := os.ReadFile(consolePath(c.lab, n.Name, guest))
		if err != nil {
			continue
		}
		out.boots += strings.Count(string(b), "dvm-lab-guest: up")
		prev := 0
		for _, m := range tickLine.FindAllStringSubmatch(string(b), -1) {
			k, _ := strconv.Atoi(m[1])
			if k < prev {
				out.resets++
			}
			prev = k
			out.last = max(out.last, k)
		}
	}
	return out
}

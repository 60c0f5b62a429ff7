package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/peerlab"
	"libvirt.org/go/libvirt"
)

// peerPoll is how often both sides' surviving libvirtds are asked whether the guests
// run again: the same interval, the same calls (the libvirt binding, connections made
// before the kill), so that observing costs both the same.
const peerPoll = 20 * time.Millisecond

// peerBound is how long either side may take to recover before the bench fails.
const peerBound = 60 * time.Second

// bestCorosync is Pacemaker's best configuration measured here (8 alternated runs a
// side each, 1 guest, this bench, 2-core machine): token 500 ms with token_coefficient
// 0, median 2.53 s (p90 2.68). Token 1000 ms, coefficient 0 (LAB-FACTS.md's best, 3.6 s
// there) gave 3.73 s (p90 4.32) in the same bench; Corosync's default timing is slower
// still (9.6 s in LAB-FACTS.md). Token 300 ms detected a kill sooner (0.6 s) but is
// not usable on this machine: twice in two tries Corosync lost the token between
// live hosts under load, the membership split, and with fencing off the guest was
// found active on two hosts ("Multiple items match request") or the DC changed
// mid-run. 500 ms is the lowest token that held in every run. Pacemaker's default
// load-threshold (80%) throttled its recovery to one start at a time on this busy
// machine: with 3 guests a run its median went from 4.48 s to 2.27 s without it (see
// peerlab.LoadThreshold).
var bestCorosync = peerlab.Corosync{TokenMS: 500, TokenCoefficient: intp(0)}

// bestCorosyncWhy says, in the bench's output, why that configuration is the one used.
const bestCorosyncWhy = "Pacemaker's best here: token 1000 was slower (3.73 s median vs 2.53 s), token 300 split the membership between live hosts under load; the default load-threshold throttled 3 guests' starts to one at a time"

func intp(v int) *int { return &v }

// corosyncFromEnv is bestCorosync, or DVM_PEER_TOKEN (ms; "default" for Corosync's)
// and DVM_PEER_TOKEN_COEFFICIENT (ms; "default" for Corosync's) when set: for trying
// other configurations.
func corosyncFromEnv(t *testing.T) peerlab.Corosync {
	c := bestCorosync
	if s := os.Getenv("DVM_PEER_TOKEN"); s == "default" {
		c.TokenMS = 0
	} else if s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 100 {
			t.Fatalf("DVM_PEER_TOKEN=%q: give a token timeout in ms (100 or more) or default", s)
		}
		c.TokenMS = n
	}
	if s := os.Getenv("DVM_PEER_TOKEN_COEFFICIENT"); s == "default" {
		c.TokenCoefficient = nil
	} else if s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 {
			t.Fatalf("DVM_PEER_TOKEN_COEFFICIENT=%q: give ms or default", s)
		}
		c.TokenCoefficient = &n
	}
	return c
}

// killToRunning connects to the surviving nodes' libvirtds (by URI), then calls kill
// and polls them every peerPoll until each guest runs on one of them. It returns the
// time from just before kill to the first poll that saw them all running, and fails
// the test when that takes longer than peerBound.
func killToRunning(t *testing.T, side string, survivors []string, guests []string, kill func() error) (time.Duration, time.Time) {
	t.Helper()
	var conns []*libvirt.Connect
	for _, uri := range survivors {
		c, err := libvirt.NewConnect(uri)
		if err != nil {
			t.Fatalf("%s: connect %s: %v", side, uri, err)
		}
		defer c.Close()
		conns = append(conns, c)
	}
	running := func() bool {
		for _, g := range guests {
			on := false
			for _, c := range conns {
				d, err := c.LookupDomainByName(g)
				if err != nil {
					continue
				}
				st, _, err := d.GetState()
				d.Free()
				if err == nil && st == libvirt.DOMAIN_RUNNING {
					on = true
					break
				}
			}
			if !on {
				return false
			}
		}
		return true
	}
	killed := time.Now()
	if err := kill(); err != nil {
		t.Fatalf("%s: kill: %v", side, err)
	}
	for {
		now := time.Now()
		if running() {
			return now.Sub(killed), killed
		}
		if now.Sub(killed) > peerBound {
			t.Fatalf("%s: %v not running on a surviving node %s after the kill", side, guests, peerBound)
		}
		time.Sleep(peerPoll)
	}
}

// phases3 is where a recovery's time went. For dvm, from the master's events: kill to
// the node declared lost (failure detection and the node's lease running out), to the
// recovery placement written, to the guests seen running (the node's agent starting
// them, libvirt and QEMU). For Pacemaker, from the DC's logs: kill to Corosync's new
// membership without the host, to the DC initiating the starts, to the guests seen
// running (VirtualDomain's virsh define and start).
type phases3 struct{ detect, place, start time.Duration }

// phasesOf reads the events after seq and splits the run that killed node at killed
// and saw the guests running at done.
func (c *cluster) phasesOf(t *testing.T, node string, guests []string, killed, done time.Time) phases3 {
	t.Helper()
	dec := json.NewDecoder(strings.NewReader(c.run("-o", "json", "events")))
	var lost, placed time.Time
	want := map[string]bool{}
	for _, g := range guests {
		want[g] = true
	}
	for dec.More() {
		var e api.Event
		if err := dec.Decode(&e); err != nil {
			t.Fatalf("vmctl -o json events: %v", err)
		}
		if e.Time.Before(killed) {
			continue
		}
		switch {
		case e.Kind == "node-lost" && e.Node == node && lost.IsZero():
			lost = e.Time
		case e.Kind == "recovery" && want[e.Guest] && e.Time.After(placed):
			placed = e.Time
		}
	}
	if lost.IsZero() || placed.IsZero() {
		t.Fatalf("events after the kill of %s lack node-lost (%v) or recovery of %v (%v)", node, lost, guests, placed)
	}
	return phases3{detect: lost.Sub(killed), place: placed.Sub(lost), start: done.Sub(placed)}
}

// phaseMedians is the median of each phase.
func phaseMedians(ps []phases3) (detect, place, start time.Duration) {
	var d, p, s []time.Duration
	for _, x := range ps {
		d, p, s = append(d, x.detect), append(p, x.place), append(s, x.start)
	}
	return median(d), median(p), median(s)
}

func median(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return s[len(s)/2]
}

// p90 is the nearest-rank 90th percentile.
func p90(ds []time.Duration) time.Duration {
	s := append([]time.Duration(nil), ds...)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	k := (9*len(s) + 9) / 10 // ceil(0.9 n)
	return s[k-1]
}

// TestRecoveryBesidePacemaker is the recovery bench against the peer: a dvm lab and a
// Pacemaker lab (package peerlab: Corosync, VirtualDomain, fencing off) up at once on
// hosts of the same kind, the same guest (the lab image, 1 vCPU, 96 MiB, dvm's domain
// definition) and the same kill (SIGKILL to the PID 1 of the host running it, never
// the master or the DC), dvm's run i then Pacemaker's run i. Each is timed from the
// kill to the guests running on a surviving host as those libvirtds say, polled alike.
// DVM_PEER_RUNS=N runs it (N runs a side); DVM_PEER_GUESTS the guests per run (1).
func TestRecoveryBesidePacemaker(t *testing.T) {
	if os.Getenv("DVM_PEER_RUNS") == "" {
		t.Skip("the recovery bench against Pacemaker runs with DVM_PEER_RUNS=N (scripts/bench-recovery)")
	}
	runs := runsFromEnv(t, "DVM_PEER_RUNS")
	nguests := 1
	if s := os.Getenv("DVM_PEER_GUESTS"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 || n > 3 {
			t.Fatalf("DVM_PEER_GUESTS=%q: 1 to 3", s)
		}
		nguests = n
	}
	coro := corosyncFromEnv(t)
	c := upCluster(t, 3) // holds the machine's lab lock until both labs are down
	ctx := context.Background()
	peer, err := peerlab.Up(ctx, peerlab.Options{Dir: t.TempDir(), Corosync: coro, Log: testLog{t}})
	if err != nil {
		t.Fatalf("peer lab up: %v", err)
	}
	t.Cleanup(func() {
		if t.Failed() || os.Getenv("DVM_E2E_KEEP_LOGS") == "1" {
			keep := filepath.Join(os.TempDir(), "dvm-e2e-logs", t.Name())
			if err := peer.KeepLogs(keep); err != nil {
				t.Logf("peer lab logs: %v", err)
			} else {
				t.Logf("peer lab logs kept in %s", keep)
			}
		}
		if err := peer.Down(context.Background()); err != nil {
			t.Errorf("peer lab down: %v", err)
		}
	})
	t.Logf("Pacemaker: corosync %s, stonith-enabled=false, resource-stickiness=100, load-threshold=%s; %d guest(s) a run on each side", coro, peerlab.LoadThreshold, nguests)

	dvmVictim := c.victim(t)
	var dvmT, pcmkT []time.Duration
	var phases, pphases []phases3
	for run := 0; run < runs; run++ {
		// dvm: fresh guests gathered on the victim, as TestKillNodeRestartsItsGuests does.
		var guests []string
		for g := 0; g < nguests; g++ {
			guests = append(guests, fmt.Sprintf("d%d%c", run, 'a'+g))
		}
		c.gatherOn(t, dvmVictim, guests...)
		var survivors []string
		for _, n := range c.lab.Nodes() {
			if n.Name != dvmVictim {
				survivors = append(survivors, n.LibvirtURI)
			}
		}
		d, killed := killToRunning(t, "dvm", survivors, guests, func() error { return c.lab.Kill(dvmVictim) })
		ph := c.phasesOf(t, dvmVictim, guests, killed, killed.Add(d))
		dvmT, phases = append(dvmT, d), append(phases, ph)
		t.Logf("run %d: dvm %.2f s (detection+lease %.2f, placement %.2f, start %.2f)", run+1, d.Seconds(), ph.detect.Seconds(), ph.place.Seconds(), ph.start.Seconds())

		// Pacemaker: the same number of guests, on a host that is not the DC.
		st, err := peer.Status(ctx)
		if err != nil {
			t.Fatal(err)
		}
		victim := ""
		for _, n := range peer.Nodes() {
			if n.Name != st.DC {
				victim = n.Name
				break
			}
		}
		var pguests []string
		for g := 0; g < nguests; g++ {
			name := fmt.Sprintf("peer%c", 'a'+g)
			pguests = append(pguests, name)
			if _, ok := st.Resources[name]; !ok {
				err = peer.AddGuest(ctx, name, victim, 1, 96<<20)
			} else {
				err = peer.MoveGuest(ctx, name, victim, false)
			}
			if err != nil {
				t.Fatal(err)
			}
		}
		survivors = survivors[:0]
		for _, n := range peer.Nodes() {
			if n.Name != victim {
				survivors = append(survivors, n.LibvirtURI)
			}
		}
		p, pkilled := killToRunning(t, "Pacemaker", survivors, pguests, func() error { return peer.Kill(ctx, victim) })
		member, start, err := peer.Timeline(st.DC, pkilled, pguests)
		if err != nil {
			t.Fatalf("Pacemaker's timeline from the DC's logs: %v", err)
		}
		pph := phases3{detect: member.Sub(pkilled), place: start.Sub(member), start: pkilled.Add(p).Sub(start)}
		pcmkT, pphases = append(pcmkT, p), append(pphases, pph)
		t.Logf("run %d: Pacemaker %.2f s (host %s killed, DC %s; membership without it %.2f, start initiated %.2f, start %.2f)",
			run+1, p.Seconds(), victim, st.DC, pph.detect.Seconds(), pph.place.Seconds(), pph.start.Seconds())
		if run == 0 {
			// For the reader to see the two sides ran the same guest.
			var dvmURIs, peerURIs []string
			for _, n := range c.lab.Nodes() {
				if n.PID != 0 {
					dvmURIs = append(dvmURIs, n.LibvirtURI)
				}
			}
			for _, n := range peer.Nodes() {
				if n.PID != 0 {
					peerURIs = append(peerURIs, n.LibvirtURI)
				}
			}
			t.Logf("dvm's domain of %s:\n%s", guests[0], runningXML(dvmURIs, guests[0]))
			t.Logf("Pacemaker's domain of %s:\n%s", pguests[0], runningXML(peerURIs, pguests[0]))
		}

		// Both clusters whole again before the next run. dvm's guests are deleted once
		// the node is back: with a voter down, a write is not acknowledged (exit 3).
		c.run("lab", "restart", dvmVictim, "--dir", c.lab.Dir())
		if err := peer.Restart(ctx, victim); err != nil {
			t.Fatal(err)
		}
		c.waitNodeBack(t, dvmVictim)
		for _, g := range guests {
			c.run("vm", "delete", g)
		}
	}
	dm, pm := median(dvmT), median(pcmkT)
	why := bestCorosyncWhy
	if coro.String() != bestCorosync.String() {
		why = "set by DVM_PEER_TOKEN / DVM_PEER_TOKEN_COEFFICIENT, not the best configuration (" + bestCorosync.String() + ")"
	}
	dvmFencing := "the lease alone (declared lost lease_duration + lease_margin after the last grant)"
	if c.lab.PowerFenced() {
		dvmFencing = "the lease, and the lab's power switch through each node's power_fence_agent (declared lost once the switch confirms the node off)"
	}
	t.Logf("FIGURE dvm fencing: %s; dvmd.conf adds %s", dvmFencing, os.Getenv("DVM_LAB_SET"))
	t.Logf("FIGURE Pacemaker config: corosync %s, stonith-enabled=false, resource-stickiness=100, load-threshold=%s (%s)", coro, peerlab.LoadThreshold, why)
	t.Logf("FIGURE kill to %d guest(s) running elsewhere, %d runs a side, alternated: dvm median %.2f s p90 %.2f s; Pacemaker median %.2f s p90 %.2f s; ratio dvm/Pacemaker medians %.2f",
		nguests, runs, dm.Seconds(), p90(dvmT).Seconds(), pm.Seconds(), p90(pcmkT).Seconds(), dm.Seconds()/pm.Seconds())
	det, plc, sta := phaseMedians(phases)
	t.Logf("FIGURE dvm phases, medians: kill to node-lost (detection, then the lease or the power switch) %.2f s; node-lost to recovery placement %.2f s; placement to running %.2f s",
		det.Seconds(), plc.Seconds(), sta.Seconds())
	det, plc, sta = phaseMedians(pphases)
	t.Logf("FIGURE Pacemaker phases, medians: kill to Corosync membership without the host %.2f s; to the DC initiating the start %.2f s; start to running %.2f s",
		det.Seconds(), plc.Seconds(), sta.Seconds())
}

// testLog sends the peer lab's step lines to the test log.
type testLog struct{ t *testing.T }

func (w testLog) Write(p []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(p), "\n"))
	return len(p), nil
}

// runningXML is the live domain definition of guest on whichever of nodes runs it.
func runningXML(uris []string, guest string) string {
	for _, uri := range uris {
		c, err := libvirt.NewConnect(uri)
		if err != nil {
			continue
		}
		d, err := c.LookupDomainByName(guest)
		if err == nil {
			x, err := d.GetXMLDesc(0)
			d.Free()
			c.Close()
			if err == nil {
				return x
			}
			continue
		}
		c.Close()
	}
	return "(not found)"
}

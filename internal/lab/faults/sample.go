package faults

import (
	"fmt"
	"sort"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"libvirt.org/go/libvirt"

	"github.com/dvmproject/dvm/internal/lab"
)

// sampleAnswer bounds how long a sample waits for a node's libvirtd before it reads
// the node from /proc: a paused node's libvirtd never answers, and a loaded one on a
// 2-core machine can take a while.
const sampleAnswer = 500 * time.Millisecond

// Sampler asks every node, every interval, which guests run there (see the package
// doc for how a node that does not answer counts), and records every sample in which
// a guest runs on two nodes. Run uses one; tests that make faults of their own can
// too.
type Sampler struct {
	lab      *lab.Lab
	interval time.Duration
	probes   map[string]*probe

	mu       sync.Mutex
	samples  int
	fromProc int // node samples read from /proc
	twice    []string
	twiceN   int
	// running is, for every guest, where the last sample saw it run and since when it
	// has been running without a break.
	running map[string]seen

	stop chan struct{}
	done chan struct{}
}

type seen struct {
	nodes []string
	since time.Time
}

// StartSampler starts sampling every node of l every interval, until Stop.
func StartSampler(l *lab.Lab, interval time.Duration) *Sampler {
	s := &Sampler{lab: l, interval: interval, probes: map[string]*probe{}, running: map[string]seen{},
		stop: make(chan struct{}), done: make(chan struct{})}
	for _, n := range l.Nodes() {
		s.probes[n.Name] = &probe{uri: n.LibvirtURI}
	}
	go s.run()
	return s
}

func (s *Sampler) run() {
	defer close(s.done)
	t := time.NewTicker(s.interval)
	defer t.Stop()
	for {
		s.sample()
		select {
		case <-s.stop:
			return
		case <-t.C:
		}
	}
}

// sample takes one sample of every node at once.
func (s *Sampler) sample() {
	at := time.Now()
	nodes := s.lab.Nodes()
	type obs struct {
		node    string
		running []string
		proc    bool
	}
	out := make([]obs, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		out[i].node = n.Name
		if n.PID == 0 {
			continue // killed: its QEMUs died with it
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			if !n.Paused {
				if names, ok := s.probes[n.Name].running(sampleAnswer); ok {
					out[i].running = names
					return
				}
			}
			out[i].proc = true
			qemus, _ := s.lab.NodeQEMUs(n.Name)
			for _, q := range qemus {
				if !q.Stopped {
					out[i].running = append(out[i].running, q.Guest)
				}
			}
		}()
	}
	wg.Wait()
	where := map[string][]string{}
	s.mu.Lock()
	defer s.mu.Unlock()
	s.samples++
	for _, o := range out {
		if o.proc {
			s.fromProc++
		}
		for _, g := range o.running {
			label := o.node
			if o.proc {
				label += " (from /proc)"
			}
			where[g] = append(where[g], label)
		}
	}
	for g, nodes := range where {
		sort.Strings(nodes)
		if len(nodes) > 1 {
			s.twiceN++
			if len(s.twice) < 20 {
				s.twice = append(s.twice, fmt.Sprintf("%s %s on %s", at.Format("15:04:05.000"), g, strings.Join(nodes, " and ")))
			}
		}
		if prev, ok := s.running[g]; ok {
			s.running[g] = seen{nodes: nodes, since: prev.since}
		} else {
			s.running[g] = seen{nodes: nodes, since: at}
		}
	}
	for g := range s.running {
		if _, ok := where[g]; !ok {
			delete(s.running, g)
		}
	}
}

// runningSince says whether guest ran in the last sample, and since when without a
// break.
func (s *Sampler) runningSince(guest string) (time.Time, bool) {
	s.mu.Lock()
	defer s.mu.Unlock()
	r, ok := s.running[guest]
	return r.since, ok
}

// SampleReport is what a Sampler saw.
type SampleReport struct {
	Samples  int // of every node
	FromProc int // node samples read from /proc: the node was paused or its libvirtd did not answer
	Twice    int // samples in which a guest ran on two nodes
	Examples []string
}

// Stop ends the sampling and reports.
func (s *Sampler) Stop() SampleReport {
	select {
	case <-s.stop:
	default:
		close(s.stop)
	}
	<-s.done
	for _, p := range s.probes {
		p.close()
	}
	return s.Report()
}

// Report is what the sampler saw so far.
func (s *Sampler) Report() SampleReport {
	s.mu.Lock()
	defer s.mu.Unlock()
	return SampleReport{Samples: s.samples, FromProc: s.fromProc, Twice: s.twiceN, Examples: append([]string(nil), s.twice...)}
}

// probe asks one node's libvirtd which domains run. A call that does not answer in
// time is left to finish in the background (libvirt's calls cannot be cancelled);
// until it does, the node is read from /proc.
type probe struct {
	uri  string
	busy atomic.Bool
	mu   sync.Mutex
	conn *libvirt.Connect
}

func (p *probe) running(timeout time.Duration) ([]string, bool) {
	if !p.busy.CompareAndSwap(false, true) {
		return nil, false
	}
	type result struct {
		names []string
		err   error
	}
	ch := make(chan result, 1)
	go func() {
		defer p.busy.Store(false)
		names, err := p.list()
		ch <- result{names, err}
	}()
	select {
	case r := <-ch:
		return r.names, r.err == nil
	case <-time.After(timeout):
		return nil, false
	}
}

// list returns the domains that libvirtd says are running.
func (p *probe) list() ([]string, error) {
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.conn == nil {
		c, err := libvirt.NewConnect(p.uri)
		if err != nil {
			return nil, err
		}
		p.conn = c
	}
	doms, err := p.conn.ListAllDomains(libvirt.CONNECT_LIST_DOMAINS_ACTIVE)
	if err != nil {
		// A restarted or killed node: connect again next time.
		p.conn.Close()
		p.conn = nil
		return nil, err
	}
	var names []string
	var firstErr error
	for i := range doms {
		name, err := doms[i].GetName()
		st, _, serr := doms[i].GetState()
		doms[i].Free()
		if err == nil && serr == nil && st == libvirt.DOMAIN_RUNNING {
			names = append(names, name)
		}
		if serr != nil && firstErr == nil && !isNoDomain(serr) {
			firstErr = serr
		}
	}
	return names, firstErr
}

// isNoDomain: the domain ended between the listing and the question.
func isNoDomain(err error) bool {
	lerr, ok := err.(libvirt.Error)
	return ok && lerr.Code == libvirt.ERR_NO_DOMAIN
}

func (p *probe) close() {
	// A call still stuck on a paused node holds mu; leave that connection to it.
	if !p.mu.TryLock() {
		return
	}
	defer p.mu.Unlock()
	if p.conn != nil {
		p.conn.Close()
		p.conn = nil
	}
}

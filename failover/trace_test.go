package failover_test

import (
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/failover"
	"github.com/dvmproject/dvm/failover/failovertest"
)

var rewrite = flag.Bool("rewrite", false, "rewrite the expected output of testdata/*.txt traces with the actual output")

// block is one command of a trace file: text before it (comments, blank
// lines), the command line, its input lines, and the expected output.
type block struct {
	pre      []string
	line     int
	cmd      string
	input    []string
	expected []string
}

// parseTrace reads the datadriven format: a command line, input lines, a
// "----" line, then the expected output up to a blank line.
func parseTrace(path string) ([]block, []string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, nil, err
	}
	lines := strings.Split(strings.TrimRight(string(data), "\n"), "\n")
	var blocks []block
	var pre []string
	for i := 0; i < len(lines); i++ {
		l := lines[i]
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "#") {
			pre = append(pre, l)
			continue
		}
		b := block{pre: pre, line: i + 1, cmd: l}
		pre = nil
		for i++; i < len(lines) && lines[i] != "----"; i++ {
			b.input = append(b.input, lines[i])
		}
		if i == len(lines) {
			return nil, nil, fmt.Errorf("%s:%d: command %q has no ---- line", path, b.line, b.cmd)
		}
		for i++; i < len(lines) && lines[i] != ""; i++ {
			b.expected = append(b.expected, lines[i])
		}
		blocks = append(blocks, b)
	}
	return blocks, pre, nil
}

func TestTraces(t *testing.T) {
	files, err := filepath.Glob("testdata/*.txt")
	if err != nil || len(files) == 0 {
		t.Fatalf("no traces in testdata: %v", err)
	}
	for _, path := range files {
		t.Run(strings.TrimSuffix(filepath.Base(path), ".txt"), func(t *testing.T) {
			blocks, tail, err := parseTrace(path)
			if err != nil {
				t.Fatal(err)
			}
			h := &harness{}
			var out strings.Builder
			for _, b := range blocks {
				got, err := h.do(b.cmd, b.input)
				if err != nil {
					t.Fatalf("%s:%d: %s: %v", path, b.line, b.cmd, err)
				}
				if !*rewrite && strings.Join(got, "\n") != strings.Join(b.expected, "\n") {
					t.Errorf("%s:%d: %s\nexpected:\n%s\ngot:\n%s", path, b.line, b.cmd,
						strings.Join(b.expected, "\n"), strings.Join(got, "\n"))
				}
				for _, l := range b.pre {
					out.WriteString(l + "\n")
				}
				out.WriteString(b.cmd + "\n")
				for _, l := range b.input {
					out.WriteString(l + "\n")
				}
				out.WriteString("----\n")
				for _, l := range got {
					out.WriteString(l + "\n")
				}
				out.WriteString("\n")
			}
			for _, l := range tail {
				out.WriteString(l + "\n")
			}
			if *rewrite {
				if err := os.WriteFile(path, []byte(strings.TrimRight(out.String(), "\n")+"\n"), 0o644); err != nil {
					t.Fatal(err)
				}
			}
		})
	}
}

type harness struct {
	c   *failovertest.Cluster
	cfg failover.Config
	log []string
}

// args splits "k=v" words; bare words are returned in order.
func args(words []string) (map[string]string, []string) {
	kv := map[string]string{}
	var bare []string
	for _, w := range words {
		if k, v, ok := strings.Cut(w, "="); ok {
			kv[k] = v
		} else {
			bare = append(bare, w)
		}
	}
	return kv, bare
}

func list(s string) []string {
	if s == "" {
		return nil
	}
	return strings.Split(s, ",")
}

func duration(kv map[string]string, k string, d *time.Duration) error {
	if s, ok := kv[k]; ok {
		v, err := time.ParseDuration(s)
		if err != nil {
			return fmt.Errorf("%s=%q: %w", k, s, err)
		}
		*d = v
	}
	return nil
}

// parseHealth reads "network=0.9 cpu=0.8 disk=0.5 uptime=10h downtime=1h";
// unset scores are 0.9, unset uptime 24h.
func parseHealth(kv map[string]string) (failover.HealthReport, error) {
	h := failover.HealthReport{Network: 0.9, CPU: 0.9, Disk: 0.9, Uptime: 24 * time.Hour}
	for k, p := range map[string]*float64{"network": &h.Network, "cpu": &h.CPU, "disk": &h.Disk} {
		if s, ok := kv[k]; ok {
			v, err := strconv.ParseFloat(s, 64)
			if err != nil {
				return h, fmt.Errorf("%s=%q: not a number", k, s)
			}
			*p = v
		}
	}
	if err := duration(kv, "uptime", &h.Uptime); err != nil {
		return h, err
	}
	return h, duration(kv, "downtime", &h.Downtime)
}

func (h *harness) run(d time.Duration) ([]string, error) {
	err := h.c.Run(d)
	if len(h.log) == 0 {
		return []string{"(nothing)"}, err
	}
	return h.log, err
}

// do runs one command. Commands that change the cluster print the records
// they caused.
func (h *harness) do(cmd string, input []string) ([]string, error) {
	h.log = nil
	out, err := h.do1(cmd, input)
	if out == nil {
		out = h.log
	}
	return out, err
}

func (h *harness) do1(cmd string, input []string) ([]string, error) {
	words := strings.Fields(cmd)
	kv, bare := args(words[1:])
	if words[0] != "cluster" && words[0] != "rank" && h.c == nil {
		return nil, fmt.Errorf("no cluster yet: start with a cluster command")
	}
	switch words[0] {
	case "cluster":
		return h.cluster(kv, input)
	case "run":
		if len(bare) != 1 {
			return nil, fmt.Errorf("usage: run DURATION")
		}
		d, err := time.ParseDuration(bare[0])
		if err != nil {
			return nil, err
		}
		return h.run(d)
	case "roles":
		return strings.Split(h.c.Table(), "\n"), nil
	case "converged":
		if err := h.c.Converged(); err != nil {
			return []string{"no: " + err.Error()}, nil
		}
		return []string{"yes"}, nil
	case "kill", "revive", "pause", "resume", "deregister", "stop", "hand-over":
		f := map[string]func(string) error{"kill": h.c.Kill, "revive": h.c.Revive, "pause": h.c.Pause, "resume": h.c.Resume,
			"deregister": h.c.Deregister, "stop": h.c.Stop, "hand-over": h.c.HandOver}[words[0]]
		for _, n := range bare {
			if err := f(n); err != nil {
				return nil, err
			}
		}
		return nil, nil
	case "hold", "release":
		// hold: messages wait to be delivered or dropped one by one; release:
		// those waiting go out with the next step, and the rest as usual.
		h.c.Hold(words[0] == "hold")
		return []string{"ok"}, nil
	case "msgs":
		var out []string
		for _, m := range h.c.Held() {
			out = append(out, m.String())
		}
		if len(out) == 0 {
			return []string{"(none)"}, nil
		}
		return out, nil
	case "deliver", "drop":
		// deliver|drop [from=N] [to=N] [type=T]: the held messages that match,
		// oldest first; what delivering them causes is printed, and what the
		// nodes send in turn is held too.
		if len(bare) > 0 {
			return nil, fmt.Errorf("usage: %s [from=NODE] [to=NODE] [type=lease|lease-grant|vote|vote-grant|refuse]", words[0])
		}
		f := failovertest.MsgFilter{From: kv["from"], To: kv["to"], Type: failover.MsgType(kv["type"])}
		var n int
		if words[0] == "deliver" {
			n = h.c.Deliver(f)
		} else {
			n = h.c.Drop(f)
		}
		return append([]string{fmt.Sprintf("%s %d (%s)", words[0], n, f)}, h.log...), h.c.Err()
	case "guests":
		return []string{h.c.Guests()}, nil
	case "raft":
		return []string{h.c.RaftSummary()}, nil
	case "cut-one-way":
		if len(bare) != 2 {
			return nil, fmt.Errorf("usage: cut-one-way FROM TO")
		}
		return nil, h.c.CutOneWay(bare[0], bare[1])
	case "cut", "heal":
		if words[0] == "heal" && len(bare) == 0 {
			h.c.HealAll()
			return nil, nil
		}
		if len(bare) != 2 {
			return nil, fmt.Errorf("usage: %s NODE NODE", words[0])
		}
		if words[0] == "cut" {
			return nil, h.c.Cut(bare[0], bare[1])
		}
		return nil, h.c.Heal(bare[0], bare[1])
	case "partition":
		var groups [][]string
		for _, g := range bare {
			groups = append(groups, list(g))
		}
		return nil, h.c.Partition(groups...)
	case "health":
		if len(bare) != 1 {
			return nil, fmt.Errorf("usage: health NODE network=X cpu=X disk=X [uptime=D downtime=D]")
		}
		rep, err := parseHealth(kv)
		if err != nil {
			return nil, err
		}
		return nil, h.c.SetHealth(bare[0], rep)
	case "flap":
		// flap A B every=D for=D: the link goes down and up every D.
		if len(bare) != 2 {
			return nil, fmt.Errorf("usage: flap NODE NODE every=D for=D")
		}
		var every, total time.Duration
		if err := duration(kv, "every", &every); err != nil {
			return nil, err
		}
		if err := duration(kv, "for", &total); err != nil {
			return nil, err
		}
		if every <= 0 || total <= 0 {
			return nil, fmt.Errorf("flap needs every= and for= durations")
		}
		for at, down := time.Duration(0), true; at < total; at, down = at+every, !down {
			f := h.c.Heal
			if down {
				f = h.c.Cut
			}
			if err := f(bare[0], bare[1]); err != nil {
				return nil, err
			}
			if err := h.c.Run(every); err != nil {
				return h.log, err
			}
		}
		if err := h.c.Heal(bare[0], bare[1]); err != nil {
			return nil, err
		}
		if len(h.log) == 0 {
			return []string{"(nothing)"}, nil
		}
		return h.log, nil
	case "rank":
		return h.rank(kv, input)
	}
	return nil, fmt.Errorf("unknown command %q", words[0])
}

// cluster master=n1 backups=n2,n3 candidates=n4,n5 nodes=n6 [confirm=D lease=D
// giveup=D solitude=D spares=N guests=N writes=true]; input lines give health:
// "n4 network=0.5 ...". The cluster settles for 3s (not printed) and its roles
// are shown.
func (h *harness) cluster(kv map[string]string, input []string) ([]string, error) {
	cfg := failover.Config{}
	for k, p := range map[string]*time.Duration{"confirm": &cfg.ConfirmTimeout, "lease": &cfg.LeaseDuration,
		"giveup": &cfg.GiveUpAfter, "solitude": &cfg.SolitudeAfter, "penalty": &cfg.LostPenalty,
		"powerfence": &cfg.PowerFenceAfter} {
		if err := duration(kv, k, p); err != nil {
			return nil, err
		}
	}
	if s, ok := kv["spares"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("spares=%q: not a number", s)
		}
		cfg.Spares = n
	}
	view := failover.ClusterView{Generation: 1, Version: 1, Master: kv["master"]}
	view.Voters = append([]string{kv["master"]}, list(kv["backups"])...)
	add := func(names []string, r failover.Role, capable bool) {
		for _, n := range names {
			view.Nodes = append(view.Nodes, failover.NodeState{Name: n, Role: r, Capable: capable})
		}
	}
	add([]string{kv["master"]}, failover.RoleMaster, true)
	add(list(kv["backups"]), failover.RoleBackup, true)
	add(list(kv["candidates"]), failover.RoleCandidate, true)
	add(list(kv["nodes"]), failover.RoleNode, false)
	health := map[string]failover.HealthReport{}
	for _, n := range view.Nodes {
		health[n.Name], _ = parseHealth(nil)
	}
	for _, l := range input {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		hkv, _ := args(f[1:])
		rep, err := parseHealth(hkv)
		if err != nil {
			return nil, fmt.Errorf("health of %s: %w", f[0], err)
		}
		health[f[0]] = rep
	}
	guests := 0
	if s, ok := kv["guests"]; ok {
		n, err := strconv.Atoi(s)
		if err != nil {
			return nil, fmt.Errorf("guests=%q: not a number", s)
		}
		guests = n
	}
	c, err := failovertest.NewWithGuests(cfg, view, health, guests)
	if err != nil {
		return nil, err
	}
	c.Writes = kv["writes"] == "true"
	if err := duration(kv, "fencedelay", &c.PowerFenceDelay); err != nil {
		return nil, err
	}
	if kv["fencefails"] == "true" {
		c.PowerFenceFail = 1
	}
	h.c, h.cfg = c, cfg
	c.Observe = func(r failovertest.Record) { h.log = append(h.log, r.String()) }
	if err := c.Run(3 * time.Second); err != nil {
		return nil, err
	}
	h.log = nil
	return strings.Split(c.Table(), "\n"), nil
}

// rank [penalty=D]; input lines "NAME network=X cpu=X disk=X uptime=D
// downtime=D [lost=D ago]". Prints the ranked names.
func (h *harness) rank(kv map[string]string, input []string) ([]string, error) {
	cfg := failover.Config{}
	if err := duration(kv, "penalty", &cfg.LostPenalty); err != nil {
		return nil, err
	}
	now := time.Date(2026, 1, 1, 12, 0, 0, 0, time.UTC)
	var cands []failover.CandidateInfo
	for _, l := range input {
		f := strings.Fields(l)
		if len(f) == 0 {
			continue
		}
		ckv, _ := args(f[1:])
		rep, err := parseHealth(ckv)
		if err != nil {
			return nil, err
		}
		ci := failover.CandidateInfo{Node: f[0], Health: rep}
		var ago time.Duration
		if err := duration(ckv, "lost", &ago); err != nil {
			return nil, err
		}
		if ago > 0 {
			ci.LostAt = now.Add(-ago)
		}
		cands = append(cands, ci)
	}
	var out []string
	for i, c := range failover.Rank(cands, now, cfg) {
		out = append(out, fmt.Sprintf("%d %s", i+1, c.Node))
	}
	return out, nil
}

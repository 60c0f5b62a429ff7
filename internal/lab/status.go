package lab

import (
	"context"
	"net"
	"net/http"
	"os"
	"strconv"
	"strings"
	"sync"
	"time"
)

// Node states in NodeStatus.
const (
	StateRunning = "running" // PID 1 of the node is alive
	StatePaused  = "paused"  // every process of the node stopped by Pause, until Resume
	StateKilled  = "killed"  // killed by Kill (or Down); Restart brings it back
	StateDead    = "dead"    // its PID 1 ended without Kill: see DIR/nodes/nK/node.log
)

// NodeStatus is what Status finds out about a node.
type NodeStatus struct {
	Node
	State   string `json:"state"`
	Libvirt bool   `json:"libvirt"` // libvirtd answers on its TCP port, seen from inside the node
	Agent   bool   `json:"agent"`   // the agent answers GET /v1/health, seen from inside the node
	Cut     string `json:"cut,omitempty"`
}

// Status reports every node of the lab. It asks from inside each node, so a cut
// does not hide a node's own health.
func (l *Lab) Status(ctx context.Context) ([]NodeStatus, error) {
	if os.Geteuid() != 0 {
		return nil, ErrNotRoot
	}
	l.mu.Lock()
	l.reload()
	nodes := make([]nodeState, len(l.st.Nodes))
	copy(nodes, l.st.Nodes)
	cuts := l.st.Cuts
	up, noAgent := l.st.Up, l.st.NoAgent
	l.mu.Unlock()

	out := make([]NodeStatus, len(nodes))
	var wg sync.WaitGroup
	for i, n := range nodes {
		s := NodeStatus{Node: l.nodeOf(n), State: StateKilled, Cut: describeCuts(n.Name, cuts)}
		switch {
		case alive(n.PID, n.PIDStart) && n.Paused:
			s.State = StatePaused
		case alive(n.PID, n.PIDStart):
			s.State = StateRunning
		case n.PID != 0 && up:
			s.State = StateDead
		}
		out[i] = s
		// A paused node answers nothing (its kernel still accepts TCP connections,
		// which would read as libvirtd answering).
		if s.State != StateRunning {
			continue
		}
		wg.Add(1)
		go func() {
			defer wg.Done()
			ctx, cancel := context.WithTimeout(ctx, 2*time.Second)
			defer cancel()
			if c, err := dialIn(ctx, n.PID, net.JoinHostPort(nodeAddr(n.Index), strconv.Itoa(LibvirtPort))); err == nil {
				c.Close()
				out[i].Libvirt = true
			}
			if !noAgent {
				out[i].Agent = l.agentHealthy(ctx, n)
			}
		}()
	}
	wg.Wait()
	return out, nil
}

// agentHealthy asks the node's agent for /v1/health over a connection made inside
// the node.
func (l *Lab) agentHealthy(ctx context.Context, n nodeState) bool {
	tr := &http.Transport{DialContext: func(ctx context.Context, _, addr string) (net.Conn, error) {
		return dialIn(ctx, n.PID, addr)
	}}
	defer tr.CloseIdleConnections()
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, agentURL(n.Index)+"/v1/health", nil)
	resp, err := l.apiClient(tr).Do(req)
	if err != nil {
		return false
	}
	resp.Body.Close()
	return resp.StatusCode == http.StatusOK
}

// describeCuts says from whom node is cut ("all", "n1,n3"), "" if from no one.
func describeCuts(node string, cuts []Cut) string {
	var from []string
	for _, c := range cuts {
		switch {
		case c.Node == node && len(c.From) == 0:
			return "all"
		case c.Node == node:
			from = append(from, c.From...)
		case len(c.From) == 0:
			from = append(from, c.Node)
		case contains(c.From, node):
			from = append(from, c.Node)
		}
	}
	var uniq []string
	for _, f := range from {
		if !contains(uniq, f) {
			uniq = append(uniq, f)
		}
	}
	return strings.Join(uniq, ",")
}

package daemon

import (
	"bufio"
	"errors"
	"fmt"
	"io"
	"net"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
)

// A dev cluster has no role machine to declare a node lost, and its nodes never die on
// their own: Kill is how one dies (`dvmd dev kill NODE`), so that what dvm is for, a
// node lost and its guests back on the others, can be seen on one machine.

// Kill makes node die as a host does that loses power: its agent stops (it reports,
// starts and stops nothing more) and then every guest running on its hypervisor is
// destroyed. Once the master shows the node unreachable (its node timeout after the
// last report), the dev cluster declares it lost, as the role machine declares a node
// whose lease lapsed after it fenced itself; the master then brings its guests back on
// the other nodes by their failover policy. Kill returns the guests that ran there. A
// killed node stays dead until the dev cluster is started again, which takes it back.
func (d *Dev) Kill(node string) ([]string, error) {
	if fe := api.ValidateName("node", node); fe != nil {
		return nil, fmt.Errorf("node: %s", fe.Msg)
	}
	d.killMu.Lock()
	defer d.killMu.Unlock()
	i := -1
	for j := range d.Nodes {
		if devNodeName(j) == node {
			i = j
		}
	}
	switch {
	case d.ctx.Err() != nil:
		return nil, errors.New("the dev cluster is stopping")
	case i < 0:
		return nil, fmt.Errorf("no node %s in this dev cluster: its nodes are n1 to n%d", node, len(d.Nodes))
	case d.alive[i] == nil:
		return nil, fmt.Errorf("node %s is killed already: it stays dead until the dev cluster is started again", node)
	}
	// The agent first, so that nothing starts a guest again on the node once its
	// guests are destroyed: from here on none of them runs there.
	d.alive[i].cancel()
	<-d.alive[i].done
	d.alive[i] = nil
	guests, err := d.Nodes[i].List()
	if err != nil {
		return nil, fmt.Errorf("kill node %s: %w", node, err)
	}
	var killed []string
	for _, g := range guests {
		if g.State != hypervisor.StateRunning && g.State != hypervisor.StatePaused {
			continue
		}
		if err := d.Nodes[i].Destroy(g.Name); err != nil {
			return killed, fmt.Errorf("kill node %s: guest %s: %w", node, g.Name, err)
		}
		killed = append(killed, g.Name)
	}
	sort.Strings(killed)
	d.bg.Add(1)
	go d.declareLost(node)
	return killed, nil
}

// devNodeName is the name of the dev cluster's i-th node.
func devNodeName(i int) string { return fmt.Sprintf("n%d", i+1) }

// declareLost waits until the master shows the killed node unreachable, then declares
// it lost. Declaring it sooner would be as safe (nothing of it runs) but would not show
// what a real loss looks like: first silence, then the loss.
func (d *Dev) declareLost(node string) {
	defer d.bg.Done()
	tick := time.NewTicker(100 * time.Millisecond)
	defer tick.Stop()
	for {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
		}
		for _, n := range d.master.Nodes() {
			if n.Name == node && n.State == api.NodeUnreachable {
				d.master.RecoverNode(node, "killed (dvmd dev kill) and silent since: a dev cluster declares its killed nodes lost, as the role machine does a node whose lease lapsed")
				return
			}
		}
	}
}

// readmitKilled takes back, once the master leads, the nodes that a previous run of
// this dev cluster killed: they run again now, empty, as rebooted hosts.
func (d *Dev) readmitKilled() {
	defer d.bg.Done()
	tick := time.NewTicker(50 * time.Millisecond)
	defer tick.Stop()
	// A new leader's state may still lack the log it replays: the barrier returns once
	// all of it is applied, the lost marks of the last run included.
	for !d.master.IsLeader() || d.master.st.Raft().Barrier(5*time.Second).Error() != nil {
		select {
		case <-d.ctx.Done():
			return
		case <-tick.C:
		}
	}
	for _, n := range d.master.Nodes() {
		if n.State == api.NodeLost {
			d.master.Readmit(n.Name)
		}
	}
}

// ControlSocket is where a running dev cluster takes `dvmd dev kill`: a Unix socket in
// its data directory, which only the directory's owner may enter (0700).
func ControlSocket(dataDir string) string { return filepath.Join(dataDir, "control.sock") }

// listenControl listens on dir's control socket; one left by a dev cluster that did not
// stop cleanly is replaced (StartDev holds the API address, so no other runs on dir).
func listenControl(dir string) (net.Listener, error) {
	p := ControlSocket(dir)
	if err := os.Remove(p); err != nil && !errors.Is(err, os.ErrNotExist) {
		return nil, fmt.Errorf("control socket: %w", err)
	}
	ln, err := net.Listen("unix", p)
	if err != nil {
		return nil, fmt.Errorf("control socket (dvmd dev kill): %w", err)
	}
	return ln, nil
}

// serveControl answers the control socket until Stop closes it: one request a
// connection, a line "kill NODE", answered by a line "ok DETAIL" or "error MESSAGE".
func (d *Dev) serveControl() {
	for {
		conn, err := d.control.Accept()
		if err != nil {
			return
		}
		go func() {
			defer conn.Close()
			conn.SetDeadline(time.Now().Add(time.Minute))
			line, err := bufio.NewReader(io.LimitReader(conn, 1024)).ReadString('\n')
			if err != nil {
				fmt.Fprintf(conn, "error no request line: %v\n", err)
				return
			}
			verb, node, _ := strings.Cut(strings.TrimSpace(line), " ")
			if verb != "kill" {
				fmt.Fprintf(conn, "error unknown request %q: the dev cluster takes kill NODE\n", verb)
				return
			}
			killed, err := d.Kill(node)
			if err != nil {
				fmt.Fprintf(conn, "error %s\n", oneLine(err.Error()))
				return
			}
			fmt.Fprintf(conn, "ok node %s killed: its agent stopped, %d guest%s destroyed with it (%s); it is declared lost once the master shows it unreachable\n",
				node, len(killed), plural(len(killed)), orNone(strings.Join(killed, ", ")))
		}()
	}
}

// KillDevNode asks the dev cluster running on dataDir to kill node (Dev.Kill) and
// returns what it did.
func KillDevNode(dataDir, node string) (string, error) {
	p := ControlSocket(dataDir)
	conn, err := net.DialTimeout("unix", p, 5*time.Second)
	if err != nil {
		return "", fmt.Errorf("no dev cluster runs on %s (%v): start one with dvmd dev --data-dir %s", dataDir, err, dataDir)
	}
	defer conn.Close()
	conn.SetDeadline(time.Now().Add(time.Minute))
	if _, err := fmt.Fprintf(conn, "kill %s\n", node); err != nil {
		return "", fmt.Errorf("ask the dev cluster on %s: %w", dataDir, err)
	}
	answer, err := bufio.NewReader(conn).ReadString('\n')
	if err != nil {
		return "", fmt.Errorf("the dev cluster on %s did not answer: %w", dataDir, err)
	}
	status, detail, _ := strings.Cut(strings.TrimSpace(answer), " ")
	if status != "ok" {
		return "", errors.New(detail)
	}
	return detail, nil
}

func oneLine(s string) string { return strings.ReplaceAll(s, "\n", " ") }

func plural(n int) string {
	if n == 1 {
		return ""
	}
	return "s"
}

func orNone(s string) string {
	if s == "" {
		return "none"
	}
	return s
}

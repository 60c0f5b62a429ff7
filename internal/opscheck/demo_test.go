package opscheck

import (
	"bytes"
	"context"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// TestDemo runs the README's main job as the README says, ./scripts/demo, and checks
// that it shows what dvm is for: guests placed on a dev cluster, a node of it killed,
// and every guest of that node back on the others, with the events printed as they
// came, in the order they happened; the cluster it leaves says the same. It needs root
// (the script installs what is missing); CI runs it.
func TestDemo(t *testing.T) {
	if os.Geteuid() != 0 {
		if os.Getenv("CI") == "true" {
			t.Fatal("scripts/demo needs root: CI runs this test as root")
		}
		t.Skip("scripts/demo needs root (CI runs this test)")
	}
	dir := filepath.Join(t.TempDir(), "dev")
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	listen := ln.Addr().String()
	ln.Close()
	t.Cleanup(func() { stopDev(t, dir) })

	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, filepath.Join(root(t), "scripts", "demo"))
	cmd.Env = append(os.Environ(), "DVM_DEV_DIR="+dir, "DVM_DEV_LISTEN="+listen)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		t.Fatalf("scripts/demo: %v\n%s", err, out.String())
	}
	text := out.String()
	t.Logf("scripts/demo said:\n%s", text)

	m := regexp.MustCompile(`== killing (n\d+), which runs ([a-z, -]+): `).FindStringSubmatch(text)
	if m == nil {
		t.Fatal("the demo killed no node")
	}
	victim, doomed := m[1], strings.Split(m[2], ", ")
	// Each line found after the one before: the kill, the node's loss, each guest's
	// restart elsewhere and its running again, as the events came.
	at := strings.Index(text, m[0])
	next := func(what string, re *regexp.Regexp) []string {
		t.Helper()
		loc := re.FindStringSubmatchIndex(text[at:])
		if loc == nil {
			t.Fatalf("after offset %d the demo printed no %s (%s)", at, what, re)
		}
		sub := re.FindStringSubmatch(text[at:])
		at += loc[1]
		return sub
	}
	next("kill", regexp.MustCompile(`node `+victim+` killed: its agent stopped, `+strconv.Itoa(len(doomed))+` guests? destroyed with it`))
	next("loss", regexp.MustCompile(`node-lost\s+node `+victim+`: `))
	lostAt := at
	to := map[string]string{}
	for _, g := range doomed {
		at = lostAt
		to[g] = next("restart of "+g, regexp.MustCompile(`recovery\s+guest `+g+`: restarting on (n\d+)`))[1]
		if to[g] == victim {
			t.Fatalf("%s restarted on the killed %s", g, victim)
		}
		next(g+" running again", regexp.MustCompile(`recovered\s+guest `+g+`: guest `+g+` running on `+to[g]+` `))
	}

	// The cluster the demo leaves: every guest running, none on the killed node, which
	// is lost.
	env := map[string]string{}
	b, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	for _, line := range strings.Split(strings.TrimSpace(string(b)), "\n") {
		k, v, _ := strings.Cut(line, "=")
		env[k] = v
	}
	c, err := api.NewClient(env["DVM_ADDR"], env["DVM_TOKEN"])
	if err != nil {
		t.Fatal(err)
	}
	if err := c.TrustCA(env["DVM_CA"]); err != nil {
		t.Fatal(err)
	}
	var guests []api.Guest
	if err := c.Do(ctx, "GET", "/v1/guests", nil, &guests); err != nil {
		t.Fatal(err)
	}
	if len(guests) != 6 {
		t.Fatalf("%d guests, the demo makes six", len(guests))
	}
	for _, g := range guests {
		if g.State != api.GuestRunning || g.Node == victim || (to[g.Name] != "" && g.Node != to[g.Name]) {
			t.Errorf("guest %s is %s on %s", g.Name, g.State, g.Node)
		}
	}
	var nodes []api.Node
	if err := c.Do(ctx, "GET", "/v1/nodes", nil, &nodes); err != nil {
		t.Fatal(err)
	}
	for _, n := range nodes {
		if want := map[bool]string{true: api.NodeLost, false: api.NodeReady}[n.Name == victim]; n.State != want {
			t.Errorf("node %s is %s, want %s", n.Name, n.State, want)
		}
	}
}

// stopDev stops the dev cluster the demo left running in dir.
func stopDev(t *testing.T, dir string) {
	b, err := os.ReadFile(filepath.Join(dir, "dvmd.pid"))
	if err != nil {
		return
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(b)))
	if err != nil || syscall.Kill(pid, syscall.SIGTERM) != nil {
		return
	}
	for i := 0; i < 100 && alive(pid); i++ {
		time.Sleep(100 * time.Millisecond)
	}
	if alive(pid) {
		t.Errorf("dvmd dev (pid %d) outlived SIGTERM by 10 s", pid)
		syscall.Kill(pid, syscall.SIGKILL)
	}
}

// alive says whether process pid runs: a zombie does not (the demo's dvmd is orphaned
// when the script ends, and a container's PID 1 may never reap it).
func alive(pid int) bool {
	b, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return false
	}
	// pid (comm) S ...: the state follows the last ')'.
	s := string(b)
	i := strings.LastIndexByte(s, ')')
	return i >= 0 && len(s) > i+2 && s[i+2] != 'Z'
}

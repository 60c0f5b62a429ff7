package lab

import (
	"bufio"
	"context"
	"errors"
	"fmt"
	"github.com/dvmproject/dvm/internal/config"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
)

// TestAgentConfig reads the lab's node configs with dvmd's own strict parser, so a
// key the lab writes and dvmd does not know fails here, not in a lab.
func TestAgentConfig(t *testing.T) {
	for k := 1; k <= 3; k++ {
		text := agentConfig("/var/lib/dvm-lab", k, 3, false, nil)
		n, err := config.Parse(strings.NewReader(text))
		if err != nil {
			t.Fatalf("config of n%d does not parse: %v\n%s", k, err, text)
		}
		if n.Name != fmt.Sprintf("n%d", k) || n.Listen != fmt.Sprintf("10.77.0.%d:7460", 10+k) ||
			n.AdvertiseLibvirtURI != fmt.Sprintf("qemu+tcp://10.77.0.%d/system", 10+k) || n.Accelerator != "tcg" ||
			n.DisksDir != "/var/lib/dvm-lab/shared/disks" || n.TokenFile != "/var/lib/dvm-lab/token" {
			t.Errorf("n%d: %+v", k, n)
		}
		if n.Bootstrap != (k == 1) {
			t.Errorf("n%d: bootstrap = %v; exactly n1 forms the cluster", k, n.Bootstrap)
		}
	}
}

// TestAgentConfigCeph: a lab with Ceph names a storage pool of each kind, which
// dvmd reads; one without names the local and shared pools only.
func TestAgentConfigCeph(t *testing.T) {
	n, err := config.Parse(strings.NewReader(agentConfig("/var/lib/dvm-lab", 2, 3, true, nil)))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"ceph": "rbd", "local": "dir", "shared": "shared"}
	if got := n.PoolKinds(); !reflect.DeepEqual(got, want) {
		t.Fatalf("pools %v, want %v", got, want)
	}
	ceph, _ := n.Pool("ceph")
	if strings.Join(ceph.Monitors, ",") != CephMonAddr || ceph.RBDPool != CephPool || ceph.Client != CephClient ||
		ceph.Keyring != CephKeyring("/var/lib/dvm-lab") {
		t.Fatalf("ceph pool %+v", ceph)
	}
	if local, _ := n.Pool("local"); local.Path != "/var/lib/dvm-lab/nodes/n2/pool-local" {
		t.Fatalf("local pool %+v: want a directory of n2's own", local)
	}
	n, err = config.Parse(strings.NewReader(agentConfig("/var/lib/dvm-lab", 2, 3, false, nil)))
	if err != nil {
		t.Fatal(err)
	}
	if got, want := n.PoolKinds(), map[string]string{"local": "dir", "shared": "shared"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("a lab without Ceph names pools %v, want %v", got, want)
	}
}

func TestNftRules(t *testing.T) {
	got := nftRules([]Cut{{Node: "n3", From: []string{"n1"}}, {Node: "n2"}})
	for _, rule := range []string{
		"ip saddr 10.77.0.13 ip daddr 10.77.0.11 drop",
		"ip saddr 10.77.0.11 ip daddr 10.77.0.13 drop",
		`iifname "dvmlab-n2" drop`,
		`oifname "dvmlab-n2" drop`,
		"table bridge dvmlab\ndelete table bridge dvmlab\n",
	} {
		if !strings.Contains(got, rule) {
			t.Errorf("rules lack %q:\n%s", rule, got)
		}
	}
	if empty := nftRules(nil); strings.Contains(empty, "drop") {
		t.Errorf("rules without cuts drop something:\n%s", empty)
	}
}

func TestHealCuts(t *testing.T) {
	cuts := []Cut{{Node: "n3", From: []string{"n1", "n2"}}, {Node: "n2"}, {Node: "n4", From: []string{"n1"}}}
	for _, tc := range []struct {
		node string
		want []Cut
	}{
		{"", nil},
		{"n1", []Cut{{Node: "n3", From: []string{"n2"}}, {Node: "n2"}}},
		{"n2", []Cut{{Node: "n3", From: []string{"n1"}}, {Node: "n4", From: []string{"n1"}}}},
		{"n3", []Cut{{Node: "n2"}, {Node: "n4", From: []string{"n1"}}}},
		{"n5", cuts},
	} {
		if got := healCuts(cuts, tc.node); !reflect.DeepEqual(got, tc.want) {
			t.Errorf("heal %q: %+v, want %+v", tc.node, got, tc.want)
		}
	}
	if len(cuts[0].From) != 2 {
		t.Errorf("healCuts changed its input: %+v", cuts)
	}
}

func TestDescribeCuts(t *testing.T) {
	cuts := []Cut{{Node: "n3", From: []string{"n1"}}, {Node: "n2"}}
	for node, want := range map[string]string{"n1": "n3,n2", "n2": "all", "n3": "n1,n2", "n4": "n2"} {
		if got := describeCuts(node, cuts); got != want {
			t.Errorf("cuts of %s: %q, want %q", node, got, want)
		}
	}
}

func TestUpRejectsBadOptions(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		opts Options
		want string
	}{
		{Options{Nodes: 8, Dir: dir}, "1 to 7 nodes"},
		{Options{Nodes: -1, Dir: dir}, "1 to 7 nodes"},
		{Options{Dir: "/run/lab"}, "under /run"},
		{Options{Dir: "/var/lib/libvirt/lab"}, "under /var/lib/libvirt"},
		{Options{Dir: "/"}, "cannot be /"},
		{Options{Dir: dir, PowerFence: true, NoAgent: true}, "--power-fence needs the nodes' agents"},
		{Options{Dir: dir, PowerFence: true, Settings: map[string]string{"power_fence_agent": "/bin/true"}}, "names its own agent"},
	} {
		_, err := Up(context.Background(), tc.opts)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("Up(%+v): %v, want an error saying %q", tc.opts, err, tc.want)
		}
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("rejected Up wrote %v into %s", ents, dir)
	}
}

func TestLoadWithoutLab(t *testing.T) {
	dir := t.TempDir()
	_, err := Load(dir)
	if !errors.Is(err, ErrNoLab) || !strings.Contains(err.Error(), "vmctl lab up --dir "+dir) {
		t.Errorf("Load of an empty dir: %v, want ErrNoLab saying how to bring one up", err)
	}
	if err := os.WriteFile(filepath.Join(dir, stateFile), []byte("{"), 0o600); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir); err == nil || !strings.Contains(err.Error(), "damaged") {
		t.Errorf("Load of a broken state: %v, want an error saying it is damaged", err)
	}
}

// TestEnvNamesTheLab: DIR/env points vmctl at the lab's API and names DIR, so that after
// sourcing it `vmctl lab kill n2` acts on that lab (DVM_LAB_DIR is vmctl lab's --dir).
func TestEnvNamesTheLab(t *testing.T) {
	dir := t.TempDir()
	l := &Lab{dir: dir, st: state{Nodes: []nodeState{{Name: "n1", Index: 1}, {Name: "n2", Index: 2}}}}
	if err := l.writeEnv("s3cret"); err != nil {
		t.Fatal(err)
	}
	got, err := os.ReadFile(filepath.Join(dir, "env"))
	if err != nil {
		t.Fatal(err)
	}
	want := "DVM_ADDR=https://10.77.0.11:7460,https://10.77.0.12:7460\nDVM_TOKEN=s3cret\n" +
		"DVM_CA=" + filepath.Join(dir, "credentials", "ca.crt") + "\n" +
		"DVM_LAB_NODES=n1=qemu+tcp://10.77.0.11/system,n2=qemu+tcp://10.77.0.12/system\n" +
		"DVM_LAB_DIR=" + dir + "\n"
	if string(got) != want {
		t.Errorf("env file:\n%s\nwant:\n%s", got, want)
	}
}

func TestFindDvmd(t *testing.T) {
	dir := t.TempDir()
	p := filepath.Join(dir, "dvmd")
	if _, err := findDvmd(p); err == nil || !strings.Contains(err.Error(), "go build") {
		t.Errorf("missing dvmd: %v, want an error saying how to build it", err)
	}
	if err := os.WriteFile(p, []byte("#!/bin/sh\n"), 0o755); err != nil {
		t.Fatal(err)
	}
	if got, err := findDvmd(p); err != nil || got != p {
		t.Errorf("findDvmd(%s) = %q, %v", p, got, err)
	}
}

func TestMissingError(t *testing.T) {
	err := &MissingError{Packages: []string{"tini", "nftables"}, Details: []string{"no tini (package tini)", "no nft (package nftables)"}}
	if !strings.Contains(err.Error(), "apt-get install -y --no-install-recommends tini nftables") {
		t.Errorf("missing packages error does not say how to install them: %v", err)
	}
}

func TestNodeScript(t *testing.T) {
	l := &Lab{dir: "/srv/it's lab", st: state{Dvmd: "/usr/local/bin/dvmd", Nodes: []nodeState{{Name: "n1", Index: 1}}}}
	var b strings.Builder
	if err := nodeScript.Execute(&b, map[string]string{"Name": "n1", "Dir": l.dir, "NodeDir": l.nodeDir("n1"),
		"Addr": "10.77.0.11", "LibvirtURI": libvirtURI(1), "Dvmd": l.st.Dvmd}); err != nil {
		t.Fatal(err)
	}
	s := b.String()
	for _, want := range []string{`nodedir='/srv/it'\''s lab/nodes/n1'`, "'/usr/local/bin/dvmd' agent --config \"$nodedir/dvmd.conf\"", "libvirtd -d --listen", "ip addr add 10.77.0.11/24 dev eth0"} {
		if !strings.Contains(s, want) {
			t.Errorf("node script lacks %q:\n%s", want, s)
		}
	}
	sh := exec.Command("sh", "-n")
	sh.Stdin = strings.NewReader(s)
	if out, err := sh.CombinedOutput(); err != nil {
		t.Errorf("node script is not valid sh: %v: %s", err, out)
	}
	if strings.Contains(s, "sleep infinity") {
		t.Error("node script with an agent sleeps instead of running it")
	}
}

func TestGuestScriptsParse(t *testing.T) {
	for _, p := range []string{"guest/init", "guest/lib/lab.sh", "guest/lab.d/tick.sh"} {
		b, err := guestFiles.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		sh := exec.Command("sh", "-n")
		sh.Stdin = strings.NewReader(string(b))
		if out, err := sh.CombinedOutput(); err != nil {
			t.Errorf("%s is not valid sh: %v: %s", p, err, out)
		}
	}
}

func TestUpNamesMissingPackages(t *testing.T) {
	t.Setenv("PATH", t.TempDir()) // no program of the lab's packages is found
	err := CheckPackages()
	var miss *MissingError
	if !errors.As(err, &miss) {
		t.Fatalf("CheckPackages with an empty PATH: %v, want a *MissingError", err)
	}
	for _, pkg := range []string{"tini", "nftables", "libvirt-daemon-system", "qemu-system-x86", "busybox-static", "cpio"} {
		if !contains(miss.Packages, pkg) {
			t.Errorf("missing packages %v lack %s", miss.Packages, pkg)
		}
	}
	dir := t.TempDir()
	_, err = Up(context.Background(), Options{Dir: dir, NoAgent: true})
	want := error(miss)
	if os.Geteuid() != 0 {
		want = ErrNotRoot
	}
	if err == nil || err.Error() != want.Error() {
		t.Errorf("Up without the packages: %v, want %v", err, want)
	}
	if ents, _ := os.ReadDir(dir); len(ents) != 0 {
		t.Errorf("Up without the packages wrote %v into %s", ents, dir)
	}
}

// TestSettings: --set keys reach every node's dvmd.conf, and what dvmd would refuse
// is refused before the lab changes anything.
func TestSettings(t *testing.T) {
	fast := map[string]string{"lease_duration": "1s", "lease_margin": "500ms", "renew_interval": "200ms", "fence_grace": "250ms"}
	if err := checkSettings("/var/lib/dvm-lab", 3, false, fast, parseConfig); err != nil {
		t.Fatalf("a valid timing refused: %v", err)
	}
	n, err := config.Parse(strings.NewReader(agentConfig("/var/lib/dvm-lab", 2, 3, false, fast)))
	if err != nil || n.Timing.LeaseDuration.String() != "1s" || n.Timing.FenceGrace.String() != "250ms" {
		t.Fatalf("settings not in the node's config: %+v, %v", n.Timing, err)
	}
	for _, c := range []struct {
		settings map[string]string
		want     string
	}{
		{map[string]string{"name": "x"}, "the lab writes name itself"},
		{map[string]string{"lease_duration": "1s"}, "lease_margin"}, // 1s margin is not under 1s
		{map[string]string{"no_such_key": "1"}, "no_such_key"},
		{map[string]string{"fence_grace": ""}, "give a value"},
		{map[string]string{"a b": "1"}, "a key is a dvmd.conf key"},
	} {
		err := checkSettings("/var/lib/dvm-lab", 3, false, c.settings, parseConfig)
		if err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: got %v, want an error naming %q", c.settings, err, c.want)
		}
	}
	if _, err := ParseSettings([]string{"lease_duration=1s", "lease_duration=2s"}); err == nil || !strings.Contains(err.Error(), "twice") {
		t.Errorf("a key given twice: %v", err)
	}
	if _, err := ParseSettings([]string{"lease_duration"}); err == nil || !strings.Contains(err.Error(), "KEY=VALUE") {
		t.Errorf("no value: %v", err)
	}
}

func parseConfig(r io.Reader) error {
	_, err := config.Parse(r)
	return err
}

// TestHostService: a Host with a Service and private mounts (package peerlab's) gets
// a node script that binds them and runs the Service in place of any agent.
func TestHostService(t *testing.T) {
	dir := t.TempDir()
	h := Host{Name: "p1", Dir: filepath.Join(dir, "nodes", "p1"), LabDir: dir, Addr: "10.78.0.11",
		Lockspace: filepath.Join(dir, "shared", "locks"), Mounts: []string{"/etc/corosync"}, Service: "exec corosync -f"}
	if err := h.Prepare(); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(filepath.Join(h.Dir, "node.sh"))
	if err != nil {
		t.Fatal(err)
	}
	s := string(b)
	for _, want := range []string{`mount --bind "$nodedir/private/etc/corosync" '/etc/corosync'`, "exec corosync -f", "ip addr add 10.78.0.11/24 dev eth0"} {
		if !strings.Contains(s, want) {
			t.Errorf("node script lacks %q:\n%s", want, s)
		}
	}
	if strings.Contains(s, "dvmd") || strings.Contains(s, "sleep infinity") {
		t.Errorf("node script with a Service runs an agent or sleeps:\n%s", s)
	}
	sh := exec.Command("sh", "-n")
	sh.Stdin = strings.NewReader(s)
	if out, err := sh.CombinedOutput(); err != nil {
		t.Errorf("node script is not valid sh: %v: %s", err, out)
	}
}

// TestPowerFenceAgentProtocol: the lab's agent reads fence-agents' options (plug, or
// port, or nodename; action, reboot by default), asks the switch one line, and takes
// only an "ok" answer as done.
func TestPowerFenceAgentProtocol(t *testing.T) {
	sock := filepath.Join(t.TempDir(), "power.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	asked := make(chan string, 8)
	go func() {
		for {
			c, err := ln.Accept()
			if err != nil {
				return
			}
			line, _ := bufio.NewReader(c).ReadString('\n')
			line = strings.TrimSpace(line)
			asked <- line
			if strings.HasSuffix(line, " n9") {
				fmt.Fprintln(c, "error: no node n9 in this lab")
			} else {
				fmt.Fprintln(c, "ok off")
			}
			c.Close()
		}
	}()
	for _, tc := range []struct{ in, ask, err string }{
		{"action=off\nplug=n2\n", "off n2", ""},
		{"port=n3\n", "reboot n3", ""},
		{"nodename=n1\naction=status\n", "status n1", ""},
		{"plug=n9\naction=off\n", "off n9", "no node n9"},
		{"action=off\n", "", "no plug"},
		{"action=cycle\nplug=n2\n", "", "knows off, reboot"},
	} {
		state, err := PowerFenceAgent(strings.NewReader(tc.in), sock)
		switch {
		case tc.err == "" && (err != nil || state != "off"):
			t.Errorf("%q: %q, %v", tc.in, state, err)
		case tc.err != "" && (err == nil || !strings.Contains(err.Error(), tc.err)):
			t.Errorf("%q: %v, want an error naming %q", tc.in, err, tc.err)
		}
		if tc.ask != "" {
			if got := <-asked; got != tc.ask {
				t.Errorf("%q asked the switch %q, want %q", tc.in, got, tc.ask)
			}
		}
	}
	if _, err := PowerFenceAgent(strings.NewReader("action=monitor\n"), sock); err != nil {
		t.Errorf("monitor with the switch listening: %v", err)
	}
	<-asked // monitor's bare connection
	if _, err := PowerFenceAgent(strings.NewReader("action=off\nplug=n2\n"), sock+".gone"); err == nil {
		t.Error("no switch listening: the agent said done")
	}
}

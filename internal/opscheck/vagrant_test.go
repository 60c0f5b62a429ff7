package opscheck

import (
	"crypto/tls"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/cluster"
)

// vagrantCopy copies the Vagrantfile and what it provisions with into a fresh directory:
// reading the Vagrantfile makes the lab's credentials next to it (.vagrant/dvm-cluster),
// which must not land in the work tree.
func vagrantCopy(t *testing.T) string {
	t.Helper()
	dir := t.TempDir()
	for _, f := range []string{"Vagrantfile", "configs/vagrant/provision.sh", "configs/systemd/dvmd.service"} {
		b, err := os.ReadFile(filepath.Join(root(t), f))
		if err != nil {
			t.Fatal(err)
		}
		dst := filepath.Join(dir, f)
		if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(dst, b, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	return dir
}

func vagrant(t *testing.T, dir string, nodes string) (string, error) {
	t.Helper()
	cmd := exec.Command(tool(t, "vagrant", "vagrant vagrant-libvirt"), "validate")
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), "DVM_NODES="+nodes, "VAGRANT_CHECKPOINT_DISABLE=1", "VAGRANT_DEFAULT_PROVIDER=libvirt")
	out, err := cmd.CombinedOutput()
	return string(out), err
}

// TestVagrantValidate: `vagrant validate` passes for 3 and 5 nodes and refuses 2;
// shellcheck passes provision.sh; the
// credentials the Vagrantfile made are loaded by dvm's own loader (internal/cluster), two
// nodes complete a mutual TLS handshake with them, the CA key issues a further node with
// `dvmd cluster issue`'s code, and no node's directory holds the CA key.
func TestVagrantValidate(t *testing.T) {
	dir := vagrantCopy(t)
	for _, n := range []string{"3", "5"} {
		out, err := vagrant(t, dir, n)
		if err != nil || !strings.Contains(out, "validated successfully") {
			t.Fatalf("DVM_NODES=%s vagrant validate: %v\n%s", n, err, out)
		}
	}
	if out, err := vagrant(t, dir, "2"); err == nil || !strings.Contains(out, "DVM_NODES must be 3 to 5") {
		t.Errorf("DVM_NODES=2 vagrant validate: want a refusal naming DVM_NODES, got %v\n%s", err, out)
	}
	sc := tool(t, "shellcheck", "shellcheck")
	if out, err := exec.Command(sc, filepath.Join(dir, "configs/vagrant/provision.sh")).CombinedOutput(); err != nil {
		t.Errorf("shellcheck provision.sh: %v\n%s", err, out)
	}

	clusterDir := filepath.Join(dir, ".vagrant", "dvm-cluster")
	creds := map[string]*cluster.Credentials{}
	for _, n := range []string{"dvm1", "dvm2", "dvm3", "dvm4", "dvm5"} {
		nd := filepath.Join(clusterDir, "nodes", n)
		c, err := cluster.Load(nd, n)
		if err != nil {
			t.Fatalf("node %s: dvm does not accept the Vagrantfile's credentials: %v", n, err)
		}
		if _, err := os.Stat(filepath.Join(nd, cluster.CAKeyFile)); err == nil {
			t.Errorf("node %s's credentials hold the CA key", n)
		}
		creds[n] = c
	}
	if ip := creds["dvm2"].Certificate().IPAddresses; len(ip) != 1 || !ip[0].Equal(net.ParseIP("10.88.0.12")) {
		t.Errorf("dvm2's certificate is for %v, not 10.88.0.12", ip)
	}

	// dvm2 dials dvm1 by name; each learns the other's node name from the handshake.
	a, b := net.Pipe()
	server := tls.Server(a, creds["dvm1"].ServerTLS())
	cc := creds["dvm2"].ClientTLS()
	cc.ServerName = "dvm1"
	client := tls.Client(b, cc)
	got := make(chan string, 1)
	go func() {
		name, err := cluster.PeerName(server)
		if err != nil {
			name = "error: " + err.Error()
		}
		got <- name
		server.Close()
	}()
	if name, err := cluster.PeerName(client); err != nil || name != "dvm1" {
		t.Errorf("dvm2 dialing dvm1: peer %q, %v", name, err)
	}
	if name := <-got; name != "dvm2" {
		t.Errorf("dvm1 accepting dvm2: peer %q", name)
	}
	client.Close()

	out := t.TempDir()
	if err := cluster.IssueTo(clusterDir, out, "dvm6", []net.IP{net.ParseIP("10.88.0.16")}, nil); err != nil {
		t.Fatalf("dvmd cluster issue from the Vagrantfile's CA: %v", err)
	}
	if _, err := cluster.Load(out, "dvm6"); err != nil {
		t.Fatal(err)
	}
}

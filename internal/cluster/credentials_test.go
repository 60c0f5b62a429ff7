package cluster

import (
	"bytes"
	"crypto/x509"
	"errors"
	"net"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
)

var loopback = []net.IP{net.IPv4(127, 0, 0, 1)}

// newCluster makes a cluster directory with credentials for the given nodes, all
// reachable at 127.0.0.1, and returns the directory and the loaded credentials.
func newCluster(t testing.TB, nodes ...string) (string, map[string]*Credentials) {
	t.Helper()
	dir := t.TempDir()
	if err := NewCA(dir); err != nil {
		t.Fatal(err)
	}
	creds := map[string]*Credentials{}
	for _, n := range nodes {
		if err := Issue(dir, n, loopback, nil); err != nil {
			t.Fatal(err)
		}
		c, err := Load(dir, n)
		if err != nil {
			t.Fatal(err)
		}
		creds[n] = c
	}
	return dir, creds
}

func mode(t *testing.T, path string) os.FileMode {
	t.Helper()
	st, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	return st.Mode().Perm()
}

func TestNewCAIssueLoad(t *testing.T) {
	dir := t.TempDir()
	if err := NewCA(dir); err != nil {
		t.Fatal(err)
	}
	if err := Issue(dir, "n1", []net.IP{net.ParseIP("10.0.0.5"), net.ParseIP("fd00::5")}, []string{"n1.lab.example"}); err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]os.FileMode{CACertFile: 0o644, CAKeyFile: 0o600, GossipKeyFile: 0o600, NodeCertFile("n1"): 0o644, NodeKeyFile("n1"): 0o600} {
		if got := mode(t, filepath.Join(dir, name)); got != want {
			t.Errorf("%s: mode %o, want %o", name, got, want)
		}
	}
	c, err := Load(dir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	if c.Node() != "n1" {
		t.Errorf("Node() = %q", c.Node())
	}
	now := time.Now()
	ca := c.CA()
	if !ca.IsCA || !ca.MaxPathLenZero || ca.NotAfter.Before(now.Add(CAValidity-24*time.Hour)) {
		t.Errorf("CA: IsCA %v MaxPathLenZero %v NotAfter %v", ca.IsCA, ca.MaxPathLenZero, ca.NotAfter)
	}
	cert := c.Certificate()
	// Besides its own names, every node certificate names the loopback addresses: vmctl
	// on the host itself reaches the API at https://127.0.0.1:7460 or localhost.
	if cert.Subject.CommonName != "n1" || !slices.Equal(cert.DNSNames, []string{"n1", "n1.lab.example", "localhost"}) {
		t.Errorf("subject %q, DNS SANs %v", cert.Subject.CommonName, cert.DNSNames)
	}
	wantIPs := []string{"10.0.0.5", "fd00::5", "127.0.0.1", "::1"}
	if len(cert.IPAddresses) != len(wantIPs) {
		t.Errorf("IP SANs %v, want %v", cert.IPAddresses, wantIPs)
	}
	for i, ip := range cert.IPAddresses {
		if i < len(wantIPs) && !ip.Equal(net.ParseIP(wantIPs[i])) {
			t.Errorf("IP SANs %v, want %v", cert.IPAddresses, wantIPs)
		}
	}
	if !hasUsage(cert, x509.ExtKeyUsageServerAuth) || !hasUsage(cert, x509.ExtKeyUsageClientAuth) {
		t.Errorf("extended key usage %v", cert.ExtKeyUsage)
	}
	if d := cert.NotAfter.Sub(now); d < NodeValidity-24*time.Hour || d > NodeValidity {
		t.Errorf("node certificate valid for %s", d)
	}
	if !c.Expires().Equal(cert.NotAfter) {
		t.Errorf("Expires %v, want the node certificate's %v", c.Expires(), cert.NotAfter)
	}
	if _, err := cert.Verify(x509.VerifyOptions{Roots: c.pool, KeyUsages: []x509.ExtKeyUsage{x509.ExtKeyUsageAny}}); err != nil {
		t.Errorf("node certificate does not verify against the CA: %v", err)
	}
	if len(c.gossipKey) != GossipKeySize {
		t.Errorf("gossip key of %d bytes", len(c.gossipKey))
	}
}

func TestNewCARefusesExistingFiles(t *testing.T) {
	dir := t.TempDir()
	if err := NewCA(dir); err != nil {
		t.Fatal(err)
	}
	before := readAll(t, dir)
	err := NewCA(dir)
	if !errors.Is(err, ErrExists) {
		t.Fatalf("second NewCA: %v, want ErrExists", err)
	}
	if after := readAll(t, dir); !equalFiles(before, after) {
		t.Error("second NewCA changed files")
	}

	// One file in the way is enough to write none of them.
	dir2 := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir2, GossipKeyFile), []byte("mine\n"), 0o600); err != nil {
		t.Fatal(err)
	}
	if err := NewCA(dir2); !errors.Is(err, ErrExists) || !strings.Contains(err.Error(), GossipKeyFile) {
		t.Fatalf("NewCA over a gossip.key: %v", err)
	}
	if files := readAll(t, dir2); len(files) != 1 {
		t.Errorf("NewCA wrote files despite the error: %v", keys(files))
	}
}

func TestIssueToOutDir(t *testing.T) {
	cluster := t.TempDir()
	if err := NewCA(cluster); err != nil {
		t.Fatal(err)
	}
	out := filepath.Join(t.TempDir(), "to-copy")
	if err := IssueTo(cluster, out, "n2", loopback, nil); err != nil {
		t.Fatal(err)
	}
	files := readAll(t, out)
	if got, want := keys(files), []string{CACertFile, GossipKeyFile, NodeCertFile("n2"), NodeKeyFile("n2")}; !slices.Equal(got, want) {
		t.Fatalf("out dir holds %v, want %v (never ca.key)", got, want)
	}
	if _, err := Load(out, "n2"); err != nil {
		t.Fatal(err)
	}
	// A second node into the same directory: the shared files are identical, not replaced.
	if err := IssueTo(cluster, out, "n3", loopback, nil); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(out, "n3"); err != nil {
		t.Fatal(err)
	}
	// Reissuing n2 would replace its files: refused, nothing changes.
	before := readAll(t, out)
	if err := IssueTo(cluster, out, "n2", loopback, nil); !errors.Is(err, ErrExists) {
		t.Fatalf("reissue over existing files: %v, want ErrExists", err)
	}
	// Another cluster's files in the way: refused, n4 not written.
	other := t.TempDir()
	if err := NewCA(other); err != nil {
		t.Fatal(err)
	}
	if err := IssueTo(other, out, "n4", loopback, nil); !errors.Is(err, ErrExists) {
		t.Fatalf("issue from another cluster into the directory: %v, want ErrExists", err)
	}
	if after := readAll(t, out); !equalFiles(before, after) {
		t.Errorf("refused issues changed the directory: %v -> %v", keys(before), keys(after))
	}
}

func TestIssueBadInput(t *testing.T) {
	cluster := t.TempDir()
	if err := NewCA(cluster); err != nil {
		t.Fatal(err)
	}
	for _, tc := range []struct {
		what    string
		dir     string
		name    string
		ips     []net.IP
		dns     []string
		wantErr string
	}{
		{"empty name", cluster, "", loopback, nil, "node name is empty"},
		{"upper case", cluster, "N1", loopback, nil, `node name "N1" is not valid`},
		{"path in name", cluster, "../n1", loopback, nil, "is not valid"},
		{"no address", cluster, "n1", nil, nil, "no IP address given"},
		{"unspecified address", cluster, "n1", []net.IP{net.IPv4zero}, nil, "not an address of a host"},
		{"multicast address", cluster, "n1", []net.IP{net.ParseIP("224.0.0.1")}, nil, "not an address of a host"},
		{"bad DNS name", cluster, "n1", loopback, []string{"n1..lab"}, `DNS name "n1..lab" is not valid`},
		{"no cluster", filepath.Join(cluster, "nope"), "n1", loopback, nil, "does not exist"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			out := filepath.Join(t.TempDir(), "out")
			err := IssueTo(tc.dir, out, tc.name, tc.ips, tc.dns)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if _, err := os.Stat(out); !errors.Is(err, os.ErrNotExist) {
				t.Errorf("out directory made despite the error")
			}
		})
	}
}

func TestLoadErrors(t *testing.T) {
	dir, _ := newCluster(t, "n1", "n2")
	other, _ := newCluster(t, "n1")

	copyFile := func(t *testing.T, from, to string) {
		b, err := os.ReadFile(from)
		if err != nil {
			t.Fatal(err)
		}
		st, _ := os.Stat(from)
		if err := os.WriteFile(to, b, st.Mode().Perm()); err != nil {
			t.Fatal(err)
		}
	}
	// each case gets a fresh copy of n1's files from dir, then breaks them.
	nodeDir := func(t *testing.T) string {
		d := t.TempDir()
		for _, f := range []string{CACertFile, GossipKeyFile, NodeCertFile("n1"), NodeKeyFile("n1")} {
			copyFile(t, filepath.Join(dir, f), filepath.Join(d, f))
		}
		if _, err := Load(d, "n1"); err != nil {
			t.Fatalf("intact copy: %v", err)
		}
		return d
	}
	for _, tc := range []struct {
		what    string
		breakIt func(t *testing.T, d string)
		node    string
		wantIs  error
		wantErr string
	}{
		{"missing ca.crt", func(t *testing.T, d string) { os.Remove(filepath.Join(d, CACertFile)) }, "n1", os.ErrNotExist, "ca.crt: file does not exist: make cluster credentials with dvmd cluster init"},
		{"missing node key", func(t *testing.T, d string) { os.Remove(filepath.Join(d, NodeKeyFile("n1"))) }, "n1", nil, "node-n1.key: file does not exist"},
		{"missing gossip key", func(t *testing.T, d string) { os.Remove(filepath.Join(d, GossipKeyFile)) }, "n1", nil, "gossip.key: file does not exist"},
		{"other node asked", func(t *testing.T, d string) {}, "n2", nil, "node-n2.crt: file does not exist"},
		{"key readable by others", func(t *testing.T, d string) { os.Chmod(filepath.Join(d, NodeKeyFile("n1")), 0o644) }, "n1", nil, "readable by others (mode 644): chmod 600"},
		{"gossip key readable by others", func(t *testing.T, d string) { os.Chmod(filepath.Join(d, GossipKeyFile), 0o640) }, "n1", nil, "gossip.key is readable by others"},
		{"gossip key too short", func(t *testing.T, d string) {
			os.WriteFile(filepath.Join(d, GossipKeyFile), []byte("c2hvcnQ=\n"), 0o600)
		}, "n1", nil, "does not hold a base64 key of 32 bytes"},
		{"foreign CA", func(t *testing.T, d string) {
			copyFile(t, filepath.Join(other, CACertFile), filepath.Join(d, CACertFile))
		}, "n1", ErrForeign, "not signed by"},
		{"foreign node certificate", func(t *testing.T, d string) {
			copyFile(t, filepath.Join(other, NodeCertFile("n1")), filepath.Join(d, NodeCertFile("n1")))
		}, "n1", ErrForeign, "certificate from another cluster"},
		{"certificate of another node", func(t *testing.T, d string) {
			copyFile(t, filepath.Join(dir, NodeCertFile("n2")), filepath.Join(d, NodeCertFile("n1")))
		}, "n1", nil, `is issued to node "n2", not "n1"`},
		{"key of another node", func(t *testing.T, d string) {
			copyFile(t, filepath.Join(dir, NodeKeyFile("n2")), filepath.Join(d, NodeKeyFile("n1")))
		}, "n1", nil, "node-n1.key does not match"},
		{"CA certificate as node certificate", func(t *testing.T, d string) {
			copyFile(t, filepath.Join(d, CACertFile), filepath.Join(d, NodeCertFile("n1")))
		}, "n1", nil, "not \"n1\""},
		{"garbage certificate", func(t *testing.T, d string) {
			os.WriteFile(filepath.Join(d, NodeCertFile("n1")), []byte("hello"), 0o644)
		}, "n1", nil, "holds no PEM certificate"},
	} {
		t.Run(tc.what, func(t *testing.T) {
			d := nodeDir(t)
			tc.breakIt(t, d)
			_, err := Load(d, tc.node)
			if err == nil || !strings.Contains(err.Error(), tc.wantErr) {
				t.Fatalf("err = %v, want one containing %q", err, tc.wantErr)
			}
			if tc.wantIs != nil && !errors.Is(err, tc.wantIs) {
				t.Errorf("err = %v, want errors.Is %v", err, tc.wantIs)
			}
		})
	}
}

func TestLoadExpiredAndNotYetValid(t *testing.T) {
	dir := t.TempDir()
	now := time.Now()
	// A CA made two years ago, with a node certificate that ran out a year ago.
	if err := newCA(dir, now.Add(-2*NodeValidity)); err != nil {
		t.Fatal(err)
	}
	if err := issue(dir, dir, "old", loopback, nil, now.Add(-2*NodeValidity), now.Add(-NodeValidity)); err != nil {
		t.Fatal(err)
	}
	_, err := Load(dir, "old")
	if !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), "issue new credentials with dvmd cluster issue") {
		t.Errorf("expired certificate: %v", err)
	}
	if err := issue(dir, dir, "future", loopback, nil, now.Add(time.Hour), now.Add(NodeValidity)); err != nil {
		t.Fatal(err)
	}
	if _, err := Load(dir, "future"); err == nil || !strings.Contains(err.Error(), "check this host's clock") {
		t.Errorf("certificate not yet valid: %v", err)
	}
	// An expired CA: every load fails, naming the CA.
	if _, err := load(dir, "future", now.Add(CAValidity+NodeValidity)); !errors.Is(err, ErrExpired) || !strings.Contains(err.Error(), CACertFile) {
		t.Errorf("expired CA: %v", err)
	}
	// And issuing from it is refused.
	if err := issue(dir, dir, "late", loopback, nil, now.Add(CAValidity+NodeValidity), now.Add(CAValidity+2*NodeValidity)); !errors.Is(err, ErrExpired) {
		t.Errorf("issue from an expired CA: %v", err)
	}
}

func readAll(t *testing.T, dir string) map[string][]byte {
	t.Helper()
	ents, err := os.ReadDir(dir)
	if err != nil {
		t.Fatal(err)
	}
	m := map[string][]byte{}
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join(dir, e.Name()))
		if err != nil {
			t.Fatal(err)
		}
		m[e.Name()] = b
	}
	return m
}

func equalFiles(a, b map[string][]byte) bool {
	if len(a) != len(b) {
		return false
	}
	for k, v := range a {
		if !bytes.Equal(v, b[k]) {
			return false
		}
	}
	return true
}

func keys(m map[string][]byte) []string {
	var ks []string
	for k := range m {
		ks = append(ks, k)
	}
	slices.Sort(ks)
	return ks
}

func TestParseIPs(t *testing.T) {
	ips, err := ParseIPs([]string{"10.0.0.5, fd00::5", "127.0.0.1"})
	if err != nil || len(ips) != 3 || !ips[1].Equal(net.ParseIP("fd00::5")) {
		t.Errorf("ParseIPs: %v %v", ips, err)
	}
	for in, want := range map[string]string{"10.0.0.300": `"10.0.0.300" is not an IP address`, "": "no IP address given", " , ": "no IP address given", "n1": `"n1" is not an IP address`} {
		if _, err := ParseIPs([]string{in}); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("ParseIPs(%q): %v, want %q", in, err, want)
		}
	}
}

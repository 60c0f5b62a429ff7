package lab

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"maps"
	"net"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// agentConfig is node k's DIR/nodes/nK/dvmd.conf, the format dvmd agent reads:
// one `key = value` a line, # comments.
func agentConfig(dir string, k, nodes int, ceph bool, settings map[string]string) string {
	var b strings.Builder
	name, addr := nodeName(k), nodeAddr(k)
	fmt.Fprintf(&b, "# dvm lab node %s: written by vmctl lab up\n", name)
	kv := func(key, value string) { fmt.Fprintf(&b, "%s = %s\n", key, value) }
	kv("name", name)
	kv("libvirt_uri", "qemu:///system")
	kv("advertise_libvirt_uri", libvirtURI(k))
	kv("listen", net.JoinHostPort(addr, strconv.Itoa(AgentPort)))
	kv("data_dir", filepath.Join(dir, "nodes", name, "data"))
	kv("token_file", filepath.Join(dir, "token"))
	// Every lab node is management-capable: n1 forms the cluster, the others join as
	// candidates, and the role machine picks the backups from them.
	kv("management", "true")
	kv("bootstrap", strconv.FormatBool(k == 1))
	kv("credentials_dir", credentialsDir(dir, k))
	kv("master", masterURLs(nodes))
	kv("images_dir", filepath.Join(dir, "shared", "images"))
	kv("disks_dir", filepath.Join(dir, "shared", "disks"))
	// The same lockspace as the node's virtlockd (qemuLockdConf): every restart and twin guest
	// runs under a lock there, the lab's diskless guest too.
	kv("lockspace_dir", filepath.Join(dir, "shared", "locks"))
	kv("reserved_cpus", "0")
	kv("reserved_memory", "256MiB")
	kv("cpu_overcommit", "4")
	kv("memory_overcommit", "1.5")
	kv("accelerator", "tcg")
	kv("labels", fmt.Sprintf("rack=r%d", k))
	// Storage pools, one of each kind: a directory of the node's own, a shared
	// directory (the lab's stand-in for NFS) and, in a lab with Ceph, the lab's Ceph.
	// (dvmd knows pools since 0.3.0, which the rolling upgrade test starts from.)
	kv("pool.local", "kind=dir,path="+filepath.Join(dir, "nodes", name, "pool-local"))
	kv("pool.shared", "kind=shared,path="+filepath.Join(dir, "shared", "pool-shared"))
	if ceph {
		kv("pool."+CephStoragePool, cephPoolConfig(dir))
	}
	if len(settings) > 0 {
		b.WriteString("# set with vmctl lab up --set\n")
		for _, key := range slices.Sorted(maps.Keys(settings)) {
			kv(key, settings[key])
		}
	}
	return b.String()
}

// ParseSettings reads KEY=VALUE pairs (vmctl lab up --set, DVM_LAB_SET) into
// Options.Settings.
func ParseSettings(pairs []string) (map[string]string, error) {
	settings := map[string]string{}
	for _, p := range pairs {
		key, value, ok := strings.Cut(p, "=")
		key, value = strings.TrimSpace(key), strings.TrimSpace(value)
		if !ok || key == "" {
			return nil, fmt.Errorf("--set %q: give KEY=VALUE, such as lease_duration=1s", p)
		}
		if _, dup := settings[key]; dup {
			return nil, fmt.Errorf("--set %s given twice: give each key once", key)
		}
		settings[key] = value
	}
	return settings, nil
}

// checkSettings refuses settings the lab cannot pass on: keys the lab writes itself
// (a second value would be ambiguous), malformed lines, and any file dvmd's own
// parser refuses (Options.ParseConfig: a timing combination that breaks the fencing
// rule, say), so that
// a bad --set fails before the lab changes anything rather than in every node.
func checkSettings(dir string, nodes int, ceph bool, settings map[string]string, parse func(io.Reader) error) error {
	if len(settings) == 0 {
		return nil
	}
	own := map[string]bool{}
	for _, line := range strings.Split(agentConfig(dir, 1, nodes, ceph, nil), "\n") {
		if key, _, ok := strings.Cut(line, " = "); ok && !strings.HasPrefix(line, "#") {
			own[key] = true
		}
	}
	for _, key := range slices.Sorted(maps.Keys(settings)) {
		value := settings[key]
		switch {
		case key == "" || strings.ContainsAny(key, " =#\n\t"):
			return fmt.Errorf("--set %q=%q: a key is a dvmd.conf key such as lease_duration", key, value)
		case own[key]:
			return fmt.Errorf("--set %s: the lab writes %s itself; set another key", key, key)
		case strings.TrimSpace(value) == "" || strings.ContainsAny(value, "\n\r"):
			return fmt.Errorf("--set %s: give a value on one line, such as %s=1s", key, key)
		}
	}
	if parse == nil {
		return nil
	}
	if err := parse(strings.NewReader(agentConfig(dir, 1, nodes, ceph, settings))); err != nil {
		return fmt.Errorf("--set: dvmd would refuse the nodes' config: %w", err)
	}
	return nil
}

// findDvmd resolves the agent binary: path if given, else dvmd next to the running
// executable (vmctl-lab, built into the same bin/ as dvmd), else dvmd in $PATH.
func findDvmd(path string) (string, error) {
	if path != "" {
		abs, err := filepath.Abs(path)
		if err != nil {
			return "", err
		}
		if fi, err := os.Stat(abs); err != nil || fi.IsDir() || fi.Mode()&0o111 == 0 {
			return "", fmt.Errorf("dvmd %s is not an executable file: build it with `go build -o %s ./cmd/dvmd`", abs, abs)
		}
		return abs, nil
	}
	if exe, err := os.Executable(); err == nil {
		p := filepath.Join(filepath.Dir(exe), "dvmd")
		if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
			return p, nil
		}
	}
	if p, err := exec.LookPath("dvmd"); err == nil {
		return filepath.Abs(p)
	}
	return "", errors.New("dvmd not found next to vmctl-lab nor in $PATH: build it (`go build -o /usr/local/bin/dvmd ./cmd/dvmd`) or name it with --dvmd PATH")
}

// apiNode is the part of GET /v1/nodes the lab reads.
type apiNode struct {
	Name  string `json:"name"`
	State string `json:"state"`
}

// waitMaster waits until n1's master answers /v1/health and lists every node.
func (l *Lab) waitMaster(ctx context.Context, timeout time.Duration, token string) error {
	ctx, cancel := context.WithTimeout(ctx, timeout)
	defer cancel()
	client := l.apiClient(&http.Transport{})
	want := len(l.st.Nodes)
	var last string
	for {
		nodes, err := masterNodes(ctx, client, token)
		switch {
		case err != nil:
			last = err.Error()
		case len(nodes) < want:
			last = fmt.Sprintf("master lists %d of %d nodes", len(nodes), want)
		default:
			l.logf("master %s lists %d nodes", MasterURL(), len(nodes))
			return nil
		}
		select {
		case <-ctx.Done():
			n1 := filepath.Join(l.dir, "nodes", "n1", "dvmd.log")
			return fmt.Errorf("master at %s not ready (%s): see the agent logs %s; %s ends:\n%s",
				MasterURL(), last, filepath.Join(l.dir, "nodes", "n*", "dvmd.log"), n1, tail(n1, 5))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// masterNodes asks the master for its health, then for its nodes.
func masterNodes(ctx context.Context, client *http.Client, token string) ([]apiNode, error) {
	req, _ := http.NewRequestWithContext(ctx, http.MethodGet, MasterURL()+"/v1/health", nil)
	resp, err := client.Do(req)
	if err != nil {
		return nil, err
	}
	resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/health: %s", resp.Status)
	}
	req, _ = http.NewRequestWithContext(ctx, http.MethodGet, MasterURL()+"/v1/nodes", nil)
	req.Header.Set("Authorization", "Bearer "+token)
	resp, err = client.Do(req)
	if err != nil {
		return nil, err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return nil, fmt.Errorf("GET /v1/nodes: %s", resp.Status)
	}
	var nodes []apiNode
	if err := json.NewDecoder(resp.Body).Decode(&nodes); err != nil {
		return nil, fmt.Errorf("GET /v1/nodes: %w", err)
	}
	return nodes, nil
}

// waitAgent waits until the node's agent listens on its port.
func (l *Lab) waitAgent(ctx context.Context, n nodeState) error {
	addr := net.JoinHostPort(nodeAddr(n.Index), strconv.Itoa(AgentPort))
	for {
		c, err := dialIn(ctx, n.PID, addr)
		if err == nil {
			c.Close()
			return nil
		}
		select {
		case <-ctx.Done():
			return fmt.Errorf("node %s: agent not listening on %s: see %s", n.Name, addr, filepath.Join(l.nodeDir(n.Name), "dvmd.log"))
		case <-time.After(200 * time.Millisecond):
		}
	}
}

// credentialsDir is where node k's credentials are: DIR/nodes/nK/credentials.
func credentialsDir(dir string, k int) string {
	return filepath.Join(dir, "nodes", nodeName(k), "credentials")
}

// masterURLs lists the API of every management-capable node of an n-node lab: clients
// use the first that answers, and the answer comes from the master wherever it runs.
func masterURLs(n int) string {
	urls := make([]string, 0, n)
	for k := 1; k <= n; k++ {
		urls = append(urls, agentURL(k))
	}
	return strings.Join(urls, ",")
}

// importGuestImage imports the guest image (GuestDir) into the cluster as image
// GuestImage, format kernel, through the master's API as `vmctl image import`
// does: recorded in the replicated state with its SHA-256 and written by the
// master into images_dir. A dvmd from before images (the rolling upgrade test's
// previous release) has no import: the image is then placed in images_dir by
// hand, as operators of that release did.
func (l *Lab) importGuestImage(ctx context.Context, token string) error {
	var archive bytes.Buffer
	if err := api.WriteKernelArchive(&archive, l.GuestDir()); err != nil {
		return fmt.Errorf("guest image: %w", err)
	}
	size := archive.Len()
	req, err := http.NewRequestWithContext(ctx, http.MethodPut,
		MasterURL()+"/v1/images/"+GuestImage+"?"+url.Values{api.ImportFormat: {api.ImageKernel}}.Encode(), &archive)
	if err != nil {
		return err
	}
	req.ContentLength = int64(size)
	req.Header.Set("Authorization", "Bearer "+token)
	req.Header.Set("Content-Type", "application/octet-stream")
	client := l.apiClient(&http.Transport{})
	client.Timeout = time.Minute
	resp, err := client.Do(req)
	if err != nil {
		return fmt.Errorf("import the guest image: %w", err)
	}
	defer resp.Body.Close()
	body, _ := io.ReadAll(io.LimitReader(resp.Body, 64<<10))
	switch {
	case resp.StatusCode == http.StatusNotFound || resp.StatusCode == http.StatusMethodNotAllowed:
		l.logf("guest image: this dvmd imports no images (%s): placed in %s by hand", resp.Status, l.ImageDir())
		return copyDir(l.GuestDir(), l.ImageDir())
	case resp.StatusCode/100 != 2:
		return fmt.Errorf("import the guest image: %s: %s", resp.Status, strings.TrimSpace(string(body)))
	}
	var im api.Image
	if err := json.Unmarshal(body, &im); err != nil || im.State != api.ImageReady {
		return fmt.Errorf("import the guest image: the master answered %s %q", resp.Status, body)
	}
	l.logf("guest image imported as image %s (%s, sha256 %s)", im.Name, im.Format, im.SHA256)
	return nil
}

// copyDir copies the regular files of src into dst, made if missing.
func copyDir(src, dst string) error {
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return err
	}
	ents, err := os.ReadDir(src)
	if err != nil {
		return err
	}
	for _, e := range ents {
		if e.Type().IsRegular() {
			if err := copyFile(filepath.Join(src, e.Name()), filepath.Join(dst, e.Name()), 0o644); err != nil {
				return err
			}
		}
	}
	return nil
}

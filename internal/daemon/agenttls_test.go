package daemon

import (
	"context"
	"crypto/tls"
	"io"
	"log/slog"
	"net"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/config"
)

// TestAgentTrafficNeedsClusterCertificate: the agents' listener speaks only mutual TLS
// with certificates of the cluster's CA: plain HTTP, TLS without a certificate and a
// certificate of another cluster are refused, even with the right token; the node's own
// agent, with its certificate, is served (it registers).
func TestAgentTrafficNeedsClusterCertificate(t *testing.T) {
	dir := t.TempDir()
	uri, err := hypervisor.TestDriverURI(dir, "n1", hypervisor.Capacity{CPUs: 8, MemoryBytes: 16 << 30})
	if err != nil {
		t.Fatal(err)
	}
	cfg := config.Defaults()
	cfg.Name, cfg.Management, cfg.Bootstrap = "n1", true, true
	cfg.LibvirtURI, cfg.AdvertiseLibvirtURI = uri, uri
	cfg.Listen, cfg.Advertise, cfg.RaftListen, cfg.GossipListen, cfg.AgentListen = "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0", "127.0.0.1:0"
	cfg.DataDir, cfg.TokenFile = filepath.Join(dir, "data"), filepath.Join(dir, "data", "token")
	cfg.CredentialsDir = filepath.Join(dir, "creds")
	for _, d := range []string{cfg.CredentialsDir, filepath.Join(dir, "other")} {
		if err := cluster.NewCA(d); err != nil {
			t.Fatal(err)
		}
		if err := cluster.Issue(d, "n1", []net.IP{net.ParseIP("127.0.0.1")}, nil); err != nil {
			t.Fatal(err)
		}
	}
	n, err := StartNode(context.Background(), cfg, slog.New(slog.NewTextHandler(io.Discard, nil)))
	if err != nil {
		t.Fatal(err)
	}
	defer n.Stop()
	c, err := n.Client()
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the node's agent registered over mutual TLS", func() bool {
		var ns []api.Node
		return c.Do(context.Background(), "GET", "/v1/nodes", nil, &ns) == nil && len(ns) == 1 && ns[0].State == api.NodeReady
	})
	get := func(client *http.Client, scheme string) error {
		req, _ := http.NewRequest("GET", scheme+"://"+n.AgentAddr+"/v1/nodes", nil)
		req.Header.Set("Authorization", "Bearer "+n.Token)
		resp, err := client.Do(req)
		if err != nil {
			return err
		}
		resp.Body.Close()
		if resp.StatusCode != 200 {
			return &api.StatusError{Code: resp.StatusCode}
		}
		return nil
	}
	plain := &http.Client{Timeout: 2 * time.Second}
	if err := get(plain, "http"); err == nil {
		t.Fatal("plain HTTP with the token was served on the agents' listener")
	}
	noCert := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: &tls.Config{InsecureSkipVerify: true}}}
	if err := get(noCert, "https"); err == nil {
		t.Fatal("TLS without a client certificate was served")
	}
	other, err := cluster.Load(filepath.Join(dir, "other"), "n1")
	if err != nil {
		t.Fatal(err)
	}
	oc := other.ClientTLS()
	oc.InsecureSkipVerify = true // only the server's check of the client is under test
	foreign := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: oc}}
	if err := get(foreign, "https"); err == nil || strings.Contains(err.Error(), "status") {
		t.Fatalf("a certificate of another cluster was served: %v", err)
	}
	own, err := cluster.Load(cfg.CredentialsDir, "n1")
	if err != nil {
		t.Fatal(err)
	}
	ok := &http.Client{Timeout: 2 * time.Second, Transport: &http.Transport{TLSClientConfig: own.ClientTLS()}}
	if err := get(ok, "https"); err != nil {
		t.Fatalf("the cluster's own certificate was refused: %v", err)
	}
}

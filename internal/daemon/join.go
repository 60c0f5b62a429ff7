package daemon

import (
	"bytes"
	"context"
	"crypto/sha256"
	"crypto/tls"
	"crypto/x509"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"net"
	"net/http"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
)

// JoinOptions say how `dvmd join` makes a new host a node of a cluster.
type JoinOptions struct {
	// Token is the join token `vmctl token create NAME --scope join` printed.
	Token string
	// Masters are the management nodes' API URLs; default: the ones the token names.
	Masters []string
	// Name is the node's name; default: the host name's first label.
	Name string
	// IPs are the addresses the other nodes reach this host at; default: the address
	// this host reaches the first master from.
	IPs        []net.IP
	Management bool
	Labels     map[string]string
	// ConfigFile, CredentialsDir and DataDir are where the node's config, credentials
	// and state go (defaults: /etc/dvm/dvmd.conf, /etc/dvm/credentials, /var/lib/dvm).
	ConfigFile, CredentialsDir, DataDir string
	// CAFile is a CA to check the API's certificate with when the management nodes
	// show an operator's certificate rather than the cluster's; default: the system's.
	CAFile string
}

// Joined is what Join wrote.
type Joined struct {
	Name           string
	IPs            []net.IP
	ConfigFile     string
	CredentialsDir string
}

// Join asks the cluster, with a join token, for this host's credentials — the CA
// certificate, a node certificate for its name and for a key made here (which never
// leaves the host), the gossip key — and writes them and the node's config. Before it
// sends the token's secret it checks that the API it speaks to shows the CA the token
// names (or, with an operator's certificate there, one the system or CAFile trusts). A
// refusal (a wrong, revoked or expired token, a name in use) or any other error writes
// nothing.
func Join(ctx context.Context, o JoinOptions) (Joined, error) {
	tok, err := api.ParseJoinToken(o.Token)
	if err != nil {
		return Joined{}, err
	}
	if err := o.defaults(tok); err != nil {
		return Joined{}, err
	}
	if _, err := os.Stat(o.ConfigFile); err == nil {
		return Joined{}, fmt.Errorf("%s exists: this host has a config already; move it away, or give another with --config", o.ConfigFile)
	}
	if len(o.IPs) == 0 {
		ip, err := localIPToward(o.Masters[0])
		if err != nil {
			return Joined{}, err
		}
		o.IPs = []net.IP{ip}
	}
	key, csr, err := cluster.NodeRequest(o.Name)
	if err != nil {
		return Joined{}, err
	}
	req := api.HostJoinRequest{Name: o.Name, CSR: string(csr)}
	for _, ip := range o.IPs {
		req.IPs = append(req.IPs, ip.String())
	}
	var roots *x509.CertPool
	if o.CAFile != "" {
		b, err := os.ReadFile(o.CAFile)
		if err != nil {
			return Joined{}, fmt.Errorf("--ca: %w", err)
		}
		roots = x509.NewCertPool()
		if !roots.AppendCertsFromPEM(b) {
			return Joined{}, fmt.Errorf("--ca %s holds no PEM certificate", o.CAFile)
		}
	}
	creds, err := askCredentials(ctx, o.Masters, tok, roots, req)
	if err != nil {
		return Joined{}, err
	}
	if err := cluster.WriteJoined(o.CredentialsDir, o.Name, key, []byte(creds.CACert), []byte(creds.Certificate), creds.GossipKey, tok.CA); err != nil {
		return Joined{}, err
	}
	if err := writeNew(o.ConfigFile, joinedConfig(o)); err != nil {
		// All or nothing: the credentials just written go again.
		for _, f := range []string{cluster.CACertFile, cluster.GossipKeyFile, cluster.NodeCertFile(o.Name), cluster.NodeKeyFile(o.Name)} {
			os.Remove(filepath.Join(o.CredentialsDir, f))
		}
		return Joined{}, err
	}
	return Joined{Name: o.Name, IPs: o.IPs, ConfigFile: o.ConfigFile, CredentialsDir: o.CredentialsDir}, nil
}

func (o *JoinOptions) defaults(tok api.JoinToken) error {
	if len(o.Masters) == 0 {
		o.Masters = tok.Masters
	}
	if len(o.Masters) == 0 {
		return errors.New("the join token names no management node: give one with --master https://ADDR:7460")
	}
	for _, m := range o.Masters {
		if u, err := url.Parse(m); err != nil || u.Scheme != "https" || u.Host == "" {
			return fmt.Errorf("--master %q is not an https URL such as https://10.0.0.11:7460", m)
		}
	}
	if o.Name == "" {
		host, err := os.Hostname()
		if err != nil {
			return fmt.Errorf("host name: %w: give the node's name with --name", err)
		}
		o.Name = strings.ToLower(strings.SplitN(host, ".", 2)[0])
	}
	if err := cluster.ValidateNodeName(o.Name); err != nil {
		return fmt.Errorf("%w (give one with --name)", err)
	}
	o.ConfigFile = orDefault(o.ConfigFile, "/etc/dvm/dvmd.conf")
	o.CredentialsDir = orDefault(o.CredentialsDir, "/etc/dvm/credentials")
	o.DataDir = orDefault(o.DataDir, "/var/lib/dvm")
	return nil
}

func orDefault(s, def string) string {
	if s == "" {
		return def
	}
	return s
}

// localIPToward is the address this host reaches a URL's host from (no packet is sent).
func localIPToward(rawURL string) (net.IP, error) {
	u, _ := url.Parse(rawURL)
	port := u.Port()
	if port == "" {
		port = "443"
	}
	c, err := net.Dial("udp", net.JoinHostPort(u.Hostname(), port))
	if err != nil {
		return nil, fmt.Errorf("find this host's address toward %s: %w: give it with --ip", u.Host, err)
	}
	defer c.Close()
	return c.LocalAddr().(*net.UDPAddr).IP, nil
}

// joinTLS checks a management node's certificate before the token's secret is sent:
// it must chain to the CA the token names (which the API shows after its own
// certificate), or, for an operator's certificate, to roots (nil: the system's) for
// host.
func joinTLS(caHash [32]byte, roots *x509.CertPool, host string) *tls.Config {
	return &tls.Config{
		MinVersion:         tls.VersionTLS12,
		InsecureSkipVerify: true, // verified below, against the token's CA or roots
		VerifyConnection: func(cs tls.ConnectionState) error {
			if len(cs.PeerCertificates) == 0 {
				return errors.New("no certificate shown")
			}
			inter := x509.NewCertPool()
			for _, c := range cs.PeerCertificates[1:] {
				if sha256.Sum256(c.Raw) == caHash && c.IsCA {
					pool := x509.NewCertPool()
					pool.AddCert(c)
					_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: pool})
					return err
				}
				inter.AddCert(c)
			}
			_, err := cs.PeerCertificates[0].Verify(x509.VerifyOptions{Roots: roots, Intermediates: inter, DNSName: host})
			if err != nil {
				return fmt.Errorf("it shows neither the CA the join token names nor a certificate this host trusts (%w): check --master, or give the CA of the API's certificate with --ca", err)
			}
			return nil
		},
	}
}

// askCredentials sends the request to the first management node that answers.
func askCredentials(ctx context.Context, masters []string, tok api.JoinToken, roots *x509.CertPool, req api.HostJoinRequest) (api.HostCredentials, error) {
	body, _ := json.Marshal(req)
	var errs []string
	for _, m := range masters {
		u, _ := url.Parse(m)
		client := &http.Client{Timeout: 30 * time.Second, Transport: &http.Transport{
			TLSClientConfig: joinTLS(tok.CA, roots, u.Hostname()),
			DialContext:     (&net.Dialer{Timeout: 5 * time.Second}).DialContext,
		}}
		hreq, err := http.NewRequestWithContext(ctx, "POST", strings.TrimRight(m, "/")+"/v1/cluster/credentials", bytes.NewReader(body))
		if err != nil {
			return api.HostCredentials{}, err
		}
		hreq.Header.Set("Authorization", "Bearer "+tok.Secret)
		hreq.Header.Set("Content-Type", "application/json")
		resp, err := client.Do(hreq)
		if err != nil {
			errs = append(errs, fmt.Sprintf("%s: %v", m, err))
			continue
		}
		data, _ := io.ReadAll(io.LimitReader(resp.Body, 1<<20))
		resp.Body.Close()
		if resp.StatusCode == http.StatusServiceUnavailable || resp.StatusCode == http.StatusBadGateway {
			errs = append(errs, fmt.Sprintf("%s: %s", m, strings.TrimSpace(string(data))))
			continue
		}
		if resp.StatusCode != http.StatusOK {
			var e api.Error
			if json.Unmarshal(data, &e) != nil || e.Error == "" {
				e.Error = resp.Status
			}
			return api.HostCredentials{}, fmt.Errorf("the cluster refused to let %s join: %s", req.Name, e.Error)
		}
		var creds api.HostCredentials
		if err := json.Unmarshal(data, &creds); err != nil {
			return api.HostCredentials{}, fmt.Errorf("%s answered what is not a host's credentials: %w", m, err)
		}
		return creds, nil
	}
	return api.HostCredentials{}, fmt.Errorf("no management node answered: %s", strings.Join(errs, "; "))
}

// joinedConfig is the node's dvmd.conf.
func joinedConfig(o JoinOptions) string {
	var b strings.Builder
	fmt.Fprintf(&b, "# dvmd node configuration, written by dvmd join on %s.\n", time.Now().UTC().Format(time.RFC3339))
	b.WriteString("# Every key is in docs/operator-guide.md; add images_dir and disks_dir (shared storage) before starting dvmd.\n")
	kv := func(k, v string) { fmt.Fprintf(&b, "%s = %s\n", k, v) }
	ip := o.IPs[0].String()
	kv("name", o.Name)
	kv("listen", net.JoinHostPort(ip, "7460"))
	kv("advertise_libvirt_uri", "qemu+tls://"+hostForURL(o.IPs[0])+"/system")
	kv("credentials_dir", o.CredentialsDir)
	kv("data_dir", o.DataDir)
	kv("management", fmt.Sprint(o.Management))
	kv("master", strings.Join(o.Masters, ","))
	if len(o.Labels) > 0 {
		kv("labels", api.FormatLabels(o.Labels))
	}
	return b.String()
}

func hostForURL(ip net.IP) string {
	if ip.To4() == nil {
		return "[" + ip.String() + "]"
	}
	return ip.String()
}

// writeNew writes a file that must not exist yet (mode 0644, its directory 0700).
func writeNew(path, body string) error {
	if err := os.MkdirAll(filepath.Dir(path), 0o700); err != nil {
		return err
	}
	f, err := os.OpenFile(path, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return fmt.Errorf("%s exists: move it away, or give another with --config", path)
		}
		return err
	}
	if _, err := f.WriteString(body); err != nil {
		f.Close()
		os.Remove(path)
		return err
	}
	return f.Close()
}

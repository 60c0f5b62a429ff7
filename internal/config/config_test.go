package config

import (
	"strings"
	"testing"
	"time"
)

func TestParseFull(t *testing.T) {
	n, err := Parse(strings.NewReader(`
# a lab node
name = n2
libvirt_uri = qemu:///system
advertise_libvirt_uri = qemu+tcp://10.77.0.12/system   # peers migrate here
listen = 10.77.0.12:7460
data_dir = /lab/n2
token_file = /lab/token
master = http://10.77.0.11:7460,http://10.77.0.12:7460
images_dir = /lab/shared/images
disks_dir = /lab/shared/disks	# a tab before a comment
lockspace_dir = /lab/run#2/shared/locks # a '#' inside a value is kept
reserved_cpus = 0
reserved_memory = 256MiB
cpu_overcommit = 4
memory_overcommit = 1.5
accelerator = tcg
labels = rack=r2,zone=z1
shutdown_timeout = 10s
`))
	if err != nil {
		t.Fatal(err)
	}
	if n.Name != "n2" || n.Share.ReservedMemoryBytes != 256<<20 || n.Share.MemoryOvercommit != 1.5 || n.Labels["rack"] != "r2" ||
		n.ShutdownTimeout != 10*time.Second || n.Advertise != "10.77.0.12:7460" || n.Accelerator != "tcg" || n.LockspaceDir != "/lab/run#2/shared/locks" || n.DisksDir != "/lab/shared/disks" {
		t.Fatalf("parsed %+v", n)
	}
}

func TestParseErrorsNameKeyAndLine(t *testing.T) {
	cases := map[string]string{
		"name = n1\nmaster = http://m:7460\ncolour = blue\n":                  "line 3: colour: unknown key",
		"name = n1\nmaster = http://m:7460\nreserved_memory = lots":           "line 3: reserved_memory",
		"name = n1\nname = n2\nmaster = http://m:7460":                        "line 2: key name already set on line 1",
		"name = N_1\nmaster = http://m:7460":                                  "line 1: name",
		"name = n1\nmaster = http://m:7460\ncpu_overcommit = 0.5":             "line 3: cpu_overcommit",
		"name = n1\nmaster = http://m:7460\naccelerator = xen":                "line 3: accelerator",
		"name = n1\nmaster = ftp://m":                                         "line 2: master",
		"name = n1\nmaster = http://m:7460\njust words":                       "line 3",
		"name = n1\nmaster = http://m:7460\nmanagement = maybe":               "line 3: management",
		"name = n1\nmaster = http://m:7460\nlabels = rack":                    "line 3: labels",
		"name = n1\nmaster = http://m:7460\nshutdown_timeout = -1s":           "line 3: shutdown_timeout",
		"name = n1\nmaster = http://m:7460\nlockspace_dir = locks":            "line 3: lockspace_dir",
		"name = n1\nmaster = http://m:7460\nlockspace_dir = /srv/locks/":      "line 3: lockspace_dir",
		"name = n1\nmaster = http://m:7460\ndisks_dir = disks":                "line 3: disks_dir",
		"name = n1\nmaster = http://m:7460\ndata_dir = ./dvm":                 "line 3: data_dir",
		"name = n1\nmaster = http://m:7460\ngossip_suspicion_mult = 0":        "line 3: gossip_suspicion_mult",
		"name = n1\nmaster = http://m:7460\ngossip_probe_interval = soon":     "line 3: gossip_probe_interval",
		"name = n1\nmaster = http://m:7460\ngossip_probe_timeout = 300ms":     "gossip_probe_timeout 300ms is not below gossip_probe_interval 300ms",
		"master = http://m:7460":                                              "name is required",
		"name = n1":                                                           "master is required",
		"name = n1\nmaster = https://m:7460\napi_tls_cert = /etc/dvm/api.crt": "api_tls_cert and api_tls_key go together",
		"name = n1\nlabels = " + strings.Repeat("a", 70000):                   "line 2: longer than 64 KiB",
	}
	for in, want := range cases {
		_, err := Parse(strings.NewReader(in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", in, err, want)
		}
	}
}

// TestShippedExampleParses keeps configs/dvmd.conf, the documented reference, valid.
func TestShippedExampleParses(t *testing.T) {
	n, err := Load("../../configs/dvmd.conf")
	if err != nil {
		t.Fatal(err)
	}
	if n.Name != "n1" || n.Share.CPUOvercommit != 4 || n.Labels["zone"] != "z1" {
		t.Fatalf("parsed %+v", n)
	}
}

// The automatic balancer's keys: off by default; a bad value or a combination that
// breaks a rule stops dvmd with the key and the rule.
func TestParseBalance(t *testing.T) {
	const base = "name = n1\nmanagement = true\n"
	n, err := Parse(strings.NewReader(base))
	if err != nil || n.Balance.On() {
		t.Fatalf("default: %+v %v; want the balancer off", n.Balance, err)
	}
	n, err = Parse(strings.NewReader(base + "balance_threshold = 25%\nbalance_target = 10\nbalance_interval = 30s\nbalance_cooldown = 10m\n"))
	if err != nil || n.Balance.Threshold != 0.25 || n.Balance.Target != 0.10 || n.Balance.Interval != 30*time.Second || n.Balance.Cooldown != 10*time.Minute {
		t.Fatalf("parsed %+v, %v", n.Balance, err)
	}
	cases := map[string]string{
		"balance_threshold = lots\n":                                                `line 3: balance_threshold: "lots" is not a percentage such as 25%`,
		"balance_threshold = 3%\n":                                                  "balance_threshold: 3% must be 0 (off) or from 5% to 100%",
		"balance_threshold = 20%\nbalance_target = 30%\n":                           "balance_target: 30% must be at least 0% and below balance_threshold (20%)",
		"balance_threshold = 20%\nbalance_interval = 1m\nbalance_cooldown = 30s\n":  "balance_cooldown: 30s must be at least balance_interval (1m0s)",
		"balance_interval = 0s\n":                                                   `line 3: balance_interval: "0s" is not a positive duration`,
		"balance_threshold = 20%\nbalance_interval = 48h\nbalance_cooldown = 72h\n": "balance_interval: 48h0m0s must be from 1s to 24h",
	}
	for in, want := range cases {
		if _, err := Parse(strings.NewReader(base + in)); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", in, err, want)
		}
	}
}

func TestPowerFenceKeys(t *testing.T) {
	n, err := Parse(strings.NewReader("name = n1\nmanagement = true\npower_fence_agent = /usr/sbin/fence_ipmilan\n"))
	if err != nil {
		t.Fatal(err)
	}
	if n.PowerFence.Agent != "/usr/sbin/fence_ipmilan" || n.PowerFence.Action != "reboot" || n.PowerFence.After != n.Timing.WithDefaults().LeaseDuration {
		t.Fatalf("defaults: %+v", n.PowerFence)
	}
	n, err = Parse(strings.NewReader("name = n1\nmanagement = true\npower_fence_agent = /x/agent\npower_fence_after = 700ms\npower_fence_action = off\npower_fence_options_dir = /etc/dvm/fence\n"))
	if err != nil || n.PowerFence != (PowerFence{Agent: "/x/agent", After: 700 * time.Millisecond, Action: "off", OptionsDir: "/etc/dvm/fence"}) {
		t.Fatalf("all keys: %+v, %v", n.PowerFence, err)
	}
	for _, tc := range []struct{ text, want string }{
		{"name = n1\nmanagement = true\npower_fence_agent = fence_ipmilan\n", "not an absolute path"},
		{"name = n1\nmanagement = true\npower_fence_agent = /x/agent\npower_fence_action = cycle\n", "not reboot or off"},
		{"name = n1\nmanagement = true\npower_fence_agent = /x/agent\npower_fence_after = 100ms\n", "shorter than two renew_interval"},
		{"name = n1\nmanagement = true\npower_fence_after = 1s\n", "need power_fence_agent"},
	} {
		if _, err := Parse(strings.NewReader(tc.text)); err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want an error naming %q", tc.text, err, tc.want)
		}
	}
}

package cloudinit

import (
	"bytes"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
)

var seed = Seed{InstanceID: "5c338286-c360-4b65-a1c1-a97ca933a4a1", Hostname: "web",
	SSHKeys:  []string{"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDvm you@host", `ssh-rsa AAAAB3Nza "quoted" comment`},
	UserData: "#cloud-config\npackages: [nginx]\n",
	NICs:     []NIC{{MAC: "52:54:00:AA:BB:01", Address: "10.1.0.2/24"}, {MAC: "52:54:00:aa:bb:02"}}}

// TestSeedFiles: meta-data names the instance, hostname and keys; network-config
// matches each NIC by its MAC, with its address or DHCP; user-data is as given, or
// an empty #cloud-config; without NICs there is no network-config.
func TestSeedFiles(t *testing.T) {
	files := map[string]string{}
	for _, f := range seed.Files() {
		files[f.Name] = string(f.Data)
	}
	wantMeta := "instance-id: \"5c338286-c360-4b65-a1c1-a97ca933a4a1\"\nlocal-hostname: \"web\"\npublic-keys:\n" +
		"  - \"ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDvm you@host\"\n  - \"ssh-rsa AAAAB3Nza \\\"quoted\\\" comment\"\n"
	wantNet := "version: 2\nethernets:\n  nic0:\n    match:\n      macaddress: \"52:54:00:aa:bb:01\"\n    addresses:\n      - \"10.1.0.2/24\"\n" +
		"  nic1:\n    match:\n      macaddress: \"52:54:00:aa:bb:02\"\n    dhcp4: true\n"
	if files["meta-data"] != wantMeta || files["network-config"] != wantNet || files["user-data"] != seed.UserData {
		t.Fatalf("files:\n%s", files)
	}
	bare := Seed{InstanceID: "i", Hostname: "h"}
	names := []string{}
	for _, f := range bare.Files() {
		names = append(names, f.Name+"="+string(f.Data))
	}
	if strings.Join(names, " ") != "meta-data=instance-id: \"i\"\nlocal-hostname: \"h\"\n user-data=#cloud-config\n{}\n" {
		t.Fatalf("bare seed: %q", names)
	}
}

// TestSeedISO: the seed's image is read by libarchive (bsdtar) with its Joliet names
// and contents, and blkid finds it labelled cidata as cloud-init looks for it; the
// same seed makes the same bytes; a bad label or file name is refused.
func TestSeedISO(t *testing.T) {
	var a, b bytes.Buffer
	if err := seed.WriteISO(&a); err != nil {
		t.Fatal(err)
	}
	seed.WriteISO(&b)
	if !bytes.Equal(a.Bytes(), b.Bytes()) || a.Len()%2048 != 0 || string(a.Bytes()[0x8001:0x8006]) != "CD001" {
		t.Fatalf("image of %d bytes, the same twice: %v", a.Len(), bytes.Equal(a.Bytes(), b.Bytes()))
	}
	file := filepath.Join(t.TempDir(), "seed.iso")
	if err := os.WriteFile(file, a.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	// The readers are Debian's (util-linux, libarchive-tools, which scripts/test
	// installs): missing, they fail the test in CI and are passed over elsewhere.
	have := func(tool, pkg string) bool {
		if _, err := exec.LookPath(tool); err == nil {
			return true
		}
		if os.Getenv("CI") == "true" {
			t.Errorf("no %s (Debian: apt-get install %s)", tool, pkg)
		} else {
			t.Logf("no %s (Debian: apt-get install %s): not read back with it", tool, pkg)
		}
		return false
	}
	if have("blkid", "util-linux") {
		out, err := exec.Command("blkid", "-p", "-o", "value", "-s", "LABEL", file).CombinedOutput()
		if err != nil || strings.TrimSpace(string(out)) != "cidata" {
			t.Errorf("blkid: %v: %s", err, out)
		}
	}
	if have("bsdtar", "libarchive-tools") {
		out, err := exec.Command("bsdtar", "-tf", file).CombinedOutput()
		if err != nil || strings.Join(strings.Fields(string(out)), " ") != ". meta-data network-config user-data" {
			t.Fatalf("bsdtar -t: %v: %s", err, out)
		}
		for _, f := range seed.Files() {
			got, err := exec.Command("bsdtar", "-xOf", file, f.Name).Output()
			if err != nil || !bytes.Equal(got, f.Data) {
				t.Errorf("%s read back as %q (%v), want %q", f.Name, got, err, f.Data)
			}
		}
	}

	for _, bad := range []struct {
		label string
		files []File
		want  string
	}{
		{"", nil, "iso label"},
		{"a-label-longer-than-16", nil, "iso label"},
		{"cidata", []File{{Name: "a/b"}}, "without '/'"},
		{"cidata", []File{{Name: "meta-data"}, {Name: "meta_data"}}, "the same ISO 9660 name"},
	} {
		if err := WriteISO(&b, bad.label, bad.files); err == nil || !strings.Contains(err.Error(), bad.want) {
			t.Errorf("%q %v: %v, want %q", bad.label, bad.files, err, bad.want)
		}
	}
}

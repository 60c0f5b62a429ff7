package api

import (
	"strings"
	"testing"
)

// TestCloudInitChecked: a seed is refused for an OS profile without cloud-init (the
// DragonFly one saying what it does instead), and for keys or user data cloud-init
// could not take, each naming the field; a good one passes.
func TestCloudInitChecked(t *testing.T) {
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDvm you@host"
	for _, b := range []struct {
		os    string
		ci    CloudInit
		field string
		text  string
	}{
		{"dragonfly", CloudInit{}, "cloud_init", "DragonFly BSD has no cloud-init: the guest configures itself from its image"},
		{"", CloudInit{}, "cloud_init", "os dragonfly: DragonFly BSD has no cloud-init"},
		{"openbsd", CloudInit{}, "cloud_init", "makes no cloud-init seed"},
		{"linux", CloudInit{SSHKeys: []string{"-----BEGIN OPENSSH PRIVATE KEY-----"}}, "cloud_init.ssh_keys", "not an SSH public key"},
		{"linux", CloudInit{SSHKeys: []string{key + "\n" + key}}, "cloud_init.ssh_keys", "one public key a line"},
		{"linux", CloudInit{SSHKeys: make([]string, MaxSSHKeys+1)}, "cloud_init.ssh_keys", "at most 16"},
		{"linux", CloudInit{UserData: "packages: [nginx]\n"}, "cloud_init.user_data", "begin it with #cloud-config"},
		{"linux", CloudInit{UserData: "#cloud-config\n" + strings.Repeat("x", MaxUserData)}, "cloud_init.user_data", "at most"},
		{"linux", CloudInit{UserData: "#!/bin/sh\n\xff"}, "cloud_init.user_data", "not UTF-8"},
	} {
		c := CreateGuest{Name: "web", OS: b.os, CPUs: 1, MemoryBytes: 1 << 30, CloudInit: &b.ci}
		fe := c.Normalize()
		if fe == nil || fe.Field != b.field || !strings.Contains(fe.Msg, b.text) {
			t.Errorf("%s %+v: %v, want %s: …%s…", b.os, b.ci, fe, b.field, b.text)
		}
	}
	for _, os := range []string{"linux", "freebsd"} {
		c := CreateGuest{Name: "web", OS: os, CPUs: 1, MemoryBytes: 1 << 30,
			CloudInit: &CloudInit{SSHKeys: []string{key}, UserData: "#cloud-config\npackages: [nginx]\n"}}
		if fe := c.Normalize(); fe != nil {
			t.Errorf("%s: %v", os, fe)
		}
	}
}

package master

import (
	"context"
	"encoding/json"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// TestCloudInitCreate: a linux guest with a cloud-init seed keeps its keys and user
// data in its record and its node's assignment; the guest's answer shows the keys and
// the user data's length, never the user data; a DragonFly guest is refused with what
// it does instead, and a bad key with the field, nothing created; a node of an older
// dvmd refuses the create.
func TestCloudInitCreate(t *testing.T) {
	m, c := capacityMaster(t, Options{})
	ctx := context.Background()
	report(t, c, "n1", 8, 16)
	key := "ssh-ed25519 AAAAC3NzaC1lZDI1NTE5AAAAIDvm you@host"
	secret := "#cloud-config\nchpasswd: {list: 'root:s3cret-pw'}\n"
	var raw json.RawMessage
	req := api.CreateGuest{Name: "web", OS: "linux", CPUs: 1, MemoryBytes: 1 << 30, CloudInit: &api.CloudInit{SSHKeys: []string{key}, UserData: secret}}
	if err := c.Do(ctx, "POST", "/v1/guests", req, &raw); err != nil {
		t.Fatal(err)
	}
	var g api.Guest
	json.Unmarshal(raw, &g)
	if strings.Contains(string(raw), "s3cret") || g.CloudInit == nil || g.CloudInit.UserDataBytes != len(secret) || len(g.CloudInit.SSHKeys) != 1 {
		t.Fatalf("create answered %s", raw)
	}
	if rec, _ := m.st.Guest("web"); rec.CloudInit == nil || rec.CloudInit.UserData != secret || rec.CloudInit.SSHKeys[0] != key {
		t.Fatalf("record %+v", rec.CloudInit)
	}
	for _, ag := range m.Assignment(ctx, "n1", 0, 0).Guests {
		if ag.Name == "web" && (ag.CloudInit == nil || ag.CloudInit.UserData != secret) {
			t.Fatalf("assignment %+v", ag.CloudInit)
		}
	}
	var events json.RawMessage
	c.Do(ctx, "GET", "/v1/events", nil, &events)
	if strings.Contains(string(events), "s3cret") {
		t.Fatalf("the user data is in an event: %s", events)
	}

	for _, b := range []struct {
		what, os, field, text string
		ci                    api.CloudInit
	}{
		{"dragonfly", "dragonfly", "cloud_init", "DragonFly BSD has no cloud-init", api.CloudInit{}},
		{"a private key", "linux", "cloud_init.ssh_keys", "not an SSH public key", api.CloudInit{SSHKeys: []string{"-----BEGIN OPENSSH PRIVATE KEY-----"}}},
	} {
		_, err := createSmall(c, api.CreateGuest{Name: "x", OS: b.os, CloudInit: &b.ci})
		refusal{what: b.what, code: 400, field: b.field, text: b.text}.check(t, m, err)
	}
	putNode(t, m, store.NodeRecord{Name: "old", CPUs: 4, MemoryBytes: 8 << 30, Version: "0.2.0-dev"})
	err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "x", OS: "linux", CPUs: 1, MemoryBytes: 1 << 30, CloudInit: &api.CloudInit{}}, nil)
	wantStatus(t, "a seed with a 0.2.0-dev node", err, 409, "node old runs 0.2.0-dev")
}

package main

import (
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

func TestProtectionLine(t *testing.T) {
	for _, tc := range []struct {
		p    api.Protection
		want string
	}{
		{api.Protection{State: api.ProtectionProtected, Node: "n3"}, "protected"},
		{api.Protection{State: api.ProtectionSyncing, Node: "n3", Done: 1 << 29, Total: 1 << 30}, "syncing 512MiB of 1GiB (50%) to n3"},
		{api.Protection{State: api.ProtectionSyncing}, "syncing"},
		{api.Protection{State: api.ProtectionUnprotected, Reason: "no node can hold its standby now"}, "unprotected: no node can hold its standby now"},
	} {
		if got := protectionLine(tc.p); got != tc.want {
			t.Errorf("protectionLine(%+v) = %q, want %q", tc.p, got, tc.want)
		}
	}
}

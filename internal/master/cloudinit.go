package master

import (
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// A guest created with --cloud-init keeps what its seed holds (SSH keys, user data)
// in the replicated state; its node makes the seed (internal/cloudinit) each time it
// defines the guest, from that and the guest's name, UUID and NICs, so a guest
// restarted elsewhere gets the same seed.

// cloudInit is what a guest's node needs to make its cloud-init seed; nil for none.
func cloudInit(g store.GuestRecord) *api.CloudInit {
	if g.CloudInit == nil {
		return nil
	}
	return &api.CloudInit{SSHKeys: g.CloudInit.SSHKeys, UserData: g.CloudInit.UserData}
}

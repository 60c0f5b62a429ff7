package agent

import (
	"errors"
	"net/netip"
	"strings"
	"syscall"
	"testing"

	"github.com/dvmproject/dvm/hypervisor"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/netplane"
)

func netAssignment() api.Assignment {
	return api.Assignment{
		Guests: []api.AssignedGuest{
			{Name: "a", NICs: []api.AssignedNIC{{Network: "blue", VNI: 42, MAC: "52:54:00:00:00:0a", IP: "192.168.42.1/24"}}},
			{Name: "b", NICs: []api.AssignedNIC{{Network: "red", VNI: 7, MAC: "52:54:00:00:00:0b", IP: "10.7.0.1/16"}}},
			{Name: "plain"},
		},
		Net: &api.NetAssignment{
			Networks: []api.AssignedNetwork{{Name: "red", VNI: 7, CIDR: "10.7.0.0/16", MTU: 1400}, {Name: "blue", VNI: 42, CIDR: "192.168.42.0/24"}},
			Peers:    []string{"10.77.0.12", "10.77.0.11"},
			Endpoints: []api.Endpoint{
				{Network: "blue", Guest: "c", MAC: "52:54:00:00:00:0c", IP: "192.168.42.3", Node: "n2", VTEP: "10.77.0.12"},
				{Network: "blue", Guest: "self", MAC: "52:54:00:00:00:0d", Node: "n1", VTEP: "10.77.0.11"},
			},
		},
	}
}

func TestDesiredFromAssignment(t *testing.T) {
	a := &Agent{cfg: Config{Name: "n1", Address: "10.77.0.11:7460"}}
	d, err := a.desired(netAssignment())
	if err != nil {
		t.Fatal(err)
	}
	if d.LocalVTEP != netip.MustParseAddr("10.77.0.11") {
		t.Errorf("local VTEP %v; want the host of the advertised address", d.LocalVTEP)
	}
	if len(d.Networks) != 2 || d.Networks[0].MTU != 1400 || d.Networks[1].CIDR.String() != "192.168.42.0/24" {
		t.Errorf("networks %+v", d.Networks)
	}
	if len(d.Peers) != 1 || d.Peers[0].String() != "10.77.0.12" {
		t.Errorf("peers %v; want only the other node (this node's own VTEP dropped)", d.Peers)
	}
	if len(d.Endpoints) != 1 || d.Endpoints[0].MAC.String() != "52:54:00:00:00:0c" || d.Endpoints[0].IP.String() != "192.168.42.3" {
		t.Errorf("endpoints %+v; want c only", d.Endpoints)
	}
	if d, err := a.desired(api.Assignment{}); err != nil || d.LocalVTEP.IsValid() || len(d.Networks) != 0 {
		t.Errorf("no networks: %+v %v; want the zero Desired (remove ours)", d, err)
	}
	bad := &Agent{cfg: Config{Name: "n1", Address: ":7460"}}
	if _, err := bad.desired(netAssignment()); err == nil || !strings.Contains(err.Error(), "tunnel address") {
		t.Errorf("no host in the advertised address: %v", err)
	}
	asg := netAssignment()
	asg.Net.Endpoints[0].MAC = "zz"
	if _, err := a.desired(asg); err == nil || !strings.Contains(err.Error(), "guest c") {
		t.Errorf("bad MAC: %v; want an error naming the guest", err)
	}
}

func TestGuestNetErrors(t *testing.T) {
	err := errors.Join(
		&netplane.OpError{Op: "replace", Object: "fdb 52:54:00:00:00:0c→10.77.0.12", Device: "dvmvx42", Err: syscall.EPERM},
		&netplane.OpError{Op: "set", Object: "mtu 1400", Device: "dvmbr7", Err: syscall.EINVAL},
	)
	got := guestNetErrors(netAssignment(), err)
	if !strings.Contains(got["a"], "dvmvx42") || strings.Contains(got["a"], "dvmbr7") {
		t.Errorf("a: %q; want only blue's (VNI 42) failure", got["a"])
	}
	if !strings.Contains(got["b"], "dvmbr7") || strings.Contains(got["b"], "dvmvx42") {
		t.Errorf("b: %q; want only red's (VNI 7) failure", got["b"])
	}
	if _, ok := got["plain"]; ok {
		t.Errorf("a guest without NICs got a network error")
	}
	got = guestNetErrors(netAssignment(), errors.New("node n1 has no tunnel address"))
	if got["a"] == "" || got["b"] == "" || got["plain"] != "" {
		t.Errorf("an error about no device: %v; want it on every guest with a NIC", got)
	}
	if v, ok := deviceVNI("dvmvx16777215"); !ok || v != 16777215 {
		t.Errorf("deviceVNI: %d %v", v, ok)
	}
	for _, d := range []string{"eth0", "dvmbr", "dvmbr042", "dvmxx1"} {
		if _, ok := deviceVNI(d); ok {
			t.Errorf("deviceVNI(%q) accepted", d)
		}
	}
}

func TestAttachNICs(t *testing.T) {
	a := &Agent{}
	a.net.mtu = map[uint32]int{42: 1450}
	g := netAssignment().Guests[0]
	spec := hypervisor.GuestSpec{Boot: &hypervisor.DirectBoot{Kernel: "/k", Cmdline: "console=ttyS0"}}
	a.attachNICs(&spec, g)
	if len(spec.NICs) != 1 || spec.NICs[0] != (hypervisor.NIC{Bridge: "dvmbr42", MAC: "52:54:00:00:00:0a", MTU: 1450}) {
		t.Errorf("NICs %+v", spec.NICs)
	}
	if spec.Boot.Cmdline != "console=ttyS0 dvm.ip=192.168.42.1/24" {
		t.Errorf("cmdline %q; want the address appended", spec.Boot.Cmdline)
	}
	disk := hypervisor.GuestSpec{}
	a.attachNICs(&disk, g)
	if len(disk.NICs) != 1 || disk.Boot != nil {
		t.Errorf("disk guest: %+v", disk)
	}
}

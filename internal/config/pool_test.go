package config

import (
	"strings"
	"testing"
)

func TestParsePools(t *testing.T) {
	n, err := Parse(strings.NewReader(`name = n1
master = https://m:7460
pool.local = kind=dir,path=/srv/dvm/local
pool.nfs = kind=shared, path=/mnt/nfs/dvm/
pool.ceph = kind=rbd,monitors=10.0.0.5:6789;10.0.0.6:6789,rbd_pool=vms,client=client.dvm,keyring=/etc/ceph/ceph.client.dvm.keyring
`))
	if err != nil {
		t.Fatal(err)
	}
	if len(n.Pools) != 3 || n.Pools[0].Name != "ceph" || n.Pools[1].Name != "local" || n.Pools[2].Name != "nfs" {
		t.Fatalf("pools %+v, want ceph, local, nfs", n.Pools)
	}
	ceph, _ := n.Pool("ceph")
	if ceph.Kind != PoolRBD || strings.Join(ceph.Monitors, " ") != "10.0.0.5:6789 10.0.0.6:6789" || ceph.RBDPool != "vms" ||
		ceph.Client != "dvm" || ceph.Keyring != "/etc/ceph/ceph.client.dvm.keyring" {
		t.Fatalf("ceph pool %+v", ceph)
	}
	if nfs, _ := n.Pool("nfs"); nfs.Kind != PoolShared || nfs.Path != "/mnt/nfs/dvm" {
		t.Fatalf("nfs pool %+v", nfs)
	}
	if k := n.PoolKinds(); k["local"] != "dir" || k["nfs"] != "shared" || k["ceph"] != "rbd" {
		t.Fatalf("kinds %v", k)
	}
}

func TestPoolErrorsNameWhatIsWrong(t *testing.T) {
	head := "name = n1\nmaster = https://m:7460\n"
	rbd := "kind=rbd,monitors=10.0.0.5:6789,rbd_pool=vms,client=dvm"
	for in, want := range map[string]string{
		"pool.ceph = " + rbd:                                                    "line 3: pool.ceph: a pool of kind rbd needs keyring",
		"pool.ceph = " + rbd + ",keyring=ceph.keyring":                          "line 3: pool.ceph: keyring: \"ceph.keyring\" is not an absolute path",
		"pool.ceph = kind=rbd,monitors=10.0.0.5,rbd_pool=v,client=d,keyring=/k": "monitor \"10.0.0.5\" is not host:port",
		"pool.ceph = " + rbd + ",keyring=/k,path=/x":                            "option path is not for a pool of kind rbd",
		"pool.x = kind=nfs,path=/x":                                             "kind \"nfs\" is not dir, shared or rbd",
		"pool.x = path=/x":                                                      "kind is required",
		"pool.x = kind=dir":                                                     "a pool of kind dir needs path",
		"pool.x = kind=dir,path=/x,colour=blue":                                 "unknown option \"colour\"",
		"pool.x = kind=dir,path=/x,path=/y":                                     "option path given twice",
		"pool.x = kind=dir,path":                                                "is not option=value",
		"pool.Bad_Name = kind=dir,path=/x":                                      "line 3: pool.Bad_Name: pool name",
		"pool.a = kind=dir,path=/x\npool.b = kind=shared,path=/x":               "pools a and b are both at /x",
		"pool.a = kind=dir,path=/x\npool.a = kind=dir,path=/y":                  "line 4: key pool.a already set on line 3",
	} {
		_, err := Parse(strings.NewReader(head + in))
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Parse(%q) = %v, want an error containing %q", in, err, want)
		}
	}
}

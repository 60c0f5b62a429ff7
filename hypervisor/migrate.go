package hypervisor

import (
	"fmt"
	"net"
	"net/url"
	"time"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// MigrationStats are libvirt's own figures of a finished live migration.
type MigrationStats struct {
	Total    time.Duration // whole job, as libvirt measured it
	Downtime time.Duration // guest paused for the final switch-over
	Bytes    uint64        // data transferred
}

// Migrate live-migrates a running guest to the hypervisor at destURI (a libvirt URI that
// this node can reach, such as qemu+tcp://10.0.0.2/system). migrateURI, when set, is the
// address QEMU's migration stream goes to (tcp://10.0.0.2), for hosts whose libvirt name
// does not resolve on the migration network. The destination gets a persistent
// definition and the source's is removed only when libvirt reports success, so a failed
// migration leaves the guest running where it was.
func (n *Node) Migrate(name, destURI, migrateURI string) (MigrationStats, error) {
	d, err := n.lookup(name)
	if err != nil {
		return MigrationStats{}, err
	}
	defer d.Free()
	dconn, err := libvirt.NewConnect(destURI)
	if err != nil {
		return MigrationStats{}, n.fail("migrate", fmt.Errorf("migrate guest %q: connect to destination %s: %w", name, destURI, err))
	}
	defer dconn.Close()
	params := &libvirt.DomainMigrateParameters{}
	if migrateURI != "" {
		params.URISet, params.URI = true, migrateURI
	}
	// A VNC display listens on one address of its node: on the destination, that
	// node's own (the host of the migration stream), never the source's.
	if x, err := d.GetXMLDesc(libvirt.DOMAIN_XML_MIGRATABLE | libvirt.DOMAIN_XML_SECURE); err == nil {
		if dx, moved, err := vncMoved(x, VNCListen(migrateHost(migrateURI))); err != nil {
			return MigrationStats{}, fmt.Errorf("migrate guest %q: %w", name, err)
		} else if moved {
			params.DestXMLSet, params.DestXML = true, dx
		}
	}
	start := time.Now()
	nd, err := d.Migrate3(dconn, params, libvirt.MIGRATE_LIVE|libvirt.MIGRATE_PERSIST_DEST|libvirt.MIGRATE_UNDEFINE_SOURCE)
	if err != nil {
		return MigrationStats{}, n.fail("migrate", fmt.Errorf("migrate guest %q to %s: %w", name, destURI, err))
	}
	defer nd.Free()
	stats := MigrationStats{Total: time.Since(start)}
	if info, err := nd.GetJobStats(libvirt.DOMAIN_JOB_STATS_COMPLETED); err == nil {
		if info.TimeElapsedSet {
			stats.Total = time.Duration(info.TimeElapsed) * time.Millisecond
		}
		if info.DowntimeSet {
			stats.Downtime = time.Duration(info.Downtime) * time.Millisecond
		}
		if info.DataProcessedSet {
			stats.Bytes = info.DataProcessed
		}
	}
	return stats, nil
}

// VNCListen is the address a node's VNC displays listen on, from the host of the
// address it is reached at (its management address): that host when it is one IP
// address, else loopback, never every address.
func VNCListen(host string) string {
	if h, _, err := net.SplitHostPort(host); err == nil {
		host = h
	}
	if ip := net.ParseIP(host); ip != nil && !ip.IsUnspecified() {
		return ip.String()
	}
	return "127.0.0.1"
}

// migrateHost is the host of a migration stream's URI (tcp://HOST[:PORT]); "" for none.
func migrateHost(uri string) string {
	u, err := url.Parse(uri)
	if err != nil {
		return ""
	}
	return u.Hostname()
}

// vncMoved is a domain's definition with its VNC display listening on listen, and
// whether it has one.
func vncMoved(x, listen string) (string, bool, error) {
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		return "", false, fmt.Errorf("parse its domain: %w", err)
	}
	moved := false
	if d.Devices != nil {
		for i := range d.Devices.Graphics {
			if v := d.Devices.Graphics[i].VNC; v != nil {
				v.Listen, v.Port, moved = listen, 0, true
				v.Listeners = []libvirtxml.DomainGraphicListener{{Address: &libvirtxml.DomainGraphicListenerAddress{Address: listen}}}
			}
		}
	}
	if !moved {
		return "", false, nil
	}
	out, err := d.Marshal()
	return out, true, err
}

package hypervisor

import (
	"fmt"
	"time"

	"libvirt.org/go/libvirt"
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

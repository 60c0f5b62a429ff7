package hypervisor

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/digitalocean/go-qemu/qmp"
	"github.com/digitalocean/go-qemu/qmp/raw"
)

// TwinSupport is what a node's QEMU offers of what a twin needs, as ProbeTwinSupport
// found it.
type TwinSupport struct {
	Version string
	// Objects are the QOM types found among those a twin uses (colo-compare, …).
	Objects map[string]bool
	// BlockDrivers are the block drivers found among those a twin uses.
	BlockDrivers map[string]bool
	// Commands are the QMP commands found among those a twin uses.
	Commands map[string]bool
	// XColo says the migration capability x-colo exists.
	XColo bool
}

// What a twin needs of QEMU.
var (
	twinObjects  = []string{"colo-compare", "filter-mirror", "filter-redirector", "filter-rewriter", "iothread"}
	twinDrivers  = []string{"replication", "quorum", "nbd", "qcow2"}
	twinCommands = []string{"x-colo-lost-heartbeat", "query-colo-status", "x-blockdev-change", "nbd-server-start", "nbd-server-add", "nbd-server-stop", "drive-mirror", "migrate"}
)

// ProbeTwinSupport starts the QEMU binary (empty: DefaultQEMU) with no guest and asks
// it over QMP for its object types (qom-list-types) and its QMP schema (block drivers,
// migration capabilities and commands are enums and commands there; the schema only
// lists what the binary was built with). It returns an error wrapping
// ErrTwinUnsupported that names every missing part, or a plain error when the probe
// itself could not run.
func ProbeTwinSupport(ctx context.Context, qemu string) (TwinSupport, error) {
	if qemu == "" {
		qemu = DefaultQEMU
	}
	bin, err := exec.LookPath(qemu)
	if err != nil {
		return TwinSupport{}, fmt.Errorf("probe QEMU for twins: %w: install qemu-system-x86", err)
	}
	dir, err := os.MkdirTemp("", "dvm-twin-probe-")
	if err != nil {
		return TwinSupport{}, fmt.Errorf("probe QEMU for twins: %w", err)
	}
	defer os.RemoveAll(dir)
	sock := filepath.Join(dir, "qmp.sock")
	cmd := exec.CommandContext(ctx, bin, "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-qmp", "unix:"+qemuOpt(sock)+",server=on,wait=off")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return TwinSupport{}, fmt.Errorf("probe QEMU for twins: start %s: %w", bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	var mon *qmp.SocketMonitor
	for deadline := time.Now().Add(10 * time.Second); ; {
		if m, err := qmp.NewSocketMonitor("unix", sock, time.Second); err == nil {
			if err := m.Connect(); err == nil {
				mon = m
				break
			}
			m.Disconnect()
		}
		select {
		case err := <-done:
			done <- err
			return TwinSupport{}, fmt.Errorf("probe QEMU for twins: %s is not a QEMU that answers QMP (%v): %s", bin, err, strings.TrimSpace(out.String()))
		case <-ctx.Done():
			return TwinSupport{}, fmt.Errorf("probe QEMU for twins: %w", ctx.Err())
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return TwinSupport{}, fmt.Errorf("probe QEMU for twins: %s gave no QMP monitor in 10s", bin)
		}
	}
	defer mon.Disconnect()
	api := raw.NewMonitor(mon)
	types, err := api.QomListTypes(nil, nil)
	if err != nil {
		return TwinSupport{}, fmt.Errorf("probe QEMU for twins: qom-list-types: %w", err)
	}
	var names []string
	for _, t := range types {
		names = append(names, t.Name)
	}
	b, err := mon.Run([]byte(`{"execute":"query-qmp-schema"}`))
	if err != nil {
		return TwinSupport{}, fmt.Errorf("probe QEMU for twins: query-qmp-schema: %w", err)
	}
	var schema struct {
		Return []SchemaEntry `json:"return"`
	}
	if err := json.Unmarshal(b, &schema); err != nil {
		return TwinSupport{}, fmt.Errorf("probe QEMU for twins: query-qmp-schema: %w", err)
	}
	sup := CheckTwinSupport(names, schema.Return)
	if mon.Version != nil {
		sup.Version = mon.Version.String()
	}
	if err := sup.Err(bin); err != nil {
		return sup, err
	}
	return sup, nil
}

// SchemaEntry is one entry of QEMU's query-qmp-schema: a command, or an enum with its
// values (in "members" since QEMU 6.2, in "values" before).
type SchemaEntry struct {
	Name     string   `json:"name"`
	MetaType string   `json:"meta-type"`
	Values   []string `json:"values"`
	Members  []struct {
		Name string `json:"name"`
	} `json:"members"`
}

func (e SchemaEntry) enumValues() map[string]bool {
	v := map[string]bool{}
	for _, s := range e.Values {
		v[s] = true
	}
	if e.MetaType == "enum" {
		for _, m := range e.Members {
			v[m.Name] = true
		}
	}
	return v
}

// CheckTwinSupport reads what a twin needs out of a QEMU's object types and QMP
// schema. The schema names its types by number, so the block driver enum is the one
// holding "quorum" and "qcow2", and the migration capabilities the one holding
// "xbzrle".
func CheckTwinSupport(types []string, schema []SchemaEntry) TwinSupport {
	sup := TwinSupport{Objects: map[string]bool{}, BlockDrivers: map[string]bool{}, Commands: map[string]bool{}}
	have := map[string]bool{}
	for _, t := range types {
		have[t] = true
	}
	for _, o := range twinObjects {
		sup.Objects[o] = have[o]
	}
	for _, d := range twinDrivers {
		sup.BlockDrivers[d] = false
	}
	commands := map[string]bool{}
	for _, e := range schema {
		switch e.MetaType {
		case "command":
			commands[e.Name] = true
		case "enum":
			v := e.enumValues()
			if v["quorum"] && v["qcow2"] {
				for _, d := range twinDrivers {
					sup.BlockDrivers[d] = v[d]
				}
			}
			if v["xbzrle"] {
				sup.XColo = v["x-colo"]
			}
		}
	}
	for _, c := range twinCommands {
		sup.Commands[c] = commands[c]
	}
	return sup
}

// Missing lists what a twin needs and this QEMU lacks, for error messages.
func (s TwinSupport) Missing() []string {
	var miss []string
	for _, o := range twinObjects {
		if !s.Objects[o] {
			miss = append(miss, "object "+o)
		}
	}
	for _, d := range twinDrivers {
		if !s.BlockDrivers[d] {
			miss = append(miss, "block driver "+d)
		}
	}
	for _, c := range twinCommands {
		if !s.Commands[c] {
			miss = append(miss, "QMP command "+c)
		}
	}
	if !s.XColo {
		miss = append(miss, "migration capability x-colo")
	}
	return miss
}

// Err is nil when the QEMU at bin has all a twin needs, else an error wrapping
// ErrTwinUnsupported that names what is missing.
func (s TwinSupport) Err(bin string) error {
	miss := s.Missing()
	if len(miss) == 0 {
		return nil
	}
	return fmt.Errorf("QEMU %s (%s) lacks %s: %w: this node cannot run twins; install a QEMU built with COLO and replication (Debian's qemu-system-x86 has them, as does upstream built with --enable-replication)", bin, s.Version, strings.Join(miss, ", "), ErrTwinUnsupported)
}

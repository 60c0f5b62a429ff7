package hypervisor

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
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
	// Checkpoints says a probe pair ran on after its checkpoints.
	Checkpoints bool
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
//
// When every part is there, it then runs a guest-less pair on loopback under accel for
// ten checkpoints (a few seconds): Debian's QEMU 7.2.22 has every part, pairs,
// and then, at the end of one of its first checkpoints, freezes the primary for good
// (its COLO thread already holds the big QEMU lock when it takes it to restart the guest).
// A node must not pair a real guest on such a QEMU, so that is refused too.
func ProbeTwinSupport(ctx context.Context, qemu string, accel Accelerator) (TwinSupport, error) {
	bin, version, types, schema, err := queryQEMUFeatures(ctx, qemu)
	if err != nil {
		return TwinSupport{}, fmt.Errorf("probe QEMU for twins: %w", err)
	}
	sup := CheckTwinSupport(types, schema)
	sup.Version = version
	if err := sup.Err(bin); err != nil {
		return sup, err
	}
	if err := probeCheckpoints(ctx, bin, accel); err != nil {
		return sup, fmt.Errorf("probe QEMU for twins: %s (%s): %w", bin, version, err)
	}
	sup.Checkpoints = true
	return sup, nil
}

const probeCheckpointCount = 10

// probeCheckpoints pairs two guest-less QEMUs (firmware only, 32 MiB) on loopback
// with checkpoints every 100 ms and waits until the primary has run on after ten of
// them, or is found frozen after one. Ten, because the freeze is a race: on Debian's
// 7.2.22 about half the checkpoints freeze the primary, so two in a row pass one
// probe in six, ten one in a thousand.
func probeCheckpoints(ctx context.Context, bin string, accel Accelerator) error {
	if accel != AccelKVM {
		accel = AccelTCG
	}
	dir, err := os.MkdirTemp("", "dvmtwp")
	if err != nil {
		return err
	}
	defer os.RemoveAll(dir)
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return err
	}
	links := TwinLinks{Migrate: l.Addr().String()}
	l.Close()
	spec := func(role TwinRole) TwinSpec {
		return TwinSpec{
			Guest: GuestSpec{Name: "dvm-colo-probe", CPUs: 1, MemoryBytes: 32 << 20},
			Role:  role, Accel: accel, RunDir: filepath.Join(dir, string(role)), Links: links, QEMU: bin,
			Paused: true, CheckpointInterval: 100 * time.Millisecond,
		}
	}
	p, err := launchTwin(ctx, spec(TwinPrimary))
	if err != nil {
		return err
	}
	defer p.Stop(2 * time.Second)
	s, err := launchTwin(ctx, spec(TwinSecondary))
	if err != nil {
		return err
	}
	defer s.Stop(2 * time.Second)
	pctx, cancel := context.WithTimeout(ctx, 20*time.Second)
	defer cancel()
	if err := Pair(pctx, p, s); err != nil {
		// The freeze can come at the first checkpoint, while Pair still waits for the
		// migration into COLO: the primary then stops answering QMP for good. That is
		// the same verdict as a freeze seen later, not a failure of the probe.
		if errors.Is(err, context.DeadlineExceeded) && ctx.Err() == nil {
			select {
			case <-p.Exited():
			default:
				return fmt.Errorf("%w: the probe's primary stopped answering while it entered COLO (%v), so twins cannot run on this QEMU; install one whose COLO checkpoints work (ProbeTwinSupport tells)", ErrTwinUnsupported, err)
			}
		}
		return fmt.Errorf("pair of the probe: %w", err)
	}
	for {
		if _, stuck := p.stuckSince(); stuck {
			p.mu.Lock()
			n := p.checkpoints
			p.mu.Unlock()
			return fmt.Errorf("%w: COLO checkpoint %d of a probe pair left the primary frozen (its guest never ran again), so twins cannot run on this QEMU; install one whose COLO checkpoints work (ProbeTwinSupport tells)", ErrTwinUnsupported, n)
		}
		p.mu.Lock()
		n, waiting := p.checkpoints, p.awaitResume
		p.mu.Unlock()
		if n >= probeCheckpointCount && !waiting {
			return nil
		}
		select {
		case <-pctx.Done():
			return fmt.Errorf("the probe pair made %d checkpoints in 20s: %w", n, pctx.Err())
		case <-p.Exited():
			return fmt.Errorf("the probe's primary ended: %v: %s", p.ExitError(), p.logTail())
		case <-time.After(twinPollInterval):
		}
	}
}

// queryQEMUFeatures runs the QEMU binary with no guest and returns its version, its QOM
// types and its QMP schema.
func queryQEMUFeatures(ctx context.Context, qemu string) (bin, version string, types []string, schema []SchemaEntry, err error) {
	if qemu == "" {
		qemu = DefaultQEMU
	}
	if bin, err = exec.LookPath(qemu); err != nil {
		return "", "", nil, nil, fmt.Errorf("%w: install qemu-system-x86", err)
	}
	dir, err := os.MkdirTemp("", "dvm-twin-probe-")
	if err != nil {
		return bin, "", nil, nil, err
	}
	defer os.RemoveAll(dir)
	sock, schemaSock := filepath.Join(dir, "qmp.sock"), filepath.Join(dir, "schema.sock")
	cmd := exec.CommandContext(ctx, bin, "-machine", "none", "-nodefaults", "-no-user-config", "-display", "none", "-S",
		"-qmp", "unix:"+qemuOpt(sock)+",server=on,wait=off", "-qmp", "unix:"+qemuOpt(schemaSock)+",server=on,wait=off")
	var out strings.Builder
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		return bin, "", nil, nil, fmt.Errorf("start %s: %w", bin, err)
	}
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	defer func() {
		cmd.Process.Kill()
		<-done
	}()
	var mon *qmp.SocketMonitor
	for deadline := time.Now().Add(10 * time.Second); mon == nil; {
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
			return bin, "", nil, nil, fmt.Errorf("%s is not a QEMU that answers QMP (%v): %s", bin, err, strings.TrimSpace(out.String()))
		case <-ctx.Done():
			return bin, "", nil, nil, ctx.Err()
		case <-time.After(50 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			return bin, "", nil, nil, fmt.Errorf("%s gave no QMP monitor in 10s", bin)
		}
	}
	defer mon.Disconnect()
	if mon.Version != nil {
		version = mon.Version.String()
	}
	infos, err := raw.NewMonitor(mon).QomListTypes(nil, nil)
	if err != nil {
		return bin, version, nil, nil, fmt.Errorf("qom-list-types: %w", err)
	}
	for _, t := range infos {
		types = append(types, t.Name)
	}
	if schema, err = querySchema(schemaSock); err != nil {
		return bin, version, nil, nil, fmt.Errorf("query-qmp-schema: %w", err)
	}
	return bin, version, types, schema, nil
}

// querySchema reads query-qmp-schema on a QMP socket of its own: the answer is
// hundreds of KiB on one line, beyond the 64 KiB line go-qemu's SocketMonitor reads.
func querySchema(sock string) ([]SchemaEntry, error) {
	c, err := net.DialTimeout("unix", sock, 5*time.Second)
	if err != nil {
		return nil, err
	}
	defer c.Close()
	c.SetDeadline(time.Now().Add(10 * time.Second))
	dec, enc := json.NewDecoder(c), json.NewEncoder(c)
	var greeting map[string]any
	if err := dec.Decode(&greeting); err != nil {
		return nil, err
	}
	var r struct {
		Return json.RawMessage `json:"return"`
		Event  string          `json:"event"`
		Error  *struct {
			Desc string `json:"desc"`
		} `json:"error"`
	}
	for _, cmd := range []string{"qmp_capabilities", "query-qmp-schema"} {
		if err := enc.Encode(map[string]string{"execute": cmd}); err != nil {
			return nil, err
		}
		for {
			r.Event, r.Error, r.Return = "", nil, nil
			if err := dec.Decode(&r); err != nil {
				return nil, err
			}
			if r.Event == "" {
				break
			}
		}
		if r.Error != nil {
			return nil, fmt.Errorf("%s: %s", cmd, r.Error.Desc)
		}
	}
	var schema []SchemaEntry
	return schema, json.Unmarshal(r.Return, &schema)
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

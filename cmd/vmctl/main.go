// vmctl is the operator's CLI for dvm: `vmctl NOUN VERB`.
//
// Exit codes: 0 success, 1 error, 2 the guest cannot be placed (the reason is printed).
package main

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net/http"
	"net/url"
	"os"
	"sort"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/dvmproject/dvm/hypervisor/profile"
	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cmdline"
	"github.com/dvmproject/dvm/internal/units"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/urfave/cli/v2"
)

// exitError carries an exit code through urfave/cli.
type exitError struct {
	code int
	msg  string
}

func (e *exitError) Error() string { return e.msg }

func main() {
	app := newApp(os.Stdout)
	if err := app.Run(cmdline.Interspersed(app, os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "vmctl:", err)
		os.Exit(exitCode(err))
	}
}

// exitCode is vmctl's exit status for err (see the app's description).
func exitCode(err error) int {
	var ee *exitError
	var se *api.StatusError
	switch {
	case errors.As(err, &ee):
		return ee.code
	case errors.As(err, &se) && se.Code == http.StatusGatewayTimeout:
		// Applied but not acknowledged: a script must look before it retries.
		return 3
	}
	return 1
}

func newApp(out io.Writer) *cli.App {
	return &cli.App{
		Name:    "vmctl",
		Usage:   "run guests on a dvm cluster",
		Version: version.Version,
		Writer:  out,
		// Shell completion: see vmctl completion.
		EnableBashCompletion: true,
		// urfave/cli would end the process itself, with 3, for an unknown command; 3 is
		// vmctl's "applied but not acknowledged", so main alone decides exit codes.
		ExitErrHandler: func(*cli.Context, error) {},
		Suggest:        true,
		Description: "vmctl talks to dvm's API at DVM_ADDR (a comma-separated list of management nodes'\n" +
			"https URLs; the first that answers is used) with the token in DVM_TOKEN, and checks the\n" +
			"API's certificate against the CA in DVM_CA (the cluster's ca.crt), or the system's roots.\n\n" +
			"Exit codes: 0 success, 1 error, 2 the guest cannot be placed, 3 the change is applied but\n" +
			"not acknowledged (not yet on enough management nodes: it may or may not survive).",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "addr", EnvVars: []string{"DVM_ADDR"}, Usage: "API `ADDRS`, comma-separated"},
			&cli.StringFlag{Name: "token", EnvVars: []string{"DVM_TOKEN"}, Usage: "API `TOKEN`"},
			&cli.StringFlag{Name: "ca", EnvVars: []string{"DVM_CA"}, Usage: "`FILE` of the CA the API's certificate is checked against (default: the system's roots)"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"},
		},
		Before: func(c *cli.Context) error {
			if o := c.String("output"); o != "table" && o != "json" {
				return fmt.Errorf("--output %q: use table or json", o)
			}
			return nil
		},
		Commands: []*cli.Command{nodeCommand(), vmCommand(), imageCommand(), netCommand(), clusterCommand(), eventsCommand(), tokenCommand(), labCommand(), completionCommand(),
			{Name: "version", Usage: "print vmctl's version", Action: func(c *cli.Context) error {
				fmt.Fprintln(c.App.Writer, "vmctl", version.Version)
				return nil
			}},
		},
	}
}

func client(c *cli.Context) (*api.Client, error) {
	tok := c.String("token")
	if tok == "" {
		return nil, errors.New("no API token: set DVM_TOKEN or --token (for a dev cluster: set -a; . DATA_DIR/env; set +a)")
	}
	cl, err := api.NewClient(c.String("addr"), tok)
	if err != nil {
		return nil, err
	}
	if err := cl.RequireTLS(); err != nil {
		return nil, err
	}
	if ca := c.String("ca"); ca != "" {
		if err := cl.TrustCA(ca); err != nil {
			return nil, fmt.Errorf("--ca (DVM_CA): %w", err)
		}
	}
	return cl, nil
}

func jsonOut(c *cli.Context) bool { return c.String("output") == "json" }

func printJSON(c *cli.Context, v any) error {
	enc := json.NewEncoder(c.App.Writer)
	enc.SetIndent("", "  ")
	return enc.Encode(v)
}

func table(c *cli.Context, header string, rows [][]string) {
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	fmt.Fprintln(w, header)
	for _, r := range rows {
		fmt.Fprintln(w, strings.Join(r, "\t"))
	}
	w.Flush()
}

// show reads path into a T and prints it: as JSON with -o json, else with human, which
// may ask the API more through cl.
func show[T any](c *cli.Context, path string, human func(cl *api.Client, v T) error) error {
	cl, err := client(c)
	if err != nil {
		return err
	}
	var v T
	if err := cl.Do(c.Context, "GET", path, nil, &v); err != nil {
		return err
	}
	if jsonOut(c) {
		return printJSON(c, v)
	}
	return human(cl, v)
}

// list reads the list at path and prints it: as JSON with -o json, else as a table
// under header with a row of each item.
func list[T any](c *cli.Context, path, header string, row func(T) []string) error {
	return show(c, path, func(_ *api.Client, items []T) error {
		rows := make([][]string, 0, len(items))
		for _, it := range items {
			rows = append(rows, row(it))
		}
		table(c, header, rows)
		return nil
	})
}

func oneArg(c *cli.Context, what string) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("give exactly one %s: vmctl %s %s %s", what, c.Lineage()[1].Command.Name, c.Command.Name, strings.ToUpper(what))
	}
	return c.Args().First(), nil
}

func nodeCommand() *cli.Command {
	return &cli.Command{
		Name:  "node",
		Usage: "the cluster's nodes",
		Subcommands: []*cli.Command{drainCommand(), undrainCommand(), maintenanceCommand(), removeCommand(), upgradeCheckCommand(), {
			Name:    "ls",
			Aliases: []string{"list"},
			Usage:   "list nodes with their capacity and allocation",
			Description: "CPUS and MEMORY are allocated/offered: what the guests placed on the node use, of\n" +
				"its pool share (host less reservation, times overcommit).\n\n" +
				"Examples:\n  vmctl node ls\n  vmctl -o json node ls",
			Action: func(c *cli.Context) error {
				return list(c, "/v1/nodes", "NAME\tSTATE\tACCEL\tCPUS\tMEMORY\tGUESTS\tLABELS", nodeRow)
			},
		}},
	}
}

func nodeRow(n api.Node) []string {
	state := n.State
	if n.Maintenance {
		state += ",maintenance"
	} else if n.Draining {
		state += ",draining"
	}
	return []string{n.Name, state, n.Accelerator,
		fmt.Sprintf("%d/%d", n.AllocatedCPUs, n.CPUs),
		units.FormatBytes(n.AllocatedMemoryBytes) + "/" + units.FormatBytes(n.MemoryBytes),
		fmt.Sprint(n.Guests), labels(n.Labels)}
}

func labels(m map[string]string) string { return api.FormatLabels(m) }

func vmCommand() *cli.Command {
	return &cli.Command{
		Name:  "vm",
		Usage: "guests",
		Subcommands: []*cli.Command{
			vmCreate(),
			{Name: "ls", Aliases: []string{"list"}, Usage: "list guests",
				Description: "Examples:\n  vmctl vm ls\n  vmctl -o json vm ls", Action: vmList},
			{Name: "show", Usage: "show one guest", ArgsUsage: "NAME",
				Description: "Examples:\n  vmctl vm show web\n  vmctl -o json vm show web", Action: vmShow},
			{Name: "why", Usage: "say why a guest is pending, or where it could go", ArgsUsage: "NAME",
				Description: "Counts the nodes the scheduler rejects per reason, for example\n" +
					"  3 nodes: not enough memory; 1 node: draining", Action: vmWhy},
			{Name: "start", Usage: "start a guest", ArgsUsage: "NAME", Flags: waitFlags(),
				Description: "Waits until the guest runs, unless --no-wait.\n\nExamples:\n  vmctl vm start web\n  vmctl vm start web --no-wait",
				Action:      vmDesired("start", api.GuestRunning)},
			{Name: "stop", Usage: "shut a guest down (ACPI, then forced after the node's shutdown timeout)", ArgsUsage: "NAME", Flags: waitFlags(),
				Description: "Waits until the guest is stopped, unless --no-wait. It keeps its node and disk.\n\nExamples:\n  vmctl vm stop web\n  vmctl vm stop web --timeout 2m",
				Action:      vmDesired("stop", api.GuestStopped)},
			{Name: "delete", Aliases: []string{"rm"}, Usage: "delete a guest and its disks", ArgsUsage: "NAME",
				Flags: append([]cli.Flag{&cli.BoolFlag{Name: "keep-disks", Usage: "keep the guest's disks in the disks directory"}}, waitFlags()...),
				Description: "Stops the guest if it runs, undefines its domain and removes its disks (with\n" +
					"--keep-disks they stay in disks_dir as GUEST.qcow2, GUEST.disk1.qcow2, …).\n\n" +
					"Examples:\n  vmctl vm delete web\n  vmctl vm delete web --keep-disks",
				Action: vmDelete},
			{Name: "migrate", Usage: "live-migrate a running guest to another node", ArgsUsage: "NAME",
				Description: "Example:\n  vmctl vm migrate web --to n2",
				Flags:       []cli.Flag{&cli.StringFlag{Name: "to", Required: true, Usage: "destination `NODE`"}},
				Action:      vmMigrate},
			vmConsoleCommand(),
			{Name: "eject", Usage: "take a guest's install media (--iso) out of its cdrom", ArgsUsage: "NAME",
				Description: "Out of the running guest's drive at once, and out of its definition, on its node and\n" +
					"wherever it is defined again: it boots from its disk from then on. Its image is then free\n" +
					"to delete.\n\nExample:\n  vmctl vm eject dfly",
				Action: vmEject},
			{Name: "vnc", Usage: "say where a guest's VNC display listens, and its password (operator token)", ArgsUsage: "NAME",
				Description: "For a guest created with --vnc. The display is on the guest's node, on that node's\n" +
					"management address (or loopback): reach it from there, or through an SSH tunnel.\n\n" +
					"Examples:\n  vmctl vm vnc dfly\n  vmctl -o json vm vnc dfly",
				Action: vmVNC},
		},
	}
}

func waitFlags() []cli.Flag {
	return []cli.Flag{
		&cli.BoolFlag{Name: "no-wait", Usage: "return once the cluster accepted the request"},
		&cli.DurationFlag{Name: "timeout", Value: 5 * time.Minute, Usage: "how long to wait"},
	}
}

func vmCreate() *cli.Command {
	return &cli.Command{
		Name:      "create",
		Usage:     "create a guest and start it where the scheduler places it",
		ArgsUsage: "NAME",
		Description: "Examples:\n" +
			"  vmctl vm create web --os dragonfly --cpus 2 --memory 2GiB --disk 20GiB\n" +
			"  vmctl vm create lab1 --os linux --image lab --cpus 1 --memory 128MiB\n" +
			"  vmctl vm create lab2 --os linux --image lab --memory 128MiB --net blue\n" +
			"  vmctl vm create dfly --iso dfly-6.4 --disk 20GiB     # then: vmctl vm console dfly; vmctl vm eject dfly\n\n" +
			"With --iso the guest boots the ISO (a read-only cdrom) before its empty disk: install on\n" +
			"the console, then vmctl vm eject NAME, and it boots from its disk from then on.\n" +
			"With --vnc it also has a VNC display (off by default: the serial console is vmctl vm\n" +
			"console), on its node's management address, with a password: vmctl vm vnc NAME.\n" +
			"With --cloud-init (linux, freebsd) a second cdrom holds a cloud-init NoCloud seed:\n" +
			"hostname NAME, the addresses of its networks, --ssh-key keys for the image's default\n" +
			"user, --user-data as given.\n" +
			"  vmctl vm create web --os linux --image debian-12 --net blue --cloud-init --ssh-key ~/.ssh/id_ed25519.pub\n\n" +
			"With --net each network gives the guest a NIC with its own MAC (52:54:00:xx:xx:xx) and\n" +
			"the lowest free address of the network's CIDR; both stay with the guest when it moves.\n" +
			"A direct-boot image gets the first NIC's address as dvm.ip=ADDR/PREFIX on its kernel\n" +
			"command line.\n\n" +
			"Sizes: " + units.Help + ": 2G, 2GB and 2GiB\n" +
			"are all 2×1024³ bytes. Memory is a whole number of MiB.\n\n" +
			"Waits until the guest runs. Exits 2 when no node can take it (it stays pending and\n" +
			"is placed when room appears).",
		Flags: append([]cli.Flag{
			&cli.StringFlag{Name: "os", Value: profile.Default, Usage: "guest OS profile: " + strings.Join(profile.Names(), ", ")},
			&cli.IntFlag{Name: "cpus", Value: 1, Usage: "virtual CPUs"},
			&cli.StringFlag{Name: "memory", Value: "1GiB", Usage: "memory `SIZE`, such as 512M or 2G (powers of 1024: 2G, 2GB and 2GiB alike)"},
			&cli.StringFlag{Name: "disk", Usage: "disk `SIZE[,SIZE…]`, such as 20G or 20G,50G: the first made from --image, the others empty (default 20GiB without --image, the image's size with a disk image, none with a kernel image)"},
			&cli.StringFlag{Name: "image", Usage: "image `NAME` (vmctl image ls; lab: the lab guest)"},
			&cli.StringFlag{Name: "iso", Usage: "install media: an image `NAME` of format iso, booted before the empty disk until vmctl vm eject"},
			&cli.StringFlag{Name: "pool", Usage: "storage pool `NAME` (a pool.NAME of the nodes' dvmd.conf; vmctl -o json node ls shows each node's) for its disks: dir, shared or rbd (Ceph); default: disks_dir"},
			&cli.BoolFlag{Name: "cloud-init", Usage: "a cloud-init NoCloud seed (os linux or freebsd): hostname, addresses, --ssh-key, --user-data"},
			&cli.StringSliceFlag{Name: "ssh-key", Usage: "`FILE` of SSH public keys (one a line, as id_ed25519.pub) for the seed; repeat for more"},
			&cli.StringFlag{Name: "user-data", Usage: "`FILE` of cloud-init user data (#cloud-config, or a #! script) for the seed"},
			&cli.BoolFlag{Name: "vnc", Usage: "a VNC display for graphical installers, on the node's management address, with a password (vmctl vm vnc NAME)"},
			&cli.StringFlag{Name: "failover", Value: api.FailoverRestart, Usage: "what happens when its node is lost: none, restart or twin"},
			&cli.StringFlag{Name: "constraint", Usage: "node labels the guest needs, `k=v,k=v`"},
			&cli.BoolFlag{Name: "stopped", Usage: "create it without starting it"},
			netFlag(),
		}, waitFlags()...),
		Action: func(c *cli.Context) error {
			name, err := oneArg(c, "name")
			if err != nil {
				return err
			}
			req := api.CreateGuest{Name: name, OS: c.String("os"), CPUs: c.Int("cpus"), Image: c.String("image"), Failover: c.String("failover"),
				ISO: c.String("iso"), VNC: c.Bool("vnc"), Pool: c.String("pool")}
			if req.MemoryBytes, err = units.ParseBytes(c.String("memory")); err != nil {
				return fmt.Errorf("--memory: %w", err)
			}
			if s := c.String("disk"); s != "" {
				if req.DiskBytes, req.ExtraDiskBytes, err = parseDisks(s); err != nil {
					return err
				}
			}
			if s := c.String("constraint"); s != "" {
				if req.Constraints, err = api.ParseLabels(s); err != nil {
					return fmt.Errorf("--constraint: %w", err)
				}
			}
			if c.Bool("stopped") {
				f := false
				req.Start = &f
			}
			if req.CloudInit, err = cloudInitFlags(c); err != nil {
				return err
			}
			if req.Networks, err = parseNetFlag(c.String("net")); err != nil {
				return err
			}
			// Validate here too, so a bad flag fails before any request is sent.
			check := req
			if fe := check.Normalize(); fe != nil {
				return flagError(fe)
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			var g api.Guest
			if err := cl.Do(c.Context, "POST", "/v1/guests", req, &g); err != nil {
				var se *api.StatusError
				if errors.As(err, &se) && strings.HasPrefix(se.Msg, "refused by HA admission control") {
					return &exitError{2, se.Msg}
				}
				if errors.As(err, &se) && se.Code == http.StatusBadRequest && se.Field != "" {
					return flagError(&api.FieldError{Field: se.Field, Msg: strings.TrimPrefix(se.Msg, se.Field+": ")})
				}
				return err
			}
			for _, w := range g.Warnings {
				fmt.Fprintln(c.App.ErrWriter, "warning:", w)
			}
			if g.State == api.GuestPending {
				printGuest(c, g)
				return &exitError{2, fmt.Sprintf("guest %s cannot be placed now: %s (it stays pending and is placed when room appears)", g.Name, g.PendingReason)}
			}
			want := api.GuestRunning
			if c.Bool("stopped") {
				want = api.GuestStopped
			}
			if !c.Bool("no-wait") {
				if g, err = waitState(c, cl, name, want); err != nil {
					return err
				}
			}
			printGuest(c, g)
			return nil
		},
	}
}

// cloudInitFlags reads --cloud-init, --ssh-key FILE… and --user-data FILE: nil without
// --cloud-init, which the other two need.
func cloudInitFlags(c *cli.Context) (*api.CloudInit, error) {
	keys, user := c.StringSlice("ssh-key"), c.String("user-data")
	if !c.Bool("cloud-init") {
		switch {
		case len(keys) > 0:
			return nil, errors.New("--ssh-key goes in a cloud-init seed: give --cloud-init too")
		case user != "":
			return nil, errors.New("--user-data goes in a cloud-init seed: give --cloud-init too")
		}
		return nil, nil
	}
	ci := &api.CloudInit{}
	for _, file := range keys {
		b, err := os.ReadFile(file)
		if err != nil {
			return nil, fmt.Errorf("--ssh-key: %w", err)
		}
		if bytes.Contains(b, []byte("PRIVATE KEY")) {
			return nil, fmt.Errorf("--ssh-key %s: this is a private key: give the public one (%s.pub), which is all a guest needs", file, file)
		}
		n := len(ci.SSHKeys)
		for _, line := range strings.Split(string(b), "\n") {
			if line = strings.TrimSpace(line); line != "" && !strings.HasPrefix(line, "#") {
				ci.SSHKeys = append(ci.SSHKeys, line)
			}
		}
		if len(ci.SSHKeys) == n {
			return nil, fmt.Errorf("--ssh-key %s: holds no key: give a public key file such as ~/.ssh/id_ed25519.pub", file)
		}
	}
	if user != "" {
		b, err := os.ReadFile(user)
		if err != nil {
			return nil, fmt.Errorf("--user-data: %w", err)
		}
		ci.UserData = string(b)
	}
	return ci, nil
}

// parseDisks reads --disk SIZE[,SIZE…]: the first disk, then the extra ones.
func parseDisks(s string) (int64, []int64, error) {
	var sizes []int64
	for _, part := range strings.Split(s, ",") {
		b, err := units.ParseBytes(strings.TrimSpace(part))
		if err != nil {
			return 0, nil, fmt.Errorf("--disk: %w", err)
		}
		if b == 0 {
			return 0, nil, fmt.Errorf("--disk %s: a disk of 0 bytes: leave --disk out for no disk (with a kernel image), or give a size", part)
		}
		sizes = append(sizes, b)
	}
	return sizes[0], sizes[1:], nil
}

// flagError says which argument or flag a request field that is wrong comes from.
func flagError(fe *api.FieldError) error {
	if fe.Field == "name" {
		return fmt.Errorf("NAME: %s", fe.Msg)
	}
	return fmt.Errorf("--%s: %s", flagOf(fe.Field), fe.Msg)
}

// flagOf maps an API field to the CLI flag that sets it.
func flagOf(field string) string {
	switch field {
	case "memory_bytes":
		return "memory"
	case "disk_bytes", "extra_disk_bytes":
		return "disk"
	case "cloud_init":
		return "cloud-init"
	case "cloud_init.ssh_keys":
		return "ssh-key"
	case "cloud_init.user_data":
		return "user-data"
	case "constraints":
		return "constraint"
	case "networks":
		return "net"
	}
	return field
}

const guestHeader = "NAME\tSTATE\tNODE\tOS\tCPUS\tMEMORY\tFAILOVER"

func printGuest(c *cli.Context, g api.Guest) {
	if jsonOut(c) {
		printJSON(c, g)
		return
	}
	table(c, guestHeader, [][]string{guestRow(g)})
}

func guestRow(g api.Guest) []string {
	node := g.Node
	if node == "" {
		node = "-"
	}
	if g.MigrateTo != "" {
		node += "->" + g.MigrateTo
	}
	return []string{g.Name, g.State, node, g.OS, fmt.Sprint(g.CPUs), units.FormatBytes(g.MemoryBytes), g.Failover}
}

// protectionLine says a twin's protection: "protected", "syncing 1.2GiB of 20GiB to n3",
// "unprotected: REASON".
func protectionLine(pr api.Protection) string {
	switch pr.State {
	case api.ProtectionSyncing:
		line := "syncing"
		if pr.Total > 0 {
			line += fmt.Sprintf(" %s of %s (%d%%)", units.FormatBytes(int64(pr.Done)), units.FormatBytes(int64(pr.Total)), pr.Done*100/pr.Total)
		}
		if pr.Node != "" {
			line += " to " + pr.Node
		}
		return line
	case api.ProtectionUnprotected:
		if pr.Reason != "" {
			return "unprotected: " + pr.Reason
		}
	}
	return pr.State
}

func vmList(c *cli.Context) error { return list(c, "/v1/guests", guestHeader, guestRow) }

func vmShow(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	return show(c, "/v1/guests/"+url.PathEscape(name), func(cl *api.Client, g api.Guest) error { return showGuest(c, cl, g) })
}

func showGuest(c *cli.Context, cl *api.Client, g api.Guest) error {
	w := tabwriter.NewWriter(c.App.Writer, 0, 4, 2, ' ', 0)
	p := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%s:\t%s\n", k, v)
		}
	}
	p("Name", g.Name)
	p("UUID", g.UUID)
	p("State", g.State)
	p("Desired", g.Desired)
	p("Node", g.Node)
	p("Migrating to", g.MigrateTo)
	p("OS", g.OS)
	p("CPUs", fmt.Sprint(g.CPUs))
	p("Memory", units.FormatBytes(g.MemoryBytes))
	if g.DiskBytes > 0 {
		disks := []string{units.FormatBytes(g.DiskBytes)}
		for _, b := range g.ExtraDiskBytes {
			disks = append(disks, units.FormatBytes(b))
		}
		p("Disks", strings.Join(disks, ", "))
	}
	p("Image", g.Image)
	p("Storage pool", g.Pool)
	if g.ISO != "" {
		p("ISO", g.ISO+" (in its cdrom, booted first; vmctl vm eject "+g.Name+" takes it out)")
	}
	if g.VNC != nil {
		p("VNC", vncLine(c, cl, g))
	}
	if ci := g.CloudInit; ci != nil {
		seed := fmt.Sprintf("NoCloud seed: hostname %s, addresses of its NICs, %d SSH keys", g.Name, len(ci.SSHKeys))
		if ci.UserDataBytes > 0 {
			seed += ", user data of " + units.FormatBytes(int64(ci.UserDataBytes))
		}
		p("Cloud-init", seed)
	}
	p("Failover", g.Failover)
	p("Standby", g.TwinNode)
	if pr := g.Protection; pr != nil {
		p("Protection", protectionLine(*pr))
	}
	p("Constraints", labels(g.Constraints))
	p("NICs", nicsLine(g.NICs))
	p("Pending", g.PendingReason)
	if g.State == api.GuestPending {
		var why api.Why
		if err := cl.Do(c.Context, "GET", "/v1/guests/"+url.PathEscape(g.Name)+"/why", nil, &why); err == nil {
			p("Why", why.Summary)
		}
	}
	p("Error", g.Error)
	if m := g.LastMigration; m != nil {
		out := "ok"
		if !m.OK {
			out = "failed: " + m.Error
		}
		p("Last migration", fmt.Sprintf("%s -> %s, %s, total %.2fs, downtime %.0fms", m.From, m.To, out, m.TotalSeconds, m.DowntimeSeconds*1000))
	}
	p("Created", g.CreatedAt.Format(time.RFC3339))
	return w.Flush()
}

// errWaitedOut: the guest did not come to what was waited for within --timeout.
var errWaitedOut = errors.New("waited out")

// watchGuest hands check guest name (or the error of asking for it), and again each
// time it changes, until check says it is done or fails, or --timeout passes
// (errWaitedOut, with the guest as last seen). It asks with blocking queries, which
// the master answers as soon as the guest changes.
func watchGuest(c *cli.Context, cl *api.Client, name string, check func(api.Guest, error) (bool, error)) (api.Guest, error) {
	ctx, cancel := context.WithTimeout(c.Context, c.Duration("timeout"))
	defer cancel()
	var last api.Guest
	index := ""
	for {
		var g api.Guest
		next, err := cl.Watch(ctx, "/v1/guests/"+url.PathEscape(name), index, 30*time.Second, &g)
		if ctx.Err() != nil {
			if c.Context.Err() != nil {
				return last, c.Context.Err()
			}
			return last, errWaitedOut
		}
		if err == nil {
			last = g
		}
		if done, err := check(g, err); done || err != nil {
			return last, err
		}
		if next == "" {
			// A master of an older dvm, which answers at once: ask again in a second.
			select {
			case <-ctx.Done():
			case <-time.After(time.Second):
			}
		}
		index = next
	}
}

// waitState waits until a guest reaches want, fails, or the timeout passes.
func waitState(c *cli.Context, cl *api.Client, name, want string) (api.Guest, error) {
	g, err := watchGuest(c, cl, name, func(g api.Guest, err error) (bool, error) {
		if err != nil {
			return false, err
		}
		switch g.State {
		case want:
			return true, nil
		case api.GuestFailed:
			return false, fmt.Errorf("guest %s failed on node %s: %s", name, g.Node, g.Error)
		case api.GuestPending:
			if want != api.GuestStopped {
				return false, &exitError{2, fmt.Sprintf("guest %s cannot be placed: %s", name, g.PendingReason)}
			}
		}
		return false, nil
	})
	if errors.Is(err, errWaitedOut) {
		return g, fmt.Errorf("guest %s is %s, not %s, after %s (see vmctl vm show %s)", name, g.State, want, c.Duration("timeout"), name)
	}
	return g, err
}

// postGuest asks POST /v1/guests/NAME/VERB of the guest the command line names.
func postGuest(c *cli.Context, verb string) (cl *api.Client, name string, g api.Guest, err error) {
	if name, err = oneArg(c, "name"); err != nil {
		return nil, "", g, err
	}
	if cl, err = client(c); err != nil {
		return nil, "", g, err
	}
	err = cl.Do(c.Context, "POST", "/v1/guests/"+url.PathEscape(name)+"/"+verb, nil, &g)
	return cl, name, g, err
}

func vmDesired(verb, want string) cli.ActionFunc {
	return func(c *cli.Context) error {
		cl, name, g, err := postGuest(c, verb)
		if err != nil {
			return err
		}
		if !c.Bool("no-wait") && g.State != api.GuestPending {
			if g, err = waitState(c, cl, name, want); err != nil {
				return err
			}
		}
		printGuest(c, g)
		return nil
	}
}

// vncLine says where a guest's VNC display is and, to an operator token, its password.
func vncLine(c *cli.Context, cl *api.Client, g api.Guest) string {
	var v api.VNC
	err := cl.Do(c.Context, "GET", "/v1/guests/"+url.PathEscape(g.Name)+"/vnc", nil, &v)
	display := g.VNC.Display
	if err == nil && v.Display != "" {
		display = v.Display
	}
	if display == "" {
		display = "port not known yet (it does not run, or its node has not said)"
	}
	var se *api.StatusError
	switch {
	case errors.As(err, &se) && se.Code == http.StatusForbidden:
		return display + "; its password is shown to operator tokens (vmctl vm vnc " + g.Name + ")"
	case err != nil:
		return display + "; its password could not be read: " + err.Error()
	}
	return display + ", password " + v.Password
}

func vmVNC(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	return show(c, "/v1/guests/"+url.PathEscape(name)+"/vnc", func(_ *api.Client, v api.VNC) error {
		display := v.Display
		if display == "" {
			display = "-"
		}
		table(c, "GUEST\tNODE\tDISPLAY\tPASSWORD", [][]string{{v.Guest, v.Node, display, v.Password}})
		return nil
	})
}

func vmEject(c *cli.Context) error {
	_, _, g, err := postGuest(c, "eject")
	if err != nil {
		return err
	}
	printGuest(c, g)
	return nil
}

func vmDelete(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	path := "/v1/guests/" + url.PathEscape(name)
	del := path
	if c.Bool("keep-disks") {
		del += "?keep_disks=true"
	}
	if err := cl.Do(c.Context, "DELETE", del, nil, nil); err != nil {
		return err
	}
	if !c.Bool("no-wait") {
		_, err := watchGuest(c, cl, name, func(_ api.Guest, err error) (bool, error) {
			var se *api.StatusError
			if errors.As(err, &se) && se.Code == http.StatusNotFound {
				return true, nil
			}
			return false, err
		})
		if errors.Is(err, errWaitedOut) {
			return fmt.Errorf("guest %s is still being deleted after %s (see vmctl vm show %s)", name, c.Duration("timeout"), name)
		}
		if err != nil {
			return err
		}
	}
	if !jsonOut(c) {
		fmt.Fprintf(c.App.Writer, "guest %s deleted\n", name)
	}
	return nil
}

func vmMigrate(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	to := c.String("to")
	if fe := api.ValidateName("to", to); fe != nil {
		return fmt.Errorf("--to: %s", fe.Msg)
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	var m api.Migration
	if err := cl.Do(c.Context, "POST", "/v1/guests/"+url.PathEscape(name)+"/migrate", api.MigrateRequest{Node: to}, &m); err != nil {
		return err
	}
	if jsonOut(c) {
		return printJSON(c, m)
	}
	fmt.Fprintf(c.App.Writer, "guest %s migrated %s -> %s: total %.2fs, downtime %.0fms, %s transferred\n",
		name, m.From, m.To, m.TotalSeconds, m.DowntimeSeconds*1000, units.FormatBytes(int64(m.Bytes)))
	return nil
}

func vmWhy(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	return show(c, "/v1/guests/"+url.PathEscape(name)+"/why", func(_ *api.Client, why api.Why) error { return showWhy(c, why) })
}

func showWhy(c *cli.Context, why api.Why) error {
	fmt.Fprintf(c.App.Writer, "guest %s is %s", why.Guest, why.State)
	if why.Node != "" {
		fmt.Fprintf(c.App.Writer, " on %s", why.Node)
	}
	fmt.Fprintf(c.App.Writer, "\n%s\n", why.Summary)
	var rows [][]string
	for r, n := range why.Reasons {
		rows = append(rows, []string{fmt.Sprint(n), r})
	}
	for r, n := range why.TwinReasons {
		rows = append(rows, []string{fmt.Sprint(n), "twin: " + r})
	}
	sort.Slice(rows, func(i, j int) bool { return rows[i][1] < rows[j][1] })
	if len(rows) > 0 {
		table(c, "NODES\tREASON", rows)
	}
	return nil
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"strings"
	"syscall"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/lab"
)

// labCommands are the lab's commands, `vmctl lab VERB`: a cluster of real dvm nodes on
// this machine, each a set of namespaces with its own libvirtd and dvmd agent (see
// internal/lab). Every one reads --dir, a global flag.
func labCommands() []*cli.Command {
	return []*cli.Command{
		{
			Name:  "up",
			Usage: "bring a lab up",
			Description: "Needs root. Writes DIR/env with DVM_ADDR, DVM_TOKEN, DVM_CA and DVM_LAB_DIR.\n\n" +
				"Examples:\n  vmctl lab up --nodes 3\n  vmctl lab up --set lease_duration=1s --set lease_margin=350ms --set renew_interval=150ms --set fence_grace=150ms --set max_clock_skew=50ms\n  set -a; . /var/lib/dvm-lab/env; set +a; vmctl node ls",
			Flags: []cli.Flag{
				&cli.IntFlag{Name: "nodes", Value: lab.DefaultNodes, Usage: fmt.Sprintf("number of nodes, 1 to %d", lab.MaxNodes)},
				&cli.StringFlag{Name: "dvmd", Usage: "dvmd binary run as agent in every node (default: dvmd next to vmctl-lab, else in $PATH)"},
				&cli.BoolFlag{Name: "no-agent", Usage: "start nodes with libvirt only, without dvmd"},
				&cli.BoolFlag{Name: "ceph", Usage: "also start a one-node Ceph (mon, mgr, one OSD on a file) on the bridge address: the storage pool \"ceph\" of every node (vmctl vm create --pool ceph)"},
				&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "how long to wait for libvirtd and the master"},
				&cli.StringSliceFlag{Name: "set", Usage: "KEY=VALUE: a dvmd.conf key for every node, such as lease_duration=1s (repeat the flag for more)"},
				&cli.BoolFlag{Name: "power-fence", Usage: "run the lab's power switch (vmctl lab power) and give every node its power fence agent: the master powers a silent node off and declares it lost at once (docs/operator-guide.md, power fencing); with --set power_fence_after=500ms and power_fence_action=off or reboot"},
			},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return fmt.Errorf("vmctl lab up takes no arguments (got %q): use --nodes N and --dir DIR", c.Args().Slice())
				}
				settings, err := lab.ParseSettings(c.StringSlice("set"))
				if err != nil {
					return err
				}
				start := time.Now()
				l, err := lab.Up(c.Context, lab.Options{
					Settings:    settings,
					ParseConfig: func(r io.Reader) error { _, err := config.Parse(r); return err },
					Nodes:       c.Int("nodes"),
					Dir:         c.String("dir"),
					DvmdPath:    c.String("dvmd"),
					NoAgent:     c.Bool("no-agent"),
					Ceph:        c.Bool("ceph"),
					PowerFence:  c.Bool("power-fence"),
					Timeout:     c.Duration("timeout"),
					Log:         os.Stderr,
				})
				if err != nil {
					return err
				}
				fmt.Printf("lab up in %s: %d nodes in %.1fs\n", l.Dir(), len(l.Nodes()), time.Since(start).Seconds())
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tADDR\tLIBVIRT\tAGENT")
				for _, n := range l.Nodes() {
					fmt.Fprintf(tw, "%s\t%s\t%s\t%s\n", n.Name, n.Addr, n.LibvirtURI, n.AgentURL)
				}
				tw.Flush()
				fmt.Printf("env: set -a; . %s; set +a\n", l.EnvFile())
				return nil
			},
		},
		{
			Name:        "status",
			Usage:       "show the lab's nodes: running, paused, killed, cut; libvirtd and agent answering",
			Description: "Examples:\n  vmctl lab status\n  vmctl lab status -o json",
			Flags:       []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return fmt.Errorf("vmctl lab status takes no arguments (got %q)", c.Args().Slice())
				}
				out := c.String("output")
				if out != "table" && out != "json" {
					return fmt.Errorf("--output %q: use table or json", out)
				}
				l, err := lab.Load(c.String("dir"))
				if err != nil {
					return err
				}
				st, err := l.Status(c.Context)
				if err != nil {
					return err
				}
				if out == "json" {
					enc := json.NewEncoder(os.Stdout)
					enc.SetIndent("", "  ")
					return enc.Encode(map[string]any{"dir": l.Dir(), "up": l.IsUp(), "nodes": st})
				}
				if !l.IsUp() {
					fmt.Printf("lab in %s is down\n", l.Dir())
					return nil
				}
				tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
				fmt.Fprintln(tw, "NODE\tSTATE\tPID\tLIBVIRT\tAGENT\tCUT FROM\tLIBVIRT URI")
				for _, s := range st {
					cut := s.Cut
					if cut == "" {
						cut = "-"
					}
					fmt.Fprintf(tw, "%s\t%s\t%d\t%s\t%s\t%s\t%s\n", s.Name, s.State, s.PID, yes(s.Libvirt), yes(s.Agent), cut, s.LibvirtURI)
				}
				return tw.Flush()
			},
		},
		{
			Name:  "power",
			Usage: "run the lab's power switch (vmctl lab up --power-fence starts it; lab down stops it)",
			Description: "Serves DIR/power.sock, which the nodes' power fence agents ask: off NODE kills the node as\n" +
				"vmctl lab kill does, reboot NODE kills it and starts it again, status NODE says on or off.",
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return fmt.Errorf("vmctl lab power takes no arguments (got %q)", c.Args().Slice())
				}
				l, err := loadUp(c.String("dir"))
				if err != nil {
					return err
				}
				l.SetLog(os.Stderr)
				ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGINT)
				defer stop()
				return l.ServePower(ctx)
			},
		},
		{
			Name:  "power-fence-agent",
			Usage: "the lab's power fence agent: fence-agents' options on standard input (action=off|reboot|status|monitor, plug=NODE)",
			Description: "dvmd runs it as power_fence_agent in a lab brought up with --power-fence. Example:\n" +
				"  printf 'action=status\\nplug=n2\\n' | vmctl lab power-fence-agent --socket /var/lib/dvm-lab/power.sock",
			Flags: []cli.Flag{&cli.StringFlag{Name: "socket", Required: true, Usage: "the lab's power switch socket (DIR/power.sock)"}},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return fmt.Errorf("vmctl lab power-fence-agent takes no arguments (got %q): its options come on standard input", c.Args().Slice())
				}
				state, err := lab.PowerFenceAgent(os.Stdin, c.String("socket"))
				if err != nil {
					return err
				}
				if state != "" {
					fmt.Println(state)
				}
				return nil
			},
		},
		{
			Name:        "down",
			Usage:       "bring the lab down: no process, namespace, link, nftables table or mount stays",
			Description: "Examples:\n  vmctl lab down\n  vmctl lab down --purge",
			Flags:       []cli.Flag{&cli.BoolFlag{Name: "purge", Usage: "also remove the lab's files from DIR (logs too)"}},
			Action: func(c *cli.Context) error {
				if c.NArg() > 0 {
					return fmt.Errorf("vmctl lab down takes no arguments (got %q)", c.Args().Slice())
				}
				l, err := lab.Load(c.String("dir"))
				if err != nil {
					return err
				}
				l.SetLog(os.Stderr)
				if err := l.Down(c.Context); err != nil {
					return err
				}
				if c.Bool("purge") {
					return l.Purge()
				}
				return nil
			},
		},
		labNodeCommand("kill", "end every process of a node at once, like a power loss",
			"The others declare it lost and recover its guests; vmctl lab restart boots it again.\n\n"+
				"Example:\n  vmctl lab kill n2",
			func(c *cli.Context, l *lab.Lab, node string) error { return l.Kill(node) }),
		labNodeCommand("cut", "drop a node's traffic to every peer (and the host), or to the --from nodes, both ways",
			"Examples:\n  vmctl lab cut n1                 # n1 alone: a partition\n"+
				"  vmctl lab cut n1 --from n2       # only the n1-n2 link",
			func(c *cli.Context, l *lab.Lab, node string) error {
				var from []string
				for _, f := range c.StringSlice("from") {
					if f = strings.TrimSpace(f); f != "" {
						from = append(from, f)
					}
				}
				return l.Cut(node, from)
			},
			&cli.StringSliceFlag{Name: "from", Usage: "peer `NODE` to cut it from (repeat, or n1,n2); default every peer"}),
		{
			Name:        "heal",
			Usage:       "undo the cuts of a node, or every cut",
			ArgsUsage:   "[NODE]",
			Description: "Examples:\n  vmctl lab heal n1\n  vmctl lab heal",
			Action: func(c *cli.Context) error {
				args := c.Args().Slice()
				if len(args) > 1 {
					return errors.New("usage: vmctl lab heal [NODE] (one node, or none for every cut)")
				}
				l, err := loadUp(c.String("dir"))
				if err != nil {
					return err
				}
				l.SetLog(os.Stderr)
				node := ""
				if len(args) == 1 {
					node = args[0]
				}
				return l.Heal(node)
			},
		},
		labNodeCommand("pause", "stop every process of a node (SIGSTOP): libvirtd, QEMUs, dvmd, all",
			"What a GC stall, a frozen VM or a stuck disk does to a host: nothing of the node runs,\n"+
				"its connections stay open and do not answer. vmctl lab resume continues it; kill,\n"+
				"restart and down end a paused node as any other.\n\n"+
				"Example:\n  vmctl lab pause n3; sleep 0.8; vmctl lab resume n3",
			func(c *cli.Context, l *lab.Lab, node string) error { return l.Pause(node) }),
		labNodeCommand("resume", "continue every process of a paused node (SIGCONT)",
			"Example:\n  vmctl lab resume n3",
			func(c *cli.Context, l *lab.Lab, node string) error { return l.Resume(node) }),
		labNodeCommand("restart", "boot a node again, empty of guests, as a host that rebooted",
			"Example:\n  vmctl lab restart n2",
			func(c *cli.Context, l *lab.Lab, node string) error { return l.Restart(c.Context, node) }),
		labFaultsCommand(),
	}
}

// labNodeCommand is `vmctl lab VERB NODE` on an up lab, doing do.
func labNodeCommand(verb, usage, description string, do func(c *cli.Context, l *lab.Lab, node string) error, flags ...cli.Flag) *cli.Command {
	return &cli.Command{
		Name:        verb,
		Usage:       usage,
		ArgsUsage:   "NODE",
		Description: description,
		Flags:       flags,
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("usage: vmctl lab %s NODE (one node name, such as n2)", verb)
			}
			l, err := loadUp(c.String("dir"))
			if err != nil {
				return err
			}
			l.SetLog(os.Stderr)
			return do(c, l, c.Args().First())
		},
	}
}

// loadUp loads the lab in dir and requires it to be up.
func loadUp(dir string) (*lab.Lab, error) {
	l, err := lab.Load(dir)
	if err != nil {
		return nil, err
	}
	if !l.IsUp() {
		return nil, fmt.Errorf("lab in %s is down: bring it up with `vmctl lab up --dir %s`", l.Dir(), l.Dir())
	}
	return l, nil
}

func yes(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}

package main

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dvmproject/dvm/internal/lab"
)

// labCommand is `vmctl lab`: a cluster of real dvm nodes on this machine, each a
// set of namespaces with its own libvirtd and dvmd agent (see internal/lab).
func labCommand() *cli.Command {
	dir := &cli.StringFlag{
		Name:    "dir",
		Value:   lab.DefaultDir,
		EnvVars: []string{"DVM_LAB_DIR"},
		Usage:   "`DIR` holding every file of the lab (state, token, env, logs, shared storage)",
	}
	nodeArg := func(c *cli.Context, verb string) (string, error) {
		args, err := labArgs(c)
		if err != nil {
			return "", err
		}
		if len(args) != 1 {
			return "", fmt.Errorf("usage: vmctl lab %s NODE (one node name, such as n2)", verb)
		}
		return args[0], nil
	}
	return &cli.Command{
		Name:  "lab",
		Usage: "run a cluster of real nodes on this machine (root; namespaces, libvirt, QEMU)",
		Description: `A lab is N nodes (n1..n7), each a set of Linux namespaces with its own
libvirtd (qemu+tcp://10.77.0.(10+K)/system) and dvmd agent, joined by the bridge
dvmlab0 (10.77.0.1/24). n1's agent runs the master (https://10.77.0.11:7460).
Every file lives under --dir (default /var/lib/dvm-lab); the one exception is
the guest image, built once in /var/cache/dvm/lab-image. After "lab up",
"set -a; . DIR/env; set +a" points vmctl at the lab.`,
		Subcommands: []*cli.Command{
			{
				Name:  "up",
				Usage: "bring a lab up",
				Description: "Needs root. Writes DIR/env with DVM_ADDR and DVM_TOKEN.\n\n" +
					"Examples:\n  vmctl lab up --nodes 3\n  set -a; . /var/lib/dvm-lab/env; set +a; vmctl node ls",
				Flags: []cli.Flag{
					dir,
					&cli.IntFlag{Name: "nodes", Value: lab.DefaultNodes, Usage: fmt.Sprintf("number of nodes, 1 to %d", lab.MaxNodes)},
					&cli.StringFlag{Name: "dvmd", Usage: "dvmd binary run as agent in every node (default: dvmd next to vmctl, else in $PATH)"},
					&cli.BoolFlag{Name: "no-agent", Usage: "start nodes with libvirt only, without dvmd"},
					&cli.DurationFlag{Name: "timeout", Value: 2 * time.Minute, Usage: "how long to wait for libvirtd and the master"},
				},
				Action: func(c *cli.Context) error {
					if args, err := labArgs(c); err != nil {
						return err
					} else if len(args) > 0 {
						return fmt.Errorf("vmctl lab up takes no arguments (got %q): use --nodes N and --dir DIR", args)
					}
					start := time.Now()
					l, err := lab.Up(c.Context, lab.Options{
						Nodes:    c.Int("nodes"),
						Dir:      c.String("dir"),
						DvmdPath: c.String("dvmd"),
						NoAgent:  c.Bool("no-agent"),
						Timeout:  c.Duration("timeout"),
						Log:      os.Stderr,
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
				Flags:       []cli.Flag{dir, &cli.StringFlag{Name: "output", Aliases: []string{"o"}, Value: "table", Usage: "table or json"}},
				Action: func(c *cli.Context) error {
					if args, err := labArgs(c); err != nil {
						return err
					} else if len(args) > 0 {
						return fmt.Errorf("vmctl lab status takes no arguments (got %q)", args)
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
				Name:        "down",
				Usage:       "bring the lab down: no process, namespace, link, nftables table or mount stays",
				Description: "Examples:\n  vmctl lab down\n  vmctl lab down --purge",
				Flags:       []cli.Flag{dir, &cli.BoolFlag{Name: "purge", Usage: "also remove the lab's files from DIR (logs too)"}},
				Action: func(c *cli.Context) error {
					if args, err := labArgs(c); err != nil {
						return err
					} else if len(args) > 0 {
						return fmt.Errorf("vmctl lab down takes no arguments (got %q)", args)
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
			labNodeCommand(dir, "kill", "end every process of a node at once, like a power loss",
				"The others declare it lost and recover its guests; vmctl lab restart boots it again.\n\n"+
					"Example:\n  vmctl lab kill n2",
				func(c *cli.Context, l *lab.Lab, node string) error { return l.Kill(node) }),
			{
				Name:      "cut",
				Usage:     "drop a node's traffic to every peer (and the host), or to the --from nodes, both ways",
				ArgsUsage: "NODE",
				Description: "Examples:\n  vmctl lab cut n1                 # n1 alone: a partition\n" +
					"  vmctl lab cut n1 --from n2       # only the n1-n2 link",
				Flags: []cli.Flag{dir, &cli.StringSliceFlag{Name: "from", Usage: "peer `NODE` to cut it from (repeat, or n1,n2); default every peer"}},
				Action: func(c *cli.Context) error {
					node, err := nodeArg(c, "cut")
					if err != nil {
						return err
					}
					l, err := loadUp(c.String("dir"))
					if err != nil {
						return err
					}
					l.SetLog(os.Stderr)
					var from []string
					for _, f := range c.StringSlice("from") {
						if f = strings.TrimSpace(f); f != "" {
							from = append(from, f)
						}
					}
					return l.Cut(node, from)
				},
			},
			{
				Name:        "heal",
				Usage:       "undo the cuts of a node, or every cut",
				ArgsUsage:   "[NODE]",
				Description: "Examples:\n  vmctl lab heal n1\n  vmctl lab heal",
				Flags:       []cli.Flag{dir},
				Action: func(c *cli.Context) error {
					args, err := labArgs(c)
					if err != nil {
						return err
					}
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
			labNodeCommand(dir, "pause", "stop every process of a node (SIGSTOP): libvirtd, QEMUs, dvmd, all",
				"What a GC stall, a frozen VM or a stuck disk does to a host: nothing of the node runs,\n"+
					"its connections stay open and do not answer. vmctl lab resume continues it; kill,\n"+
					"restart and down end a paused node as any other.\n\n"+
					"Example:\n  vmctl lab pause n3; sleep 0.8; vmctl lab resume n3",
				func(c *cli.Context, l *lab.Lab, node string) error { return l.Pause(node) }),
			labNodeCommand(dir, "resume", "continue every process of a paused node (SIGCONT)",
				"Example:\n  vmctl lab resume n3",
				func(c *cli.Context, l *lab.Lab, node string) error { return l.Resume(node) }),
			labNodeCommand(dir, "restart", "boot a node again, empty of guests, as a host that rebooted",
				"Example:\n  vmctl lab restart n2",
				func(c *cli.Context, l *lab.Lab, node string) error { return l.Restart(c.Context, node) }),
			labFaultsCommand(dir),
		},
	}
}

// labNodeCommand is `vmctl lab VERB NODE` on an up lab, doing do.
func labNodeCommand(dir cli.Flag, verb, usage, description string, do func(c *cli.Context, l *lab.Lab, node string) error) *cli.Command {
	return &cli.Command{
		Name:        verb,
		Usage:       usage,
		ArgsUsage:   "NODE",
		Description: description,
		Flags:       []cli.Flag{dir},
		Action: func(c *cli.Context) error {
			args, err := labArgs(c)
			if err != nil {
				return err
			}
			if len(args) != 1 {
				return fmt.Errorf("usage: vmctl lab %s NODE (one node name, such as n2)", verb)
			}
			l, err := loadUp(c.String("dir"))
			if err != nil {
				return err
			}
			l.SetLog(os.Stderr)
			return do(c, l, args[0])
		},
	}
}

// labArgs returns the positional arguments of c, applying the flags that follow
// them: urfave/cli stops parsing flags at the first argument, and operators type
// `vmctl lab cut n3 --from n1`.
func labArgs(c *cli.Context) ([]string, error) {
	var pos []string
	in := c.Args().Slice()
	for i := 0; i < len(in); i++ {
		a := in[i]
		if a == "--" {
			pos = append(pos, in[i+1:]...)
			break
		}
		if !strings.HasPrefix(a, "-") || a == "-" {
			pos = append(pos, a)
			continue
		}
		name, value, hasValue := strings.Cut(strings.TrimLeft(a, "-"), "=")
		flag := commandFlag(c.Command, name)
		if flag == nil {
			return nil, fmt.Errorf("vmctl lab %s: unknown flag %s (see vmctl lab %s --help)", c.Command.Name, a, c.Command.Name)
		}
		if _, isBool := flag.(*cli.BoolFlag); isBool && !hasValue {
			value, hasValue = "true", true
		}
		if !hasValue {
			if i+1 >= len(in) {
				return nil, fmt.Errorf("vmctl lab %s: flag %s needs a value", c.Command.Name, a)
			}
			i++
			value = in[i]
		}
		if err := c.Set(flag.Names()[0], value); err != nil {
			return nil, fmt.Errorf("vmctl lab %s: %s %s: %w", c.Command.Name, a, value, err)
		}
	}
	return pos, nil
}

// commandFlag finds the flag of cmd called name (or by an alias).
func commandFlag(cmd *cli.Command, name string) cli.Flag {
	for _, f := range cmd.Flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
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

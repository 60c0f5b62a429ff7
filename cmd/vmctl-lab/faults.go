package main

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/urfave/cli/v2"

	"github.com/dvmproject/dvm/internal/lab/faults"
)

// labFaultsCommand is `vmctl lab faults`: seeded fault schedules on an up lab, checked
// from outside (see internal/lab/faults).
func labFaultsCommand() *cli.Command {
	seed := &cli.Uint64Flag{Name: "seed", Usage: "`N` that draws the schedule: the same seed replays the same schedule (default: a new one, printed)"}
	steps := &cli.IntFlag{Name: "steps", Value: 12, Usage: "number of fault steps before the finale"}
	seedOf := func(c *cli.Context) uint64 {
		if c.IsSet("seed") {
			return c.Uint64("seed")
		}
		return rand.Uint64N(1_000_000)
	}
	return &cli.Command{
		Name:  "faults",
		Usage: "run seeded fault schedules (kill, pause, cut, heal, resume, restart) and check dvm's promises",
		Subcommands: []*cli.Command{
			{
				Name:  "plan",
				Usage: "print the schedule a seed draws, without running it",
				Description: "Examples:\n  vmctl lab faults plan --seed 7 --steps 12\n" +
					"  vmctl lab faults plan --seed 7 --nodes 5",
				Flags: []cli.Flag{seed, steps, &cli.IntFlag{Name: "nodes", Value: 5, Usage: "number of nodes of the lab"}},
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return fmt.Errorf("vmctl lab faults plan takes no arguments (got %q)", c.Args().Slice())
					}
					if err := checkSchedule(c.Int("nodes"), c.Int("steps")); err != nil {
						return err
					}
					fmt.Print(faults.Plan(seedOf(c), c.Int("nodes"), c.Int("steps")))
					return nil
				},
			},
			{
				Name:  "run",
				Usage: "run a schedule on the lab (up, every node running, no cut) and check it",
				Description: `While the schedule runs, a writer creates guests through the API and every
node is sampled every 100 ms. The checks: a guest runs on at most one node at every
sample; at most one master accepts writes at a time; no acknowledged write is lost;
after the last heal a master accepts writes and every restart guest runs again within
the bounds. Prints the schedule as it runs and a verdict; on a failure it keeps the
nodes' logs in DIR/faults/ and prints the command that replays the schedule.
Exit code 0: no violation; 1: a violation or a run that could not be carried out.

Examples:
  vmctl lab up --nodes 5 && vmctl lab faults run --seed 7 --steps 12 && vmctl lab down`,
				Flags: []cli.Flag{seed, steps,
					&cli.DurationFlag{Name: "write-bound", Value: 30 * time.Second, Usage: "from the last heal to a write accepted"},
					&cli.DurationFlag{Name: "restart-bound", Value: 90 * time.Second, Usage: "from the last heal to every restart guest running"},
					&cli.StringFlag{Name: "prefix", Usage: "start of the names of the guests the run creates (default f<seed>-)"},
				},
				Action: func(c *cli.Context) error {
					if c.NArg() > 0 {
						return fmt.Errorf("vmctl lab faults run takes no arguments (got %q): use --seed N --steps K", c.Args().Slice())
					}
					l, err := loadUp(c.String("dir"))
					if err != nil {
						return err
					}
					n := len(l.Nodes())
					if err := checkSchedule(n, c.Int("steps")); err != nil {
						return err
					}
					sd := seedOf(c)
					rerun := fmt.Sprintf("vmctl lab up --nodes %d --dir %s && vmctl lab faults run --seed %d --steps %d --dir %s",
						n, l.Dir(), sd, c.Int("steps"), l.Dir())
					res, err := faults.Run(c.Context, faults.Options{
						Lab: l, Schedule: faults.Plan(sd, n, c.Int("steps")), Out: os.Stdout, Prefix: c.String("prefix"),
						WriteBound: c.Duration("write-bound"), RestartBound: c.Duration("restart-bound"), Rerun: rerun,
					})
					if err != nil || !res.OK() {
						keep := filepath.Join(l.Dir(), "faults", fmt.Sprintf("seed-%d-%s", sd, time.Now().Format("20060102-150405")))
						if kerr := faults.KeepLogs(l, keep); kerr != nil {
							fmt.Fprintf(os.Stderr, "vmctl: keeping the nodes' logs: %v\n", kerr)
						} else {
							fmt.Printf("nodes' logs kept in %s\n", keep)
						}
					}
					if err != nil {
						return fmt.Errorf("schedule seed %d could not be carried out: %w (rerun: %s)", sd, err, rerun)
					}
					if !res.OK() {
						return fmt.Errorf("schedule seed %d: %d violations", sd, len(res.Violations))
					}
					return nil
				},
			},
		},
	}
}

// checkSchedule refuses a schedule that is too small to mean anything.
func checkSchedule(nodes, steps int) error {
	if nodes < 3 {
		return fmt.Errorf("a fault schedule needs a lab of 3 nodes at least (it has %d): bring one up with `vmctl lab up --nodes 5`", nodes)
	}
	if steps < 1 || steps > 1000 {
		return fmt.Errorf("--steps %d: give 1 to 1000 steps", steps)
	}
	return nil
}

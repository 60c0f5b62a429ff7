package main

import (
	"encoding/json"
	"fmt"
	"sort"
	"strings"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/units"
	"github.com/urfave/cli/v2"
)

func rebalanceCommand() *cli.Command {
	return &cli.Command{
		Name:  "rebalance",
		Usage: "even out load over the nodes by live migration",
		Description: "Moves guests one at a time, by live migration, from the most used node (by dominant\n" +
			"share: the larger of its CPU and memory shares in use) to where the scheduler would\n" +
			"place them, while that narrows the spread between the most and the least used node.\n" +
			"Only running guests that can move live move: twins, stopped guests, guests not yet\n" +
			"running and guests already moving stay where they are, and none is ever restarted.\n" +
			"Shows each move as it ends. A guest whose migration fails keeps running where it was;\n" +
			"the exit code is then 2. One rebalance runs at a time (the automatic balancer's, see\n" +
			"balance_threshold in the operator guide, included).\n\n" +
			"Examples:\n  vmctl cluster rebalance --dry-run   # the plan; nothing changes\n  vmctl cluster rebalance",
		Flags: []cli.Flag{&cli.BoolFlag{Name: "dry-run", Usage: "print the moves a rebalance would make now, and change nothing"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("vmctl cluster rebalance takes no arguments, not %q (the plan covers every node; see --dry-run)", c.Args().First())
			}
			if c.Bool("dry-run") {
				return rebalancePlan(c)
			}
			return runRebalance(c)
		},
	}
}

func rebalancePlan(c *cli.Context) error {
	return show(c, "/v1/cluster/rebalance", func(_ *api.Client, plan api.RebalancePlan) error {
		if len(plan.Moves) == 0 {
			return nothingToMove(c, plan)
		}
		fmt.Fprintf(c.App.Writer, "%s; after these %d moves, %s%s\n\n", spreadOf(plan.Before), len(plan.Moves), pctOf(plan.After.Spread), staying(plan.Staying))
		var rows [][]string
		for _, mv := range plan.Moves {
			rows = append(rows, []string{mv.Guest, mv.From, mv.To, fmt.Sprint(mv.CPUs), units.FormatBytes(mv.MemoryBytes)})
		}
		table(c, "GUEST\tFROM\tTO\tCPUS\tMEMORY", rows)
		return nil
	})
}

func runRebalance(c *cli.Context) error {
	cl, err := client(c)
	if err != nil {
		return err
	}
	var last api.RebalanceProgress
	err = cl.Stream(c.Context, "POST", "/v1/cluster/rebalance", nil, func(b []byte) error {
		var p api.RebalanceProgress
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("bad progress line %q: %w", b, err)
		}
		last = p
		if jsonOut(c) {
			return printJSON(c, p)
		}
		switch {
		case p.Plan != nil && len(p.Plan.Moves) == 0:
			return nothingToMove(c, *p.Plan)
		case p.Plan != nil:
			fmt.Fprintf(c.App.Writer, "%s: %d moves planned, to %s%s\n", spreadOf(p.Plan.Before), len(p.Plan.Moves), pctOf(p.Plan.After.Spread), staying(p.Plan.Staying))
		case p.Done:
		case p.Status == "moved":
			fmt.Fprintf(c.App.Writer, "guest %s %s -> %s: migrated in %.2fs, downtime %.0fms\n", p.Guest, p.From, p.To, p.TotalSeconds, p.DowntimeSeconds*1000)
		default:
			fmt.Fprintf(c.App.Writer, "guest %s: not moved to %s: %s\n", p.Guest, p.To, p.Error)
		}
		return nil
	})
	if err != nil {
		return err
	}
	if !last.Done {
		return fmt.Errorf("the rebalance ended without a summary: see `vmctl events`")
	}
	if !jsonOut(c) && (last.Moved > 0 || last.Failed > 0) {
		after := ""
		if last.After != nil {
			after = "; " + spreadOf(*last.After)
		}
		fmt.Fprintf(c.App.Writer, "rebalanced in %.1fs: %d moved, %d not moved%s\n", last.TotalSeconds, last.Moved, last.Failed, after)
	}
	switch {
	case last.Unacknowledged:
		return &exitError{3, "rebalance: " + last.Error}
	case last.Error != "":
		return fmt.Errorf("rebalance: %s", last.Error)
	case last.Failed > 0:
		return &exitError{2, fmt.Sprintf("%d guests could not move (they keep running where they were)", last.Failed)}
	}
	return nil
}

func nothingToMove(c *cli.Context, plan api.RebalancePlan) error {
	_, err := fmt.Fprintf(c.App.Writer, "nothing to move: %s, and no move narrows it%s\n", spreadOf(plan.Before), staying(plan.Staying))
	return err
}

// spreadOf says how uneven the nodes are: "spread 50% (n1 most used at 50%, n3 least at 0%)".
func spreadOf(b api.Imbalance) string {
	if b.Hot == "" {
		return "no node takes guests"
	}
	return fmt.Sprintf("spread %s (%s most used at %s, %s least at %s)", pctOf(b.Spread), b.Hot, pctOf(b.HotShare), b.Cold, pctOf(b.ColdShare))
}

func pctOf(f float64) string { return fmt.Sprintf("%.0f%%", f*100) }

// staying says which guests stay where they are, and why: "; staying: 1 not running, 2 twin".
func staying(why map[string]int) string {
	if len(why) == 0 {
		return ""
	}
	var parts []string
	for reason, n := range why {
		parts = append(parts, fmt.Sprintf("%d %s", n, reason))
	}
	sort.Strings(parts)
	return "; staying: " + strings.Join(parts, ", ")
}

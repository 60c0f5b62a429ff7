package main

import (
	"encoding/json"
	"fmt"
	"net/url"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/urfave/cli/v2"
)

func drainCommand() *cli.Command {
	return &cli.Command{
		Name:      "drain",
		Usage:     "live-migrate every guest away; the node takes no new guests",
		ArgsUsage: "NODE",
		Description: "Shows each guest as it moves. A guest whose migration fails stays running\n" +
			"where it was and is reported; the exit code is then 2.\n\nExample:\n  vmctl node drain n2",
		Action: func(c *cli.Context) error {
			node, err := oneArg(c, "node")
			if err != nil {
				return err
			}
			return runDrain(c, "drain", node)
		},
	}
}

func runDrain(c *cli.Context, verb, node string) error {
	cl, err := client(c)
	if err != nil {
		return err
	}
	var last api.DrainProgress
	err = cl.Stream(c.Context, "POST", "/v1/nodes/"+url.PathEscape(node)+"/"+verb, nil, func(b []byte) error {
		var p api.DrainProgress
		if err := json.Unmarshal(b, &p); err != nil {
			return fmt.Errorf("bad progress line %q: %w", b, err)
		}
		if jsonOut(c) {
			return printJSON(c, p)
		}
		switch {
		case p.Done:
		case p.Status == "moved" && p.TotalSeconds > 0:
			fmt.Fprintf(c.App.Writer, "guest %s -> %s: migrated in %.2fs, downtime %.0fms\n", p.Guest, p.To, p.TotalSeconds, p.DowntimeSeconds*1000)
		case p.Status == "moved":
			fmt.Fprintf(c.App.Writer, "guest %s -> %s: placed (not running)\n", p.Guest, p.To)
		default:
			fmt.Fprintf(c.App.Writer, "guest %s: not moved, stays on %s: %s\n", p.Guest, node, p.Error)
		}
		last = p
		return nil
	})
	if err != nil {
		return err
	}
	if !last.Done {
		return fmt.Errorf("%s of %s ended without a summary: see `vmctl events`", verb, node)
	}
	if last.Error != "" {
		return fmt.Errorf("%s of %s: %s", verb, node, last.Error)
	}
	if !jsonOut(c) {
		fmt.Fprintf(c.App.Writer, "node %s drained in %.1fs: %d moved, %d not moved\n", node, last.TotalSeconds, last.Moved, last.Failed)
	}
	if last.Failed > 0 {
		return &exitError{2, fmt.Sprintf("%d guests could not leave %s (they keep running there)", last.Failed, node)}
	}
	return nil
}

func undrainCommand() *cli.Command {
	return &cli.Command{
		Name:      "undrain",
		Usage:     "let a drained node take guests again",
		ArgsUsage: "NODE",
		Description: "Guests that left the node during the drain stay where they are.\n\n" +
			"Example:\n  vmctl node undrain n2",
		Action: func(c *cli.Context) error {
			node, err := oneArg(c, "node")
			if err != nil {
				return err
			}
			return runUndrain(c, node)
		},
	}
}

func runUndrain(c *cli.Context, node string) error {
	cl, err := client(c)
	if err != nil {
		return err
	}
	if err := cl.Do(c.Context, "POST", "/v1/nodes/"+url.PathEscape(node)+"/undrain", nil, nil); err != nil {
		return err
	}
	fmt.Fprintf(c.App.Writer, "node %s takes guests again\n", node)
	return nil
}

func removeCommand() *cli.Command {
	return &cli.Command{
		Name:      "remove",
		Aliases:   []string{"rm"},
		Usage:     "remove a host that is gone for good from the cluster",
		ArgsUsage: "NODE",
		Description: "Only a node the cluster holds lost, and that holds no guest any more, can be\n" +
			"removed. A removed host no longer counts toward majorities, nor among the\n" +
			"management nodes the survivors of a later failure wait for before they re-form\n" +
			"the group. If it ever comes back, it joins as a new host.\n\n" +
			"Example:\n  vmctl node remove n5",
		Action: func(c *cli.Context) error {
			node, err := oneArg(c, "node")
			if err != nil {
				return err
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			if err := cl.Do(c.Context, "DELETE", "/v1/nodes/"+url.PathEscape(node), nil, nil); err != nil {
				return err
			}
			fmt.Fprintf(c.App.Writer, "node %s removed from the cluster\n", node)
			return nil
		},
	}
}

func maintenanceCommand() *cli.Command {
	return &cli.Command{
		Name:      "maintenance",
		Usage:     "maintenance on NODE: drain it and mark it in maintenance; off NODE: end it",
		ArgsUsage: "on|off NODE",
		Description: "on drains the node (live migration of its running guests, streamed progress) and\n" +
			"keeps it out of placement until off.\n\n" +
			"Examples:\n  vmctl node maintenance on n2\n  vmctl node maintenance off n2",
		Action: func(c *cli.Context) error {
			if c.NArg() != 2 || (c.Args().Get(0) != "on" && c.Args().Get(0) != "off") {
				return fmt.Errorf("give on or off and a node: vmctl node maintenance on n2")
			}
			node := c.Args().Get(1)
			if fe := api.ValidateName("node", node); fe != nil {
				return fmt.Errorf("NODE: %s", fe.Msg)
			}
			if c.Args().Get(0) == "off" {
				return runUndrain(c, node)
			}
			return runDrain(c, "maintenance", node)
		},
	}
}

package main

import (
	"fmt"
	"net/url"
	"strings"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/urfave/cli/v2"
)

// upgradeCheckCommand is `vmctl node upgrade-check`: whether the cluster can take the
// next step of a rolling upgrade.
func upgradeCheckCommand() *cli.Command {
	return &cli.Command{
		Name:      "upgrade-check",
		Usage:     "say whether one more node's dvmd can be upgraded now (exit 2 if not)",
		ArgsUsage: " ",
		Description: "Lists every node's dvmd version, state and role, the oldest and newest version,\n" +
			"and whether the next step may be taken: every node in reach, none draining or in\n" +
			"maintenance, an acting master with three voters, versions at most one release\n" +
			"apart (and --to one release at most past the oldest). Run it before each node\n" +
			"(operator guide, section Upgrades).\n\n" +
			"Exit codes: 0 ready, 1 error, 2 not ready now (the reasons are printed).\n\n" +
			"Examples:\n  vmctl node upgrade-check\n  vmctl node upgrade-check --to 0.2.0",
		Flags: []cli.Flag{&cli.StringFlag{Name: "to", Usage: "the `VERSION` the next node would run"}},
		Action: func(c *cli.Context) error {
			if c.NArg() > 0 {
				return fmt.Errorf("unexpected argument %q: vmctl node upgrade-check takes only --to", c.Args().First())
			}
			cl, err := client(c)
			if err != nil {
				return err
			}
			path := "/v1/cluster/upgrade-check"
			if to := c.String("to"); to != "" {
				path += "?" + url.Values{"to": {to}}.Encode()
			}
			var res api.UpgradeCheck
			if err := cl.Do(c.Context, "GET", path, nil, &res); err != nil {
				return err
			}
			if jsonOut(c) {
				if err := printJSON(c, res); err != nil {
					return err
				}
			} else {
				var rows [][]string
				for _, n := range res.Nodes {
					state := n.State
					if n.Draining {
						state += ",draining"
					}
					rows = append(rows, []string{n.Name, n.Version, state, n.Role})
				}
				table(c, "NODE\tVERSION\tSTATE\tROLE", rows)
				fmt.Fprintf(c.App.Writer, "oldest %s, newest %s; master %s (acting: %v), voters %s\n",
					orDash(res.Oldest), orDash(res.Newest), orDash(res.Master), res.Acting, orDash(strings.Join(res.Voters, ",")))
			}
			if !res.Ready {
				return &exitError{code: 2, msg: "not ready for the next upgrade step:\n  " + strings.Join(res.Reasons, "\n  ")}
			}
			if !jsonOut(c) {
				fmt.Fprintln(c.App.Writer, "ready: upgrade the next node")
			}
			return nil
		},
	}
}

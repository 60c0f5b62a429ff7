package main

import (
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/urfave/cli/v2"
)

func clusterCommand() *cli.Command {
	return &cli.Command{
		Name:  "cluster",
		Usage: "the management group",
		Subcommands: []*cli.Command{rebalanceCommand(), {
			Name:  "status",
			Usage: "roles, generation, ranked candidates and lease ages",
			Description: "Roles: master, backup, candidate, node, semi-master, on-hold, lost.\n" +
				"The master acts (schedules, declares nodes lost) only while it holds leases\n" +
				"from a majority of all nodes; ACTING says whether it does now.",
			Action: func(c *cli.Context) error {
				return show(c, "/v1/cluster", func(_ *api.Client, st api.ClusterStatus) error { return showCluster(c, st) })
			},
		}, snapshotCommand()},
	}
}

func showCluster(c *cli.Context, st api.ClusterStatus) error {
	fmt.Fprintf(c.App.Writer, "generation %d, master %s (acting: %v), voters %s\ncandidates, best first: %s\n",
		st.Generation, st.Master, st.Acting, strings.Join(st.Voters, ","), orDash(strings.Join(st.Candidates, ",")))
	// A dev cluster has no role table (no voters): nothing to compare.
	if v := slices.Sorted(slices.Values(st.Voters)); len(v) > 0 && !slices.Equal(v, st.RaftVoters) {
		fmt.Fprintf(c.App.Writer, "raft voters %s (catching up with the role table)\n", orDash(strings.Join(st.RaftVoters, ",")))
	}
	fmt.Fprintln(c.App.Writer)
	var rows [][]string
	for _, n := range st.Nodes {
		lease := "-"
		if n.LeaseSeconds > 0 {
			lease = fmt.Sprintf("%.1fs", n.LeaseSeconds)
		}
		lost := "-"
		if !n.LostAt.IsZero() {
			lost = n.LostAt.Format(time.RFC3339)
		}
		rows = append(rows, []string{n.Name, n.Role, lease, lost})
	}
	table(c, "NODE\tROLE\tLEASE LEFT\tLOST AT", rows)
	printAdoption(c.App.Writer, st.Adoption)
	return nil
}

func orDash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func eventsCommand() *cli.Command {
	return &cli.Command{
		Name:        "events",
		Usage:       "what happened in the cluster and why",
		Description: "Examples:\n  vmctl events            # the recent events\n  vmctl events -f         # and follow new ones",
		Flags: []cli.Flag{
			&cli.BoolFlag{Name: "follow", Aliases: []string{"f"}, Usage: "wait for new events and print them"},
			&cli.Uint64Flag{Name: "after", Usage: "only events after this `SEQ`"},
		},
		Action: func(c *cli.Context) error {
			cl, err := client(c)
			if err != nil {
				return err
			}
			after := c.Uint64("after")
			for {
				path := fmt.Sprintf("/v1/events?after=%d", after)
				if c.Bool("follow") {
					path += "&wait=30s"
				}
				var evs []api.Event
				if err := cl.Do(c.Context, "GET", path, nil, &evs); err != nil {
					if c.Bool("follow") && c.Context.Err() == nil {
						time.Sleep(time.Second) // the master may be changing: try again
						continue
					}
					return err
				}
				for _, e := range evs {
					if jsonOut(c) {
						printJSON(c, e)
					} else {
						subject := e.Node
						if e.Guest != "" {
							subject = "guest " + e.Guest
						} else if subject != "" {
							subject = "node " + subject
						}
						by := ""
						if e.Token != "" {
							by = " (token " + e.Token + ")"
						}
						if subject != "" {
							subject += ": "
						}
						fmt.Fprintf(c.App.Writer, "%s  %-14s %s%s%s\n", e.Time.Local().Format("15:04:05.000"), e.Kind, subject, e.Detail, by)
					}
					after = e.Seq
				}
				if !c.Bool("follow") {
					return nil
				}
			}
		},
	}
}

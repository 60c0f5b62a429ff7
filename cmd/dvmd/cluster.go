package main

import (
	"fmt"

	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/urfave/cli/v2"
)

// clusterCommand is `dvmd cluster`: the operator's commands that make a cluster's
// credentials and each node's.
func clusterCommand() *cli.Command {
	dir := &cli.StringFlag{Name: "dir", Required: true, Usage: "the cluster's credentials `DIR` (holds ca.key: keep it off the nodes)"}
	return &cli.Command{
		Name:  "cluster",
		Usage: "make the cluster's credentials: its CA and gossip key, and each node's certificate",
		Subcommands: []*cli.Command{
			{
				Name:      "init",
				Usage:     "make a new cluster's CA (10 years) and gossip key in DIR",
				ArgsUsage: " ",
				Description: "Writes DIR/ca.crt, DIR/ca.key and DIR/gossip.key. Refuses to replace any file.\n" +
					"Keep DIR on the operator's machine; nodes get their files from `dvmd cluster issue`.\n\n" +
					"Example:\n  dvmd cluster init --dir ./dvm-cluster",
				Flags:  []cli.Flag{dir},
				Action: runClusterInit,
			},
			{
				Name:      "issue",
				Usage:     "issue a node's certificate (1 year) and gather its files in OUT to copy to the node",
				ArgsUsage: " ",
				Description: "Writes OUT/ca.crt, OUT/gossip.key, OUT/node-NODE.crt and OUT/node-NODE.key (never\n" +
					"ca.key). The certificate names the node and the addresses other nodes dial it at\n" +
					"(and localhost, 127.0.0.1 and ::1, for the API on the host itself); the node's API\n" +
					"shows it to vmctl and Prometheus, so name the address they reach it at too.\n" +
					"Refuses to replace a file with different content; on any error nothing is written.\n\n" +
					"Example:\n  dvmd cluster issue --dir ./dvm-cluster --name n2 --ip 10.0.0.12 --out ./n2-credentials",
				Flags: []cli.Flag{
					dir,
					&cli.StringFlag{Name: "name", Required: true, Usage: "node `NAME` (as in its dvmd.conf)"},
					&cli.StringSliceFlag{Name: "ip", Required: true, Usage: "`IP` addresses other nodes reach it at (repeat, or 10.0.0.12,fd00::12)"},
					&cli.StringSliceFlag{Name: "dns", Usage: "extra DNS `NAME`s for its certificate (repeat, or comma-separated)"},
					&cli.StringFlag{Name: "out", Required: true, Usage: "`DIR` to write the node's files to"},
				},
				Action: runClusterIssue,
			},
		},
	}
}

func runClusterInit(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: dvmd cluster init takes only --dir", c.Args().First())
	}
	d := c.String("dir")
	if err := cluster.NewCA(d); err != nil {
		return fmt.Errorf("cluster init: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "cluster credentials written to %s (%s, %s, %s)\n  next: dvmd cluster issue --dir %s --name NODE --ip IP --out DIR\n",
		d, cluster.CACertFile, cluster.CAKeyFile, cluster.GossipKeyFile, d)
	return nil
}

func runClusterIssue(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: dvmd cluster issue takes only flags", c.Args().First())
	}
	ips, err := cluster.ParseIPs(c.StringSlice("ip"))
	if err != nil {
		return fmt.Errorf("cluster issue: --ip: %w", err)
	}
	name, out := c.String("name"), c.String("out")
	if err := cluster.IssueTo(c.String("dir"), out, name, ips, c.StringSlice("dns")); err != nil {
		return fmt.Errorf("cluster issue: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "node %s: credentials written to %s (%s, %s, %s, %s)\n  copy them to node %s, keeping the key files mode 0600\n",
		name, out, cluster.CACertFile, cluster.GossipKeyFile, cluster.NodeCertFile(name), cluster.NodeKeyFile(name), name)
	return nil
}

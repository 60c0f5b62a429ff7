package main

import (
	"bufio"
	"fmt"
	"os"
	"strings"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cluster"
	"github.com/dvmproject/dvm/internal/daemon"
	"github.com/urfave/cli/v2"
)

// joinCommand is `dvmd join TOKEN`: a new host fetches its credentials with a join
// token and writes its config.
func joinCommand() *cli.Command {
	return &cli.Command{
		Name:      "join",
		Usage:     "make this host a node of a cluster, with a join token",
		ArgsUsage: "TOKEN",
		Description: "TOKEN is what `vmctl token create NAME --scope join` printed (- reads it from stdin,\n" +
			"which keeps it out of the process list). dvmd join makes this host's key, asks a\n" +
			"management node (one the token names, or --master) for a certificate for its name,\n" +
			"the cluster's CA and its gossip key, and writes them to --credentials-dir and the\n" +
			"node's config to --config. It checks that the management node shows the CA the token\n" +
			"names before it sends the token. Refused, it writes nothing. The management nodes must\n" +
			"hold the cluster's ca.key to sign the certificate.\n\n" +
			"Examples:\n  dvmd join dvmjoin1.xxxx\n  dvmd join --name n4 --ip 10.0.0.14 --labels rack=r2 dvmjoin1.xxxx\n" +
			"  dvmd join --management --master https://10.0.0.11:7460 - < token",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "master", Usage: "management nodes' API `URLS`, comma-separated (default: the token's)"},
			&cli.StringFlag{Name: "name", Usage: "node `NAME` (default: the host name)"},
			&cli.StringSliceFlag{Name: "ip", Usage: "`IP` addresses other nodes reach this host at (default: the one it reaches the master from)"},
			&cli.BoolFlag{Name: "management", Usage: "this host can hold a management role"},
			&cli.StringFlag{Name: "labels", Usage: "node labels `k=v,k=v` (rack and zone are failure domains)"},
			&cli.StringFlag{Name: "config", Value: "/etc/dvm/dvmd.conf", Usage: "config `FILE` to write (must not exist)"},
			&cli.StringFlag{Name: "credentials-dir", Value: "/etc/dvm/credentials", Usage: "`DIR` for the node's credentials"},
			&cli.StringFlag{Name: "data-dir", Value: "/var/lib/dvm", Usage: "the node's state `DIR`, for its config"},
			&cli.StringFlag{Name: "ca", Usage: "`FILE` of the CA of the API's certificate, when the management nodes show one of their own (api_tls_cert)"},
		},
		Action: runJoin,
	}
}

func runJoin(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("give the join token, one argument: dvmd join TOKEN (make one with vmctl token create NAME --scope join)")
	}
	token := c.Args().First()
	if token == "-" {
		line, err := bufio.NewReader(os.Stdin).ReadString('\n')
		if err != nil && line == "" {
			return fmt.Errorf("read the join token from stdin: %w", err)
		}
		token = line
	}
	o := daemon.JoinOptions{Token: strings.TrimSpace(token), Name: c.String("name"), Management: c.Bool("management"),
		ConfigFile: c.String("config"), CredentialsDir: c.String("credentials-dir"), DataDir: c.String("data-dir"), CAFile: c.String("ca")}
	if m := c.String("master"); m != "" {
		for _, u := range strings.Split(m, ",") {
			if u = strings.TrimSpace(u); u != "" {
				o.Masters = append(o.Masters, u)
			}
		}
	}
	if ips := c.StringSlice("ip"); len(ips) > 0 {
		var err error
		if o.IPs, err = cluster.ParseIPs(ips); err != nil {
			return fmt.Errorf("--ip: %w", err)
		}
	}
	if l := c.String("labels"); l != "" {
		var err error
		if o.Labels, err = api.ParseLabels(l); err != nil {
			return fmt.Errorf("--labels: %w", err)
		}
	}
	j, err := daemon.Join(c.Context, o)
	if err != nil {
		return fmt.Errorf("join: %w", err)
	}
	fmt.Fprintf(c.App.Writer, "node %s joined: credentials in %s, config in %s (reached at %s)\n"+
		"  next: add images_dir and disks_dir (shared storage) to %s if guests need them, then\n"+
		"  systemctl enable --now dvmd\n", j.Name, j.CredentialsDir, j.ConfigFile, j.IPs[0], j.ConfigFile)
	return nil
}

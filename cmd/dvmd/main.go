// dvmd is dvm's daemon: the node agent on every host, and the master on management
// nodes. `dvmd dev` runs a whole cluster in one process on libvirt's test driver.
package main

import (
	"context"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/dvmproject/dvm/internal/config"
	"github.com/dvmproject/dvm/internal/daemon"
	"github.com/dvmproject/dvm/internal/fenceguard"
	"github.com/dvmproject/dvm/internal/version"
	"github.com/urfave/cli/v2"
)

func main() {
	app := &cli.App{
		Name:    "dvmd",
		Usage:   "dvm's node agent and master",
		Version: version.Version,
		Commands: []*cli.Command{
			clusterCommand(),
			joinCommand(),
			{
				Name:   "fence-guard",
				Usage:  "stop this node's HA guests when dvmd stops holding its lease (started by dvmd agent)",
				Hidden: true,
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "libvirt-uri", Required: true},
					&cli.StringFlag{Name: "lease-file", Required: true},
					&cli.DurationFlag{Name: "window", Required: true},
					&cli.StringFlag{Name: "paused-file", Usage: "record of the HA guests paused for want of a lease; without it they are destroyed"},
				},
				Action: func(c *cli.Context) error {
					ctx, cancel := signalContext()
					defer cancel()
					return fenceguard.Run(ctx, fenceguard.Options{URI: c.String("libvirt-uri"), LeaseFile: c.String("lease-file"),
						Window: c.Duration("window"), PausedFile: c.String("paused-file"), Log: logger("info").With("component", "fence-guard")})
				},
			},
			{
				Name:      "agent",
				Usage:     "run this host as a dvm node",
				ArgsUsage: " ",
				Description: "Runs the node agent over this host's libvirt, as the config file says. A node with\n" +
					"`management = true` also runs the master and serves the API.\n\n" +
					"Example:\n  dvmd agent --config /etc/dvm/dvmd.conf",
				Flags:  []cli.Flag{&cli.StringFlag{Name: "config", Aliases: []string{"c"}, Usage: "config `FILE`", Value: "/etc/dvm/dvmd.conf"}},
				Action: runAgent,
			},
			{
				Name:      "dev",
				Usage:     "run a whole dev cluster in this process, on libvirt's test driver",
				ArgsUsage: " ",
				Description: "Runs N nodes, each on its own in-process libvirt test hypervisor with its own\n" +
					"capacity, and a master. State survives a restart (DIR/state.db). Writes DIR/env:\n" +
					"  set -a; . DIR/env; set +a; vmctl node ls\n" +
					"A node dies with dvmd dev kill NODE (its guests come back on the others); a restart\n" +
					"takes it back.",
				Flags: []cli.Flag{
					&cli.IntFlag{Name: "nodes", Value: 3, Usage: "number of nodes (1 to 64)"},
					&cli.StringFlag{Name: "listen", Value: "127.0.0.1:7460", Usage: "API `ADDR`"},
					&cli.StringFlag{Name: "data-dir", Value: "./dvm-dev", Usage: "state `DIR`"},
				},
				Action: runDev,
				Subcommands: []*cli.Command{{
					Name:      "kill",
					Usage:     "kill a node of the dev cluster running on DIR, as a host that loses power",
					ArgsUsage: "NODE",
					Description: "The node's agent stops and every guest running on it is destroyed. Once the master\n" +
						"shows the node unreachable, the dev cluster declares it lost (it has no role machine\n" +
						"to do so) and the master brings its guests back on the other nodes: watch it with\n" +
						"vmctl events -f. The node stays dead until dvmd dev is started again.\n\n" +
						"Example:\n  dvmd dev kill --data-dir ./dvm-dev n2",
					Flags:  []cli.Flag{&cli.StringFlag{Name: "data-dir", Value: "./dvm-dev", Usage: "`DIR` of the running dev cluster"}},
					Action: runDevKill,
				}},
			},
		},
	}
	if err := app.Run(os.Args); err != nil {
		fmt.Fprintln(os.Stderr, "dvmd:", err)
		os.Exit(1)
	}
}

func logger(level string) *slog.Logger {
	var l slog.Level
	_ = l.UnmarshalText([]byte(level))
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: l}))
}

func signalContext() (context.Context, context.CancelFunc) {
	return signal.NotifyContext(context.Background(), syscall.SIGINT, syscall.SIGTERM)
}

func runAgent(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: dvmd agent takes only --config", c.Args().First())
	}
	cfg, err := config.Load(c.String("config"))
	if err != nil {
		return err
	}
	log := logger(cfg.LogLevel)
	ctx, cancel := signalContext()
	defer cancel()
	n, err := daemon.StartNode(ctx, cfg, log)
	if err != nil {
		return err
	}
	defer n.Stop()
	select {
	case <-ctx.Done():
		return nil
	case <-n.Done():
		return n.Err()
	}
}

func runDevKill(c *cli.Context) error {
	if c.NArg() != 1 {
		return fmt.Errorf("give one node, after the flags: dvmd dev kill --data-dir DIR NODE")
	}
	detail, err := daemon.KillDevNode(c.String("data-dir"), c.Args().First())
	if err != nil {
		return err
	}
	fmt.Fprintln(c.App.Writer, detail)
	return nil
}

func runDev(c *cli.Context) error {
	if c.NArg() > 0 {
		return fmt.Errorf("unexpected argument %q: dvmd dev takes only flags", c.Args().First())
	}
	ctx, cancel := signalContext()
	defer cancel()
	log := logger("info")
	d, err := daemon.StartDev(ctx, daemon.DevOptions{Nodes: c.Int("nodes"), Listen: c.String("listen"), DataDir: c.String("data-dir"), Log: log})
	if err != nil {
		return err
	}
	defer d.Stop()
	log.Info("dev cluster up", "nodes", len(d.Nodes), "api", d.Addr, "env", d.EnvFile)
	fmt.Fprintf(os.Stderr, "dvm dev cluster: %d nodes, API at %s\n  set -a; . %s; set +a\n  vmctl node ls\n", len(d.Nodes), d.Addr, d.EnvFile)
	select {
	case <-ctx.Done():
		return nil
	case <-d.Stopped():
		return d.Err()
	}
}

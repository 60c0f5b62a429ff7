// vmctl-lab runs the lab: a cluster of real dvm nodes on this Linux machine, each a set
// of namespaces with its own libvirtd and dvmd (see internal/lab). Operators run it as
// `vmctl lab ARGS...`: vmctl finds vmctl-lab next to itself or on PATH and runs it, as
// git and kubectl run their plugins. The lab links libvirt (cgo), raft and memberlist;
// kept out of vmctl, they leave vmctl a static program for any platform.
//
// Exit codes: 0 success, 1 error (for `faults run`: a violation, or a run that could
// not be carried out).
package main

import (
	"fmt"
	"io"
	"os"

	"github.com/urfave/cli/v2"

	"github.com/dvmproject/dvm/internal/cmdline"
	"github.com/dvmproject/dvm/internal/lab"
	"github.com/dvmproject/dvm/internal/version"
)

func main() {
	app := newApp(os.Stdout)
	if err := app.Run(cmdline.Interspersed(app, os.Args)); err != nil {
		fmt.Fprintln(os.Stderr, "vmctl lab:", err)
		os.Exit(1)
	}
}

func newApp(out io.Writer) *cli.App {
	return &cli.App{
		// Named as operators call it: help and errors say `vmctl lab VERB`.
		Name:    "vmctl lab",
		Usage:   "run a cluster of real nodes on this machine (root; namespaces, libvirt, QEMU)",
		Version: version.Version,
		Writer:  out,
		// vmctl completes `vmctl lab ...` by asking this program.
		EnableBashCompletion: true,
		// urfave/cli would end the process itself, with 3, for an unknown command.
		ExitErrHandler: func(*cli.Context, error) {},
		Suggest:        true,
		Description: `A lab is N nodes (n1..n7), each a set of Linux namespaces with its own
libvirtd (qemu+tcp://10.77.0.(10+K)/system) and dvmd agent, joined by the bridge
dvmlab0 (10.77.0.1/24). n1's agent runs the master (https://10.77.0.11:7460).
Every file lives under --dir (default /var/lib/dvm-lab, or DVM_LAB_DIR); the one
exception is the guest image, built once in /var/cache/dvm/lab-image. After
"lab up", "set -a; . DIR/env; set +a" points vmctl at the lab, and names DIR
(DVM_LAB_DIR) for the lab's own commands.

This is vmctl-lab, which vmctl runs for "vmctl lab": build it with
go build -o bin/ ./cmd/vmctl-lab (Linux, cgo and libvirt-dev), next to vmctl.`,
		Flags: []cli.Flag{
			&cli.StringFlag{
				Name:    "dir",
				Value:   lab.DefaultDir,
				EnvVars: []string{"DVM_LAB_DIR"},
				Usage:   "`DIR` holding every file of the lab (state, token, env, logs, shared storage)",
			},
		},
		Commands: labCommands(),
	}
}

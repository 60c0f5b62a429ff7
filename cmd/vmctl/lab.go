package main

import (
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"

	"github.com/dvmproject/dvm/internal/cmdline"
	"github.com/urfave/cli/v2"
)

// labPlugin is the program `vmctl lab` runs. The lab links libvirt (cgo), raft and
// memberlist, which vmctl must not: vmctl is one static binary for Linux and macOS.
const labPlugin = "vmctl-lab"

// labCommand is `vmctl lab ARGS...`: it runs vmctl-lab ARGS..., found next to this
// vmctl (a build's bin/ holds both) or else on PATH, in vmctl's place, so that its
// output, signals and exit code are the lab's own.
func labCommand() *cli.Command {
	return &cli.Command{
		Name:      "lab",
		Usage:     "run a cluster of real nodes on this machine (root; namespaces, libvirt, QEMU)",
		ArgsUsage: "up|status|kill|cut|heal|pause|resume|restart|faults|down ...",
		Description: "Runs the program " + labPlugin + ", next to vmctl or on PATH, with the arguments that\n" +
			"follow: see vmctl lab --help. Build it on Linux with cgo and libvirt-dev:\n" +
			"  go build -o bin/ ./cmd/vmctl ./cmd/vmctl-lab ./cmd/dvmd\n" +
			"The lab reads no API flag: its own addresses, token and CA are in DIR/env, and\n" +
			"after set -a; . DIR/env; set +a its commands act on DIR (DVM_LAB_DIR).\n\n" +
			"Examples:\n  vmctl lab up --nodes 3\n  vmctl lab kill n2\n  vmctl lab status -o json",
		// Every argument is vmctl-lab's, flags included.
		SkipFlagParsing: true,
		HideHelp:        true,
		BashComplete: func(c *cli.Context) {
			// Completion is the plugin's too; without it there is nothing to offer.
			if path, err := findLabPlugin(); err == nil {
				cmd := exec.Command(path, append(c.Args().Slice(), cmdline.CompletionFlag)...)
				cmd.Stdout = c.App.Writer
				cmd.Run()
			}
		},
		Action: func(c *cli.Context) error {
			path, err := findLabPlugin()
			if err != nil {
				return err
			}
			args := append([]string{path}, c.Args().Slice()...)
			if c.IsSet("output") {
				// vmctl -o json lab status: the lab's status reads -o.
				args = append(args, "--output", c.String("output"))
			}
			if err := syscall.Exec(path, args, os.Environ()); err != nil {
				return fmt.Errorf("run %s: %w", path, err)
			}
			return nil
		},
	}
}

// findLabPlugin finds vmctl-lab next to the running vmctl, else on PATH.
func findLabPlugin() (string, error) {
	exe, err := os.Executable()
	if err != nil {
		return "", fmt.Errorf("find %s: %w", labPlugin, err)
	}
	return lookPlugin(labPlugin, filepath.Dir(exe))
}

// lookPlugin finds the executable file name in dir, else on PATH, and says how to build
// it when it is in neither.
func lookPlugin(name, dir string) (string, error) {
	p := filepath.Join(dir, name)
	if fi, err := os.Stat(p); err == nil && !fi.IsDir() && fi.Mode()&0o111 != 0 {
		return p, nil
	}
	if p, err := exec.LookPath(name); err == nil {
		return p, nil
	} else if !errors.Is(err, exec.ErrNotFound) {
		return "", fmt.Errorf("%s on PATH: %w", name, err)
	}
	return "", fmt.Errorf("vmctl lab runs the program %s, which is neither next to vmctl (in %s) nor on PATH: "+
		"build it on a Linux host with cgo and libvirt-dev, next to vmctl: go build -o %s/ ./cmd/%s (see internal/lab/README.md)",
		name, dir, dir, name)
}

package main

import (
	"bytes"
	"fmt"
	"io"
	"net/url"
	"os"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/atomicfile"
	"github.com/dvmproject/dvm/internal/snapshot"
	"github.com/urfave/cli/v2"
)

// snapshotCommand is `vmctl cluster snapshot`: the replicated state saved to a file
// and restored from one onto a new management group.
func snapshotCommand() *cli.Command {
	return &cli.Command{
		Name:  "snapshot",
		Usage: "save the cluster's state to a file, or restore it onto a new management group",
		Description: "A snapshot holds the whole replicated state (nodes, guests, networks, tokens, events)\n" +
			"as of one index of the raft log, with its SHA-256 and format version. It is what\n" +
			"brings a cluster back when every management node is lost: start a new management\n" +
			"node (bootstrap = true, empty data_dir) and restore onto it; the guests still running\n" +
			"on their hosts are adopted where they run (operator guide, section Backup and restore).",
		Subcommands: []*cli.Command{
			{
				Name:      "save",
				Usage:     "save the cluster's state to FILE (admin token)",
				ArgsUsage: "FILE",
				Description: "FILE is written whole or not at all (mode 0600: it holds the tokens' hashes),\n" +
					"after its checksum is checked.\n\nExample:\n  vmctl cluster snapshot save dvm-$(date +%F).snap",
				Action: snapshotSave,
			},
			{
				Name:      "restore",
				Usage:     "restore the state from FILE onto a new management group (admin token)",
				ArgsUsage: "FILE",
				Description: "Only a group whose state holds no guest and no network takes it. Until every node\n" +
					"of the snapshot has reported (its running guests are adopted where they run) or is\n" +
					"declared lost, no guest is started, placed or moved; nodes silent at the adoption\n" +
					"timeout that hold no lease are declared lost. Afterwards the snapshot's tokens are\n" +
					"in force: use one of them (the old bootstrap token file, a token you made).\n\n" +
					"Example:\n  vmctl cluster snapshot restore dvm-2026-11-30.snap",
				Flags: []cli.Flag{
					&cli.DurationFlag{Name: "adopt-timeout", Value: 5 * time.Minute,
						Usage: "how long to wait for the snapshot's nodes to report before the silent ones are declared lost"},
				},
				Action: snapshotRestore,
			},
			{
				Name:        "inspect",
				Usage:       "check FILE and print what it holds (no cluster needed)",
				ArgsUsage:   "FILE",
				Description: "Example:\n  vmctl cluster snapshot inspect dvm-2026-11-30.snap",
				Action:      snapshotInspect,
			},
		},
	}
}

func snapshotFileArg(c *cli.Context) (string, error) {
	if c.NArg() != 1 {
		return "", fmt.Errorf("give one FILE: vmctl cluster snapshot %s FILE", c.Command.Name)
	}
	return c.Args().First(), nil
}

func snapshotSave(c *cli.Context) error {
	path, err := snapshotFileArg(c)
	if err != nil {
		return err
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	var raw []byte
	if err := cl.Do(c.Context, "GET", "/v1/cluster/snapshot", nil, &raw); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	h, _, err := snapshot.Read(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("save snapshot: the master's answer: %w; nothing was written", err)
	}
	if err := atomicfile.Write(path, raw, 0o600); err != nil {
		return fmt.Errorf("save snapshot: %w", err)
	}
	if jsonOut(c) {
		return printJSON(c, h)
	}
	printSnapshotHeader(c.App.Writer, h)
	fmt.Fprintf(c.App.Writer, "written to %s\n", path)
	return nil
}

func readSnapshotFile(path string) (snapshot.Header, []byte, error) {
	raw, err := os.ReadFile(path)
	if err != nil {
		return snapshot.Header{}, nil, err
	}
	h, _, err := snapshot.Read(bytes.NewReader(raw))
	if err != nil {
		return h, nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, raw, nil
}

func snapshotRestore(c *cli.Context) error {
	path, err := snapshotFileArg(c)
	if err != nil {
		return err
	}
	timeout := c.Duration("adopt-timeout")
	if timeout < time.Second || timeout > 24*time.Hour {
		return fmt.Errorf("--adopt-timeout %s: give 1s to 24h", timeout)
	}
	// The envelope is checked here, before anything is sent; the master checks it
	// again, and the state within.
	_, raw, err := readSnapshotFile(path)
	if err != nil {
		return fmt.Errorf("restore snapshot: %w; nothing was changed", err)
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	var res api.SnapshotRestored
	q := url.Values{"adopt_timeout": {timeout.String()}}
	if err := cl.Do(c.Context, "PUT", "/v1/cluster/snapshot?"+q.Encode(), raw, &res); err != nil {
		return fmt.Errorf("restore snapshot: %w", err)
	}
	if jsonOut(c) {
		return printJSON(c, res)
	}
	w := c.App.Writer
	fmt.Fprintf(w, "state restored from the snapshot of index %d taken at %s (dvmd %s): %d guests, %d nodes, %d networks, %d tokens\n",
		res.SnapshotIndex, res.SnapshotTakenAt.Local().Format(time.RFC3339), res.SnapshotVersion, res.Guests, res.Nodes, res.Networks, res.Tokens)
	printAdoption(w, &res.Adoption)
	fmt.Fprintln(w, "the snapshot's tokens are in force now: the token of this request works only if the snapshot holds it")
	return nil
}

func snapshotInspect(c *cli.Context) error {
	path, err := snapshotFileArg(c)
	if err != nil {
		return err
	}
	h, _, err := readSnapshotFile(path)
	if err != nil {
		return err
	}
	if jsonOut(c) {
		return printJSON(c, h)
	}
	printSnapshotHeader(c.App.Writer, h)
	return nil
}

func printSnapshotHeader(w io.Writer, h snapshot.Header) {
	fmt.Fprintf(w, "snapshot of index %d (term %d, generation %d) taken at %s by master %s, dvmd %s, format %d\n",
		h.Index, h.Term, h.Generation, h.TakenAt.Local().Format(time.RFC3339), h.Master, h.Version, h.Format)
	fmt.Fprintf(w, "%d guests, %d nodes, %d networks, %d tokens; %d bytes, sha256 %s\n",
		h.Guests, h.Nodes, h.Networks, h.Tokens, h.Size, h.SHA256)
}

// printAdoption says where the adoption after a restore stands.
func printAdoption(w io.Writer, a *api.Adoption) {
	if a == nil {
		return
	}
	if a.Adopting {
		fmt.Fprintf(w, "adopting the guests after the restore of %s: waiting for %s to report; silent nodes without a lease are declared lost at %s\n",
			a.RestoredAt.Local().Format(time.RFC3339), strings.Join(a.Awaiting, ", "), a.Deadline.Local().Format(time.RFC3339))
		return
	}
	fmt.Fprintf(w, "restored at %s from the snapshot of index %d; guests adopted by %s\n",
		a.RestoredAt.Local().Format(time.RFC3339), a.SnapshotIndex, a.DoneAt.Local().Format(time.RFC3339))
}

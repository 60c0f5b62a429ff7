package cmdline

import (
	"strings"
	"testing"

	"github.com/urfave/cli/v2"
)

// app has what the rules are about: value and bool global flags, a command path with
// flags at the leaf, a leaf flag that shadows a global one, and a command that reads
// its own arguments.
func app() *cli.App {
	return &cli.App{
		Name: "prog",
		Flags: []cli.Flag{
			&cli.StringFlag{Name: "addr"},
			&cli.StringFlag{Name: "output", Aliases: []string{"o"}},
			&cli.BoolFlag{Name: "quiet"},
		},
		Commands: []*cli.Command{
			{Name: "vm", Subcommands: []*cli.Command{
				{Name: "create", Flags: []cli.Flag{&cli.IntFlag{Name: "cpus"}, &cli.BoolFlag{Name: "stopped"}}},
				{Name: "ls", Aliases: []string{"list"}},
			}},
			{Name: "status", Flags: []cli.Flag{&cli.StringFlag{Name: "output", Aliases: []string{"o"}}}},
			{Name: "lab", SkipFlagParsing: true},
		},
	}
}

func TestInterspersed(t *testing.T) {
	for _, tc := range []struct{ in, want string }{
		{"vm ls", "vm ls"},
		{"-o json vm ls", "-o json vm ls"},
		{"vm ls -o json", "-o json vm ls"},
		{"vm -o json ls", "-o json vm ls"},
		{"vm list --output=json --addr https://a", "--output=json --addr https://a vm list"},
		{"vm create web --cpus 2 -o json --stopped", "-o json vm create --cpus 2 --stopped web"},
		{"vm create --quiet web --cpus=2", "--quiet vm create --cpus=2 web"},
		// The leaf's own -o is the leaf's.
		{"status -o json", "status -o json"},
		{"--addr x status -o json", "--addr x status -o json"},
		// Unknown flags stay with their command, where urfave/cli names them.
		{"vm ls --bogus", "vm ls --bogus"},
		{"vm create web --bogus 3", "vm create --bogus web 3"},
		{"--help", "--help"},
		{"vm ls --help", "vm ls --help"},
		// After "--", and after a command that reads its own arguments, nothing moves.
		{"vm create -o json -- -web --cpus", "-o json vm create -- -web --cpus"},
		{"lab kill n2 --dir /x -o json", "lab kill n2 --dir /x -o json"},
		{"-o json lab status", "-o json lab status"},
		{"vm create web -", "vm create web -"},
		// A value that looks like a word of the command path is a value.
		{"--addr vm vm ls", "--addr vm vm ls"},
	} {
		got := strings.Join(Interspersed(app(), append([]string{"prog"}, strings.Fields(tc.in)...))[1:], " ")
		if got != tc.want {
			t.Errorf("%q: got %q, want %q", tc.in, got, tc.want)
		}
	}
}

// TestInterspersedParses runs the reordered line through urfave/cli: the values reach
// the flags they were written for.
func TestInterspersedParses(t *testing.T) {
	a := app()
	var got []string
	a.Commands[0].Subcommands[0].Action = func(c *cli.Context) error {
		got = []string{c.String("output"), c.String("addr"), c.Args().First(), strings.TrimSpace(strings.Repeat("x", c.Int("cpus")))}
		return nil
	}
	args := strings.Fields("prog vm create web --cpus 3 --addr https://a -o json")
	if err := a.Run(Interspersed(a, args)); err != nil {
		t.Fatal(err)
	}
	if strings.Join(got, ",") != "json,https://a,web,xxx" {
		t.Fatalf("parsed %q", got)
	}
}

// TestCompletionLineStays: what a completion script asks about reaches urfave/cli as
// typed, its flag last.
func TestCompletionLineStays(t *testing.T) {
	in := []string{"prog", "vm", "create", "web", "-o", CompletionFlag}
	if got := Interspersed(app(), in); strings.Join(got, " ") != strings.Join(in, " ") {
		t.Fatalf("completion line reordered: %q", got)
	}
}

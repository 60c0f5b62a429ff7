// Package cmdline is what vmctl and vmctl-lab share in reading their command lines:
// urfave/cli v2 reads a command's flags only before its first argument, and an app's
// global flags only before the first command, while operators write flags where they
// think of them (`vmctl vm ls -o json`, `vmctl vm create web --cpus 2`).
package cmdline

import (
	"strings"

	"github.com/urfave/cli/v2"
)

// CompletionFlag is the flag urfave/cli answers with the words that may come next;
// completion scripts append it to the command line typed so far.
const CompletionFlag = "--generate-bash-completion"

// completing reports whether the program was run by a completion script. Its arguments
// must then reach urfave/cli as typed, the flag last where urfave/cli looks for it.
func completing(args []string) bool {
	return len(args) > 0 && args[len(args)-1] == CompletionFlag
}

// Interspersed reorders args (os.Args) into the order urfave/cli reads:
//
//   - the app's global flags (app.Flags), wherever they are written, go first, right
//     after the program name, unless the command written before them has a flag of the
//     same name, which then takes them;
//   - a command's flags follow the command they were written after, or, past the last
//     command word, the last command;
//   - positional arguments follow them, in their order;
//   - everything after "--" stays as it is, after the rest;
//   - everything after a command that reads its own arguments (SkipFlagParsing: vmctl
//     lab, which hands them to vmctl-lab) stays as it is, global flags included;
//   - a line a completion script asks about (CompletionFlag last) stays as it is.
//
// A flag that neither the command nor the app knows stays with the command, where
// urfave/cli refuses it and names it.
func Interspersed(app *cli.App, args []string) []string {
	if len(args) < 2 || completing(args) {
		return args
	}
	var globals, rest []string
	// words is the command path with each command's flags after it; tail holds the
	// flags and arguments written after the last command word.
	var words, flags, pos []string
	var cmd *cli.Command // the last command word; nil before the first
	cmds := app.Commands
	for i := 1; i < len(args); i++ {
		a := args[i]
		if a == "--" {
			rest = args[i:]
			break
		}
		if isFlag(a) {
			var local []cli.Flag
			if cmd != nil {
				local = cmd.Flags
			}
			value := i+1 < len(args) && !strings.Contains(a, "=")
			switch {
			case flagNamed(local, a) != nil || cmd != nil && flagNamed(app.Flags, a) == nil:
				flags = append(flags, a)
				if value && takesValue(flagNamed(local, a)) {
					i++
					flags = append(flags, args[i])
				}
			default:
				globals = append(globals, a)
				if value && takesValue(flagNamed(app.Flags, a)) {
					i++
					globals = append(globals, args[i])
				}
			}
			continue
		}
		if len(pos) == 0 {
			if next := find(cmds, a); next != nil {
				words = append(append(words, flags...), a)
				flags = nil
				cmd, cmds = next, next.Subcommands
				if next.SkipFlagParsing {
					rest = args[i+1:]
					break
				}
				continue
			}
		}
		pos = append(pos, a)
	}
	out := append([]string{args[0]}, globals...)
	out = append(append(append(out, words...), flags...), pos...)
	return append(out, rest...)
}

func isFlag(a string) bool { return strings.HasPrefix(a, "-") && len(a) > 1 }

func find(cmds []*cli.Command, name string) *cli.Command {
	for _, c := range cmds {
		if c.HasName(name) {
			return c
		}
	}
	return nil
}

// flagNamed finds the flag an argument such as "-o", "--output" or "--output=json"
// names among flags, or nil.
func flagNamed(flags []cli.Flag, arg string) cli.Flag {
	name, _, _ := strings.Cut(strings.TrimLeft(arg, "-"), "=")
	for _, f := range flags {
		for _, n := range f.Names() {
			if n == name {
				return f
			}
		}
	}
	return nil
}

// takesValue says whether a flag written without "=" is followed by its value.
func takesValue(f cli.Flag) bool {
	if f == nil {
		return false
	}
	_, isBool := f.(*cli.BoolFlag)
	return !isBool
}

package main

import (
	"fmt"
	"strings"

	"github.com/dvmproject/dvm/internal/cmdline"
	"github.com/urfave/cli/v2"
)

// The scripts are urfave/cli's own (autocomplete/bash_autocomplete and zsh_autocomplete)
// with the program name filled in.
const bashCompletion = `# bash completion for vmctl: source <(vmctl completion bash)
_vmctl_bash_autocomplete() {
  if [[ "${COMP_WORDS[0]}" != "source" ]]; then
    local cur opts words cword
    COMPREPLY=()
    cur="${COMP_WORDS[COMP_CWORD]}"
    if declare -F _init_completion >/dev/null 2>&1; then
      _init_completion -n "=:" || return
    else
      words=("${COMP_WORDS[@]}")
      cword=$COMP_CWORD
    fi
    words=("${words[@]:0:$cword}")
    if [[ "$cur" == "-"* ]]; then
      requestComp="${words[*]} ${cur} ` + cmdline.CompletionFlag + `"
    else
      requestComp="${words[*]} ` + cmdline.CompletionFlag + `"
    fi
    opts=$(eval "${requestComp}" 2>/dev/null)
    COMPREPLY=($(compgen -W "${opts}" -- ${cur}))
    return 0
  fi
}
complete -o bashdefault -o default -o nospace -F _vmctl_bash_autocomplete vmctl
`

const zshCompletion = `#compdef vmctl
# zsh completion for vmctl: source <(vmctl completion zsh), after compinit
_vmctl_zsh_autocomplete() {
  local -a opts
  local cur
  cur=${words[-1]}
  if [[ "$cur" == "-"* ]]; then
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ${cur} ` + cmdline.CompletionFlag + `)}")
  else
    opts=("${(@f)$(${words[@]:0:#words[@]-1} ` + cmdline.CompletionFlag + `)}")
  fi
  if [[ "${opts[1]}" != "" ]]; then
    _describe 'values' opts
  else
    _files
  fi
}
compdef _vmctl_zsh_autocomplete vmctl
`

func completionCommand() *cli.Command {
	return &cli.Command{
		Name:      "completion",
		Usage:     "print a shell completion script for bash or zsh",
		ArgsUsage: "bash|zsh",
		Description: "Prints a script that completes vmctl's commands, subcommands and flags in the shell.\n\n" +
			"Examples:\n" +
			"  source <(vmctl completion bash)                       # this bash session\n" +
			"  vmctl completion bash > /etc/bash_completion.d/vmctl   # every bash session\n" +
			"  echo 'source <(vmctl completion zsh)' >> ~/.zshrc      # zsh, after compinit",
		Action: func(c *cli.Context) error {
			if c.NArg() != 1 {
				return fmt.Errorf("give the shell: vmctl completion bash, or vmctl completion zsh")
			}
			switch sh := c.Args().First(); strings.ToLower(sh) {
			case "bash":
				fmt.Fprint(c.App.Writer, bashCompletion)
			case "zsh":
				fmt.Fprint(c.App.Writer, zshCompletion)
			default:
				return fmt.Errorf("shell %q: vmctl completes bash and zsh", sh)
			}
			return nil
		},
	}
}

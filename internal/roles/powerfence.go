package roles

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// PowerFenceTimeout bounds one run of the power fence agent: a BMC that does not
// answer leaves the node to the lease rule, which needs no agent.
const PowerFenceTimeout = 30 * time.Second

// PowerFenceAgent runs an executable that speaks the fence-agents protocol
// (fence_ipmilan, fence_virsh, fence_redfish, …): options as name=value lines on its
// standard input, action and plug among them; exit status 0 once the action is done.
// For a reboot, done means the node was off, which is all the master needs.
type PowerFenceAgent struct {
	Agent  string
	Action string // reboot or off
	// OptionsDir holds a file per node, named as the node, of more name=value lines
	// (the node's BMC: ip, username, password, …); "" or a missing file: none.
	OptionsDir string
}

// Run powers node off (or reboots it) and returns nil only when the agent says so.
func (p PowerFenceAgent) Run(ctx context.Context, node string) error {
	if fe := api.ValidateName("node", node); fe != nil {
		return errors.New(fe.Msg)
	}
	var in bytes.Buffer
	fmt.Fprintf(&in, "action=%s\nplug=%s\nnodename=%s\n", p.Action, node, node)
	if p.OptionsDir != "" {
		b, err := os.ReadFile(filepath.Join(p.OptionsDir, node))
		switch {
		case err == nil:
			in.Write(b)
			if len(b) > 0 && b[len(b)-1] != '\n' {
				in.WriteByte('\n')
			}
		case !errors.Is(err, os.ErrNotExist):
			return fmt.Errorf("options of node %s: %w", node, err)
		}
	}
	ctx, cancel := context.WithTimeout(ctx, PowerFenceTimeout)
	defer cancel()
	cmd := exec.CommandContext(ctx, p.Agent)
	cmd.Stdin = &in
	out, err := cmd.CombinedOutput()
	if err != nil {
		msg := strings.TrimSpace(string(out))
		if len(msg) > 400 {
			msg = msg[len(msg)-400:]
		}
		if ctx.Err() != nil {
			return fmt.Errorf("%s %s %s: no answer within %v", p.Agent, p.Action, node, PowerFenceTimeout)
		}
		return fmt.Errorf("%s %s %s: %v: %s", p.Agent, p.Action, node, err, msg)
	}
	return nil
}

package main

import (
	"errors"
	"fmt"
	"net/http"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
)

// A script tells apart a refused change (1), a guest left pending (2) and a change
// applied but not acknowledged (3), which it must look at before it retries.
func TestExitCodes(t *testing.T) {
	for _, c := range []struct {
		err  error
		want int
	}{
		{errors.New("bad flag"), 1},
		{&api.StatusError{Code: http.StatusConflict, Msg: "exists"}, 1},
		{&api.StatusError{Code: http.StatusBadRequest, Msg: "bad size", Field: "memory"}, 1},
		{&exitError{2, "pending"}, 2},
		{&api.StatusError{Code: http.StatusGatewayTimeout, Msg: "applied, 2 of 3 copies"}, 3},
		{fmt.Errorf("vm delete g1: %w", &api.StatusError{Code: http.StatusGatewayTimeout}), 3},
		{&api.NoAnswerError{Addrs: []string{"https://127.0.0.1:1"}, Last: errors.New("refused")}, 1},
	} {
		if got := exitCode(c.err); got != c.want {
			t.Errorf("exitCode(%v) = %d, want %d", c.err, got, c.want)
		}
	}
}

// TestUnknownCommandExitsOne: a mistyped command is an error (1), not urfave/cli's own
// exit 3, which a script would read as a change applied but not acknowledged.
func TestUnknownCommandExitsOne(t *testing.T) {
	for _, args := range [][]string{{"bogus"}, {"vm", "bogus"}, {"vm", "lss"}} {
		_, err := vmctl(args...)
		if err == nil || exitCode(err) != 1 {
			t.Errorf("vmctl %v: %v, exit %d; want an error and exit 1", args, err, exitCode(err))
		}
	}
	if _, err := vmctl("vm", "lss"); err == nil || !strings.Contains(err.Error(), `"ls"`) {
		t.Errorf("vmctl vm lss: %v, want it to suggest ls", err)
	}
}

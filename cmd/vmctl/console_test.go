package main

import (
	"bytes"
	"io"
	"net/http"
	"strings"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cmdline"
)

// consoleAPI answers a console attach to guest web on node n1: it writes greeting,
// then sends what it reads to got, until the client closes (or, with hangUp, ends the
// session itself after the greeting).
func consoleAPI(t *testing.T, greeting string, hangUp bool) (g []string, got chan string) {
	got = make(chan string, 1)
	g = tlsAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.URL.Path != api.ConsolePath("web") || !api.WantsConsole(r) {
			w.WriteHeader(http.StatusNotFound)
			io.WriteString(w, `{"error":"guest \"nope\" not found"}`)
			return
		}
		w.Header().Set(api.HeaderNode, "n1")
		conn, err := api.AcceptConsole(w)
		if err != nil {
			t.Error(err)
			return
		}
		defer conn.Close()
		io.WriteString(conn, greeting)
		if hangUp {
			return
		}
		b, _ := io.ReadAll(conn)
		got <- string(b)
	})
	return g, got
}

func runConsole(t *testing.T, in io.Reader, args ...string) (stdout, stderr string, err error) {
	t.Helper()
	var out, errw bytes.Buffer
	app := newApp(&out)
	app.Reader, app.ErrWriter = in, &errw
	err = app.Run(cmdline.Interspersed(app, append([]string{"vmctl"}, args...)))
	return out.String(), errw.String(), err
}

// TestVMConsoleNotATerminal: with standard input not a terminal, vmctl sends it as it
// is, stops at ^] (never sent) or at its end, and says where it attached and that it
// detached on standard error; the guest's output goes to standard output. A session
// the other side ends is an error; so is an unknown guest.
func TestVMConsoleNotATerminal(t *testing.T) {
	g, got := consoleAPI(t, "login: ", false)
	_, stderr, err := runConsole(t, strings.NewReader("root\rls\r\x1dnot sent"), append(g, "vm", "console", "web")...)
	if err != nil {
		t.Fatalf("vm console: %v", err)
	}
	if want := "connected to web on n1; ^] detaches\n"; !strings.HasPrefix(stderr, want) || !strings.Contains(stderr, "detached from web") {
		t.Errorf("stderr %q, want it to start with %q and say it detached", stderr, want)
	}
	select {
	case s := <-got:
		if s != "root\rls\r" {
			t.Errorf("the guest got %q, want what was typed before ^]", s)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("the session was not closed at ^]")
	}

	g, got = consoleAPI(t, "", false)
	if _, _, err := runConsole(t, strings.NewReader("hostname\r"), append(g, "vm", "console", "web")...); err != nil {
		t.Fatalf("vm console, input ending: %v", err)
	}
	if s := <-got; s != "hostname\r" {
		t.Errorf("the guest got %q", s)
	}

	g, _ = consoleAPI(t, "bye\r\n", true)
	pr, pw := io.Pipe()
	defer pw.Close()
	stdout, _, err := runConsole(t, pr, append(g, "vm", "console", "web")...)
	if err == nil || !strings.Contains(err.Error(), "closed by the other side") || exitCode(err) != 1 || stdout != "bye\r\n" {
		t.Errorf("a session the other side ended: %v (exit %d), stdout %q", err, exitCode(err), stdout)
	}

	_, _, err = runConsole(t, strings.NewReader(""), append(g, "vm", "console", "nope")...)
	if err == nil || !strings.Contains(err.Error(), "not found") {
		t.Errorf("unknown guest: %v", err)
	}
}

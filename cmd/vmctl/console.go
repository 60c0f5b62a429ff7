package main

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"os"
	"os/signal"
	"syscall"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/urfave/cli/v2"
)

func vmConsoleCommand() *cli.Command {
	return &cli.Command{Name: "console", Usage: "attach to a running guest's serial console", ArgsUsage: "NAME",
		Description: "Relays the terminal to the guest's serial console through the API (operator scope);\n" +
			"^] (Ctrl-]) detaches and restores the terminal. A new attach takes the console over\n" +
			"from the session attached before, which is told so and detached. Every attach is an\n" +
			"event naming the token (vmctl events).\n\n" +
			"When standard input is not a terminal, it is sent as it is and its end detaches, as\n" +
			"^] does: (echo hostname; sleep 2) | vmctl vm console web\n\n" +
			"Exit codes: 0 detached, 1 the console could not be opened or the other side ended it\n" +
			"(the guest stopped, another session took the console over).\n\n" +
			"Example:\n  vmctl vm console web",
		Action: vmConsole}
}

func vmConsole(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	conn, node, err := cl.Console(c.Context, name)
	if err != nil {
		return err
	}
	defer conn.Close()
	in, out, errw := c.App.Reader, c.App.Writer, c.App.ErrWriter
	if in == nil {
		in = os.Stdin
	}
	if errw == nil {
		errw = os.Stderr
	}
	eol := "\n"
	if f, ok := in.(*os.File); ok {
		restore, raw, err := rawTerminal(int(f.Fd()))
		if err != nil {
			return fmt.Errorf("put the terminal in raw mode: %w", err)
		}
		if raw {
			defer restore()
			eol = "\r\n" // raw mode: the terminal no longer turns \n into \r\n
		}
	}
	ctx, stop := signal.NotifyContext(c.Context, syscall.SIGTERM, syscall.SIGHUP, syscall.SIGINT)
	defer stop()
	fmt.Fprintf(errw, "connected to %s on %s; ^] detaches%s", name, node, eol)

	ended := make(chan error, 1)
	go func() {
		_, err := io.Copy(out, conn)
		ended <- err
	}()
	detached := make(chan error, 1)
	go func() { detached <- typeInto(conn, in) }()
	select {
	case err := <-detached:
		if err != nil {
			return fmt.Errorf("console of guest %s: %w", name, err)
		}
		fmt.Fprintf(errw, "%sdetached from %s%s", eol, name, eol)
		return nil
	case err := <-ended:
		why := "the guest stopped, or another session took the console over: vmctl events says who"
		if err != nil {
			why = err.Error()
		}
		return fmt.Errorf("%sthe console of guest %s was closed by the other side (%s)", eol, name, why)
	case <-ctx.Done():
		return fmt.Errorf("%sconsole of guest %s: interrupted", eol, name)
	}
}

// typeInto sends what in gives to the console until ^] (api.ConsoleDetach), which is
// not sent, or in's end: both detach (nil). A failed write is an error.
func typeInto(conn io.Writer, in io.Reader) error {
	buf := make([]byte, 4096)
	for {
		n, err := in.Read(buf)
		if n > 0 {
			chunk := buf[:n]
			i := bytes.IndexByte(chunk, api.ConsoleDetach)
			if i >= 0 {
				chunk = chunk[:i]
			}
			if len(chunk) > 0 {
				if _, werr := conn.Write(chunk); werr != nil {
					return werr
				}
			}
			if i >= 0 {
				return nil
			}
		}
		if err != nil {
			if errors.Is(err, io.EOF) {
				return nil
			}
			return fmt.Errorf("read standard input: %w", err)
		}
	}
}

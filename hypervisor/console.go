package hypervisor

import (
	"errors"
	"fmt"
	"io"
	"sync"
	"sync/atomic"

	"libvirt.org/go/libvirt"
)

// ErrNotRunning: the guest is defined on the node but does not run, so it has no
// console to open. The error's text names the state.
var ErrNotRunning = errors.New("guest is not running")

// ErrNoConsole: the node's hypervisor cannot open consoles (libvirt's test driver).
var ErrNoConsole = errors.New("this node's hypervisor has no serial consoles")

// Console is a running guest's serial console opened through libvirt (a libvirt
// stream on the domain's first serial port): Read gives what the guest writes to it,
// Write types into it. The domain's serial is a pty with a <log> (BuildDomain), so the
// console log keeps being written while a console is open.
//
// Reads come from one goroutine blocked in virStreamRecv; writes call virStreamSend
// from the writer's goroutine (libvirt's remote client serves both at once).
type Console struct {
	guest string
	st    *libvirt.Stream
	dom   *libvirt.Domain
	pr    *io.PipeReader

	mu      sync.Mutex // held by Write and by the pump while it frees the stream
	freed   bool
	closing atomic.Bool
	closed  chan struct{} // closed by Close, after its Abort
	done    chan struct{} // closed when the pump has freed the stream
	once    sync.Once
}

// OpenConsole opens the serial console of a running dvm guest on this node. It takes
// the console over from whoever holds it (VIR_DOMAIN_CONSOLE_FORCE, as `virsh console
// --force` does): libvirt ends that other session's stream. A guest dvm does not
// manage is ErrNotFound, as for List; a stopped one ErrNotRunning.
func (n *Node) OpenConsole(name string) (*Console, error) {
	d, err := n.lookup(name)
	if err != nil {
		return nil, err
	}
	ok := false
	defer func() {
		if !ok {
			d.Free()
		}
	}()
	meta, err := d.GetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, MetadataNS, 0)
	if err != nil {
		return nil, fmt.Errorf("guest %q: %w", name, ErrNotFound)
	}
	if _, dvm := ParseMetadata(meta); !dvm {
		return nil, fmt.Errorf("guest %q: %w", name, ErrNotFound)
	}
	s, _, err := d.GetState()
	if err != nil {
		if isNoDomain(err) {
			return nil, fmt.Errorf("guest %q: %w", name, ErrNotFound)
		}
		return nil, n.fail("state", fmt.Errorf("state of guest %q: %w", name, err))
	}
	if st := stateOf(s); st != StateRunning && st != StatePaused {
		return nil, fmt.Errorf("guest %q is %s: %w", name, st, ErrNotRunning)
	}
	if n.accel == AccelTest {
		// The test driver has no virDomainOpenConsole; say so plainly instead of
		// libvirt's "not supported by the connection driver".
		return nil, fmt.Errorf("guest %q: %w (libvirt's test driver: dvmd dev)", name, ErrNoConsole)
	}
	st, err := n.conn.NewStream(0)
	if err != nil {
		return nil, n.fail("console", fmt.Errorf("console of guest %q: new stream: %w", name, err))
	}
	if err := d.OpenConsole("", st, libvirt.DOMAIN_CONSOLE_FORCE); err != nil {
		st.Free()
		return nil, n.fail("console", fmt.Errorf("open the console of guest %q: %w", name, err))
	}
	pr, pw := io.Pipe()
	c := &Console{guest: name, st: st, dom: d, pr: pr, closed: make(chan struct{}), done: make(chan struct{})}
	ok = true
	go c.pump(pw)
	return c, nil
}

// pump moves what the guest writes into the pipe Read reads, until the stream ends
// (the guest stopped, another session took the console over, Close aborted it). It
// frees the stream only once Close was called, so that Close's Abort never meets a
// freed stream.
func (c *Console) pump(pw *io.PipeWriter) {
	buf := make([]byte, 32<<10)
	var err error
	for {
		var n int
		n, err = c.st.Recv(buf)
		if n > 0 {
			if _, werr := pw.Write(buf[:n]); werr != nil {
				err = werr
				break
			}
		}
		if err != nil {
			break
		}
	}
	if c.closing.Load() {
		err = io.EOF // the reader ended it: nothing to tell
	} else {
		if !errors.Is(err, io.EOF) {
			err = fmt.Errorf("console of guest %q ended: %w", c.guest, err)
		}
		// The stream failed by itself: abort it, or libvirt keeps it open.
		c.st.Abort()
	}
	pw.CloseWithError(err)
	<-c.closed
	c.mu.Lock()
	c.freed = true
	c.st.Free()
	c.dom.Free()
	c.mu.Unlock()
	close(c.done)
}

// Read reads what the guest wrote to its console; io.EOF once the console ended.
func (c *Console) Read(p []byte) (int, error) { return c.pr.Read(p) }

// Write types p into the guest's console.
func (c *Console) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.freed {
		return 0, fmt.Errorf("console of guest %q: %w", c.guest, io.ErrClosedPipe)
	}
	done := 0
	for done < len(p) {
		n, err := c.st.Send(p[done:])
		if err != nil {
			return done, fmt.Errorf("console of guest %q: %w", c.guest, err)
		}
		done += n
	}
	return done, nil
}

// Close ends the console session: the stream is aborted, which ends the pump's Recv
// (and a Send in progress). Every Console must be closed, before the Node is: Close
// returns once the stream is freed.
func (c *Console) Close() error {
	c.once.Do(func() {
		c.closing.Store(true)
		c.st.Abort()
		c.pr.Close()
		close(c.closed)
	})
	<-c.done
	return nil
}

//go:build linux || darwin || freebsd || netbsd || openbsd || dragonfly

package main

import "golang.org/x/sys/unix"

// rawTerminal puts the terminal on fd in raw mode, as cfmakeraw(3) does: keys reach
// the guest as typed (^C, ^Z, ^] are bytes, not signals) and nothing is echoed
// locally. It returns what restores the terminal, or ok false when fd is not a
// terminal.
func rawTerminal(fd int) (restore func(), ok bool, err error) {
	old, err := unix.IoctlGetTermios(fd, ioctlGetTermios)
	if err != nil {
		return nil, false, nil // not a terminal
	}
	raw := *old
	raw.Iflag &^= unix.IGNBRK | unix.BRKINT | unix.PARMRK | unix.ISTRIP | unix.INLCR | unix.IGNCR | unix.ICRNL | unix.IXON
	raw.Oflag &^= unix.OPOST
	raw.Lflag &^= unix.ECHO | unix.ECHONL | unix.ICANON | unix.ISIG | unix.IEXTEN
	raw.Cflag &^= unix.CSIZE | unix.PARENB
	raw.Cflag |= unix.CS8
	raw.Cc[unix.VMIN] = 1
	raw.Cc[unix.VTIME] = 0
	if err := unix.IoctlSetTermios(fd, ioctlSetTermios, &raw); err != nil {
		return nil, false, err
	}
	return func() { unix.IoctlSetTermios(fd, ioctlSetTermios, old) }, true, nil
}

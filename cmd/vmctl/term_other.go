//go:build !(linux || darwin || freebsd || netbsd || openbsd || dragonfly)

package main

// rawTerminal: where vmctl knows no terminal ioctls, the console works as it does on
// a pipe (the terminal's own line editing and echo stay on).
func rawTerminal(fd int) (restore func(), ok bool, err error) { return nil, false, nil }

package hypervisor

import (
	"encoding/xml"
	"fmt"
	"os"
	"path/filepath"
)

// TestDriverURI writes a node file for libvirt's in-process test driver with the given
// capacity under dir and returns the URI that opens a fresh, empty hypervisor of that
// size. Every connection to the URI sees its own hypervisor, so `dvmd dev` gives each of
// its nodes one.
func TestDriverURI(dir, name string, c Capacity) (string, error) {
	type cpu struct {
		MHz     int    `xml:"mhz"`
		Model   string `xml:"model"`
		Active  int    `xml:"active"`
		Max     int    `xml:"max"`
		Nodes   int    `xml:"nodes"`
		Sockets int    `xml:"sockets"`
		Cores   int    `xml:"cores"`
		Threads int    `xml:"threads"`
	}
	type node struct {
		XMLName xml.Name `xml:"node"`
		CPU     cpu      `xml:"cpu"`
		Memory  int64    `xml:"memory"` // KiB
	}
	if c.CPUs <= 0 || c.MemoryBytes < 1<<20 {
		return "", fmt.Errorf("test node %s: capacity %d cpus, %d bytes is too small", name, c.CPUs, c.MemoryBytes)
	}
	b, err := xml.MarshalIndent(node{
		CPU:    cpu{MHz: 3000, Model: "x86_64", Active: c.CPUs, Max: c.CPUs, Nodes: 1, Sockets: 1, Cores: c.CPUs, Threads: 1},
		Memory: c.MemoryBytes >> 10,
	}, "", "  ")
	if err != nil {
		return "", err
	}
	abs, err := filepath.Abs(filepath.Join(dir, name+".xml"))
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(abs, b, 0o644); err != nil {
		return "", fmt.Errorf("write test node file: %w", err)
	}
	return "test://" + abs, nil
}

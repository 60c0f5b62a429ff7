// Package cloudinit makes cloud-init's NoCloud seed for a guest: an ISO 9660 image
// labelled cidata holding meta-data (its instance id and hostname, and SSH keys),
// user-data and network-config (its addresses), which cloud-init in the guest reads
// at its first boot, as Proxmox and OpenNebula give their guests. It does no I/O but
// writing the image it is given a writer for.
package cloudinit

import (
	"bytes"
	"encoding/json"
	"fmt"
	"io"
	"strings"
)

// Label is the volume label cloud-init looks for a NoCloud seed by.
const Label = "cidata"

// Seed is what a guest's seed says.
type Seed struct {
	// InstanceID is the guest's UUID: the same on every node it runs on, so that
	// cloud-init, which acts once per instance, does not act again after a move.
	InstanceID string
	Hostname   string
	SSHKeys    []string // authorized_keys lines, for the image's default user
	UserData   string   // "" for an empty #cloud-config
	NICs       []NIC
}

// NIC is one guest network interface, by its MAC, with its address (ADDR/PREFIX),
// or "" to ask DHCP.
type NIC struct {
	MAC, Address string
}

// Files are the seed's files: meta-data, user-data, and network-config when the
// guest has NICs (without one, cloud-init asks DHCP on the first NIC).
func (s Seed) Files() []File {
	var meta bytes.Buffer
	fmt.Fprintf(&meta, "instance-id: %s\nlocal-hostname: %s\n", quote(s.InstanceID), quote(s.Hostname))
	if len(s.SSHKeys) > 0 {
		meta.WriteString("public-keys:\n")
		for _, k := range s.SSHKeys {
			fmt.Fprintf(&meta, "  - %s\n", quote(k))
		}
	}
	user := s.UserData
	if user == "" {
		user = "#cloud-config\n{}\n"
	}
	files := []File{{Name: "meta-data", Data: meta.Bytes()}, {Name: "user-data", Data: []byte(user)}}
	if len(s.NICs) > 0 {
		var net bytes.Buffer
		net.WriteString("version: 2\nethernets:\n")
		for i, n := range s.NICs {
			fmt.Fprintf(&net, "  nic%d:\n    match:\n      macaddress: %s\n", i, quote(strings.ToLower(n.MAC)))
			if n.Address == "" {
				net.WriteString("    dhcp4: true\n")
			} else {
				fmt.Fprintf(&net, "    addresses:\n      - %s\n", quote(n.Address))
			}
		}
		files = append(files, File{Name: "network-config", Data: net.Bytes()})
	}
	return files
}

// WriteISO writes the seed as its ISO image.
func (s Seed) WriteISO(w io.Writer) error { return WriteISO(w, Label, s.Files()) }

// quote is s as a YAML double-quoted scalar (a JSON string is one).
func quote(s string) string {
	var b bytes.Buffer
	enc := json.NewEncoder(&b)
	enc.SetEscapeHTML(false)
	enc.Encode(s)
	return strings.TrimSuffix(b.String(), "\n")
}

package hypervisor

import (
	"encoding/xml"
	"fmt"
	"io"
	"os"
	"slices"
	"strconv"
	"strings"
	"testing"

	"libvirt.org/go/libvirt"
)

// TestRealQEMUVNCMoved: on this host's libvirtd, the definition a migration of a
// guest with a VNC display sends its destination (vncMoved, through libvirtxml) is the
// source's migratable definition with the display's listen address alone changed:
// libvirt refuses a destination definition whose guest ABI differs.
func TestRealQEMUVNCMoved(t *testing.T) {
	n, err := Open(Options{URI: "qemu:///system", Accelerator: "tcg"})
	if err != nil {
		if os.Getenv("CI") == "true" {
			t.Fatalf("libvirtd at qemu:///system: %v (scripts/test starts it)", err)
		}
		t.Skipf("no libvirtd at qemu:///system: %v", err)
	}
	// Closed after the guest is undefined (cleanups run last first): a deferred Close
	// ran before the cleanup, whose Undefine then failed on the closed connection and
	// left the domain defined on the host after every run.
	t.Cleanup(func() { n.Close() })
	name := fmt.Sprintf("dvmtest-vncmove-%d", os.Getpid())
	spec := GuestSpec{Name: name, OS: "linux", CPUs: 1, MemoryBytes: 128 << 20, Disk: &Disk{Path: "/nonexistent/" + name + ".qcow2"},
		ISO: "/nonexistent/install.iso", Seed: "/nonexistent/" + name + ".cidata.iso", VNC: &VNC{Listen: "127.0.0.1", Password: "abcd2345"}}
	if err := n.Define(spec); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() {
		if err := n.Undefine(name); err != nil {
			t.Errorf("undefine %s: %v", name, err)
		}
	})
	d, err := n.lookup(name)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Free()
	x, err := d.GetXMLDesc(libvirt.DOMAIN_XML_MIGRATABLE | libvirt.DOMAIN_XML_SECURE)
	if err != nil {
		t.Fatal(err)
	}
	moved, ok, err := vncMoved(x, "10.0.0.6")
	if err != nil || !ok {
		t.Fatalf("vncMoved: %v, %v", ok, err)
	}
	before, after := canonical(t, x), canonical(t, moved)
	if !slices.Equal(before, after) {
		for i := range min(len(before), len(after)) {
			if before[i] != after[i] {
				t.Fatalf("the definition sent differs past its display, at %d: %q, not %q", i, after[i], before[i])
			}
		}
		t.Fatalf("the definition sent has %d items, the source's %d", len(after), len(before))
	}
	if !strings.Contains(moved, `listen="10.0.0.6"`) || !strings.Contains(moved, `passwd="abcd2345"`) {
		t.Fatalf("the display sent:\n%s", moved)
	}
}

// canonical is a domain definition as a list of its elements (with their attributes
// sorted, numbers in decimal) and text, leaving out whitespace and the <graphics>
// elements.
func canonical(t *testing.T, x string) []string {
	t.Helper()
	dec := xml.NewDecoder(strings.NewReader(x))
	var out []string
	skip := 0
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return out
		}
		if err != nil {
			t.Fatal(err)
		}
		switch tok := tok.(type) {
		case xml.StartElement:
			if tok.Name.Local == "graphics" || skip > 0 {
				skip++
				continue
			}
			var attrs []string
			for _, a := range tok.Attr {
				v := a.Value
				if n, err := strconv.ParseUint(v, 0, 64); err == nil {
					v = strconv.FormatUint(n, 10) // libvirt writes some numbers in hex, libvirtxml in decimal
				}
				attrs = append(attrs, a.Name.Local+"="+v)
			}
			slices.Sort(attrs)
			out = append(out, "<"+tok.Name.Local+" "+strings.Join(attrs, " "))
		case xml.EndElement:
			if skip > 0 {
				skip--
				continue
			}
			out = append(out, "</"+tok.Name.Local)
		case xml.CharData:
			if s := strings.TrimSpace(string(tok)); s != "" && skip == 0 {
				out = append(out, s)
			}
		}
	}
}

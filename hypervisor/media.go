package hypervisor

import (
	"encoding/xml"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"

	"libvirt.org/go/libvirt"
	"libvirt.org/go/libvirtxml"
)

// EjectISO takes a guest's install media out of its cdrom: from its definition, so
// that its next boot is from its disk (the drive stays, empty, first in the boot
// order, which firmware skips), and, when it runs, from the running drive too, as
// libvirt's UpdateDeviceFlags does it (the guest sees the tray empty). A guest
// without install media is left as it is.
func (n *Node) EjectISO(name string) error {
	d, err := n.lookup(name)
	if err != nil {
		return err
	}
	defer d.Free()
	// SECURE: the definition written back must keep what libvirt shows only on
	// request, such as a graphics password.
	x, err := d.GetXMLDesc(libvirt.DOMAIN_XML_INACTIVE | libvirt.DOMAIN_XML_SECURE)
	if err != nil {
		return n.fail("xml", fmt.Errorf("definition of guest %q: %w", name, err))
	}
	var def libvirtxml.Domain
	if err := def.Unmarshal(x); err != nil {
		return fmt.Errorf("guest %q: parse its definition: %w", name, err)
	}
	meta, ok := GuestMetadata{}, false
	if def.Metadata != nil {
		meta, ok = ParseMetadata(dvmElement(def.Metadata.XML))
	}
	if !ok {
		return fmt.Errorf("guest %q: %w", name, ErrNotFound)
	}
	if meta.ISO == "" {
		return nil
	}
	var drive *libvirtxml.DomainDisk
	for i := range def.Devices.Disks {
		dd := &def.Devices.Disks[i]
		if dd.Device == "cdrom" && dd.Source != nil && dd.Source.File != nil && dd.Source.File.File == meta.ISO {
			drive = dd
		}
	}
	if active, _ := d.IsActive(); active && drive != nil {
		empty := *drive
		empty.Source = nil
		dx, err := empty.Marshal()
		if err != nil {
			return err
		}
		if err := d.UpdateDeviceFlags(dx, libvirt.DOMAIN_DEVICE_MODIFY_LIVE); err != nil {
			var lv libvirt.Error
			// libvirt's test driver changes no running domain's devices: on it, only
			// the definition changes, as for a guest that does not run.
			if !errors.As(err, &lv) || lv.Code != libvirt.ERR_NO_SUPPORT || n.accel != AccelTest {
				return n.fail("eject", fmt.Errorf("eject the install media of guest %q: %w", name, err))
			}
		}
	}
	if drive != nil {
		drive.Source = nil
	}
	meta.ISO = ""
	mx, err := metadataXML(meta)
	if err != nil {
		return err
	}
	def.Metadata.XML = mx
	nx, err := def.Marshal()
	if err != nil {
		return fmt.Errorf("guest %q: marshal domain: %w", name, err)
	}
	if _, err := n.conn.DomainDefineXML(nx); err != nil {
		return n.fail("define", fmt.Errorf("eject the install media of guest %q from its definition: %w", name, err))
	}
	// A running domain keeps its live metadata until it stops: the node lists guests
	// by it, and would eject again on every pass.
	if active, _ := d.IsActive(); active {
		px, err := xml.Marshal(plainMetadata{Name: meta.Name, OS: meta.OS, ConsoleSpeed: meta.ConsoleSpeed, Failover: meta.Failover, ISO: meta.ISO, VNC: meta.VNC})
		if err != nil {
			return err
		}
		if err := d.SetMetadata(libvirt.DOMAIN_METADATA_ELEMENT, string(px), "dvm", MetadataNS, libvirt.DOMAIN_AFFECT_LIVE); err != nil {
			return n.fail("eject", fmt.Errorf("guest %q: record the ejected media in its running domain: %w", name, err))
		}
	}
	return nil
}

// VNCDisplay is where a running guest's VNC display listens, "ADDRESS:PORT"; "" when
// it has none, does not run, or its port is not known (libvirt's test driver gives
// none).
func (n *Node) VNCDisplay(name string) (string, error) {
	x, err := n.DomainXML(name)
	if err != nil {
		return "", err
	}
	var d libvirtxml.Domain
	if err := d.Unmarshal(x); err != nil {
		return "", fmt.Errorf("guest %q: parse its domain: %w", name, err)
	}
	if d.ID == nil || d.Devices == nil {
		return "", nil
	}
	for _, g := range d.Devices.Graphics {
		if v := g.VNC; v != nil && v.Port > 0 {
			return net.JoinHostPort(v.Listen, strconv.Itoa(v.Port)), nil
		}
	}
	return "", nil
}

// metadataXML is dvm's element of a domain's metadata.
func metadataXML(m GuestMetadata) (string, error) {
	m.NS = MetadataNS
	b, err := xml.Marshal(m)
	return string(b), err
}

// plainMetadata is GuestMetadata without its namespace, as virDomainSetMetadata
// takes it (libvirt puts the element in the namespace it is given).
type plainMetadata struct {
	XMLName      xml.Name `xml:"guest"`
	Name         string   `xml:"name"`
	OS           string   `xml:"os"`
	ConsoleSpeed int      `xml:"console-speed"`
	Failover     string   `xml:"failover,omitempty"`
	ISO          string   `xml:"iso,omitempty"`
	VNC          bool     `xml:"vnc,omitempty"`
}

// dvmElement is the metadata element of dvm's namespace in a domain's <metadata>
// (which may hold other programs' elements too); "" when there is none.
func dvmElement(metadata string) string {
	dec := xml.NewDecoder(strings.NewReader(metadata))
	for {
		tok, err := dec.Token()
		if err != nil {
			return ""
		}
		if se, ok := tok.(xml.StartElement); ok && se.Name.Space == MetadataNS {
			var raw struct {
				Inner string `xml:",innerxml"`
			}
			if dec.DecodeElement(&raw, &se) != nil {
				return ""
			}
			return "<guest>" + raw.Inner + "</guest>"
		}
	}
}

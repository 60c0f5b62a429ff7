package cloudinit

import (
	"encoding/binary"
	"fmt"
	"io"
	"slices"
	"strings"
	"unicode/utf16"
)

// An ISO 9660 image of a few small files in its root directory, with Joliet names: the
// least that a NoCloud seed needs, written here rather than by genisoimage or xorriso
// (which the nodes would then need). Guests read the Joliet names (meta-data,
// user-data: lowercase, with dashes), which Linux, FreeBSD and blkid prefer; the
// primary names are ISO 9660 level 1 (8.3 in capitals) for readers without Joliet.
// The same files make the same bytes: no time is recorded.

const sector = 2048

// File is one file of an ISO image.
type File struct {
	Name string // its Joliet name: printable ASCII, no '/', at most 64 characters
	Data []byte
}

// The image's sectors, in order: the system area, the volume descriptors (primary,
// Joliet's supplementary, terminator), each hierarchy's two path tables and root
// directory, then the files' data.
const (
	sectorPVD      = 16
	sectorSVD      = 17
	sectorTerm     = 18
	sectorPathL    = 19 // primary little-endian path table, then big-endian, then Joliet's two
	sectorRoot     = 23 // primary root directory
	sectorJolRoot  = 24 // Joliet root directory
	sectorFirstDat = 25
)

// WriteISO writes an ISO 9660 image with Joliet names holding files in its root
// directory, with volume label label (at most 16 ASCII characters, as Joliet takes).
func WriteISO(w io.Writer, label string, files []File) error {
	if len(label) == 0 || len(label) > 16 || !printable(label) {
		return fmt.Errorf("iso label %q: give 1 to 16 printable ASCII characters", label)
	}
	files = slices.Clone(files)
	// Directory records are sorted by identifier; the two hierarchies sort alike for
	// the names a seed has, and each is sorted by its own names below.
	slices.SortFunc(files, func(a, b File) int { return strings.Compare(a.Name, b.Name) })
	type placed struct {
		File
		primary string
		at      uint32
	}
	var ps []placed
	next := uint32(sectorFirstDat)
	seen := map[string]bool{}
	for _, f := range files {
		if f.Name == "" || len(f.Name) > 64 || !printable(f.Name) || strings.ContainsAny(f.Name, "/;") {
			return fmt.Errorf("iso file %q: give a name of 1 to 64 printable ASCII characters without '/' or ';'", f.Name)
		}
		p := placed{File: f, primary: primaryName(f.Name)}
		if seen[p.primary] {
			return fmt.Errorf("iso files: two names make the same ISO 9660 name %s", p.primary)
		}
		seen[p.primary] = true
		if len(f.Data) > 0 {
			p.at = next
			next += uint32((len(f.Data) + sector - 1) / sector)
		}
		ps = append(ps, p)
	}
	total := next

	dir := func(self uint32, joliet bool) []byte {
		b := make([]byte, 0, sector)
		b = append(b, dirRecord(self, sector, true, []byte{0})...)
		b = append(b, dirRecord(self, sector, true, []byte{1})...)
		order := slices.Clone(ps)
		if !joliet {
			slices.SortFunc(order, func(a, b placed) int { return strings.Compare(a.primary, b.primary) })
		}
		for _, p := range order {
			id := []byte(p.primary)
			if joliet {
				id = ucs2(p.Name)
			}
			b = append(b, dirRecord(p.at, uint32(len(p.Data)), false, id)...)
		}
		return b
	}
	root, jroot := dir(sectorRoot, false), dir(sectorJolRoot, true)
	if len(root) > sector || len(jroot) > sector {
		return fmt.Errorf("iso: %d files do not fit one directory sector", len(files))
	}

	img := make([]byte, sectorFirstDat*sector)
	copy(img[sectorPVD*sector:], volumeDescriptor(1, label, total, sectorRoot, sectorPathL))
	copy(img[sectorSVD*sector:], volumeDescriptor(2, label, total, sectorJolRoot, sectorPathL+2))
	term := img[sectorTerm*sector:]
	term[0] = 255
	copy(term[1:], "CD001")
	term[6] = 1
	for i, root := range []uint32{sectorRoot, sectorJolRoot} {
		l, m := img[(sectorPathL+2*i)*sector:], img[(sectorPathL+2*i+1)*sector:]
		// The root's entry: identifier length 1, its extent, parent 1, identifier 0.
		l[0], m[0] = 1, 1
		binary.LittleEndian.PutUint32(l[2:], root)
		binary.BigEndian.PutUint32(m[2:], root)
		binary.LittleEndian.PutUint16(l[6:], 1)
		binary.BigEndian.PutUint16(m[6:], 1)
	}
	copy(img[sectorRoot*sector:], root)
	copy(img[sectorJolRoot*sector:], jroot)
	if _, err := w.Write(img); err != nil {
		return err
	}
	for _, p := range ps {
		if len(p.Data) == 0 {
			continue
		}
		pad := (sector - len(p.Data)%sector) % sector
		if _, err := w.Write(append(slices.Clone(p.Data), make([]byte, pad)...)); err != nil {
			return err
		}
	}
	return nil
}

// volumeDescriptor is the primary (kind 1) or Joliet supplementary (kind 2) volume
// descriptor of a volume of total sectors whose root directory is at root and whose
// path tables are at pathL (little-endian) and pathL+1 (big-endian).
func volumeDescriptor(kind byte, label string, total, root, pathL uint32) []byte {
	d := make([]byte, sector)
	d[0] = kind
	copy(d[1:], "CD001")
	d[6] = 1
	text := func(off, n int, s string) {
		if kind == 2 {
			copy(d[off:off+n], padUCS2(s, n))
			return
		}
		copy(d[off:off+n], s+strings.Repeat(" ", n-len(s)))
	}
	text(8, 32, "")
	text(40, 32, label)
	both32(d[80:], total)
	if kind == 2 {
		copy(d[88:], "%/E") // UCS-2 level 3: Joliet
	}
	both16(d[120:], 1) // volume set size
	both16(d[124:], 1) // volume sequence number
	both16(d[128:], sector)
	both32(d[132:], 10) // path table size: the root's entry
	binary.LittleEndian.PutUint32(d[140:], pathL)
	binary.BigEndian.PutUint32(d[148:], pathL+1)
	copy(d[156:], dirRecord(root, sector, true, []byte{0}))
	for _, f := range [][2]int{{190, 128}, {318, 128}, {446, 128}, {574, 128}, {702, 37}, {739, 37}, {776, 37}} {
		text(f[0], f[1], "")
	}
	// Creation, modification, expiration and effective dates: not specified (digits
	// zero, offset zero), so that the same files make the same image.
	for _, off := range []int{813, 830, 847, 864} {
		copy(d[off:], "0000000000000000")
	}
	d[881] = 1 // file structure version
	return d
}

// dirRecord is a directory record of an extent at, of size bytes, named id.
func dirRecord(at, size uint32, isDir bool, id []byte) []byte {
	n := 33 + len(id)
	if len(id)%2 == 0 {
		n++ // records have an even length
	}
	r := make([]byte, n)
	r[0] = byte(n)
	both32(r[2:], at)
	both32(r[10:], size)
	copy(r[18:], []byte{70, 1, 1, 0, 0, 0, 0}) // 1970-01-01 00:00 UTC: no time recorded
	if isDir {
		r[25] = 2
	}
	both16(r[28:], 1)
	r[32] = byte(len(id))
	copy(r[33:], id)
	return r
}

// primaryName is a Joliet name as ISO 9660 level 1 spells it: capitals, digits and
// '_', a name of at most 8 and an extension of at most 3, version 1.
func primaryName(name string) string {
	base, ext, _ := strings.Cut(name, ".")
	clean := func(s string, n int) string {
		var b strings.Builder
		for _, r := range strings.ToUpper(s) {
			if b.Len() == n {
				break
			}
			if (r >= 'A' && r <= 'Z') || (r >= '0' && r <= '9') {
				b.WriteRune(r)
			} else {
				b.WriteByte('_')
			}
		}
		return b.String()
	}
	return clean(base, 8) + "." + clean(strings.ReplaceAll(ext, ".", "_"), 3) + ";1"
}

func ucs2(s string) []byte {
	var b []byte
	for _, u := range utf16.Encode([]rune(s)) {
		b = binary.BigEndian.AppendUint16(b, u)
	}
	return b
}

// padUCS2 is s in UCS-2, padded with spaces to n bytes.
func padUCS2(s string, n int) []byte {
	b := ucs2(s)
	for len(b) < n {
		b = append(b, 0, ' ')
	}
	return b[:n]
}

func both16(b []byte, v uint16) {
	binary.LittleEndian.PutUint16(b, v)
	binary.BigEndian.PutUint16(b[2:], v)
}

func both32(b []byte, v uint32) {
	binary.LittleEndian.PutUint32(b, v)
	binary.BigEndian.PutUint32(b[4:], v)
}

func printable(s string) bool {
	for _, r := range s {
		if r < ' ' || r > '~' {
			return false
		}
	}
	return true
}

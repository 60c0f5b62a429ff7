package api

import (
	"fmt"
	"regexp"
	"slices"
	"strings"

	"github.com/dvmproject/dvm/hypervisor/profile"
	"github.com/dvmproject/dvm/internal/units"
)

// FieldError is a request field that is wrong, and why.
type FieldError struct {
	Field string
	Msg   string
}

func (e *FieldError) Error() string { return e.Field + ": " + e.Msg }

func fieldErr(field, format string, args ...any) *FieldError {
	return &FieldError{Field: field, Msg: fmt.Sprintf(format, args...)}
}

// Limits of a guest. A guest outside them is refused at the API so that no node ever
// sees a definition libvirt would reject.
const (
	MaxGuestCPUs   = 255 // QEMU's limit for the pc and q35 machines without x2apic tuning
	MinGuestMemory = 64 << 20
	MaxGuestMemory = 16 << 40
	MinDisk        = 1 << 20
	MaxDisk        = 64 << 40
	DefaultDisk    = 20 << 30
	// MaxExtraDisks is how many disks a guest may have past its first (they are
	// named b to z on its bus).
	MaxExtraDisks = 25
)

var (
	nameRE  = regexp.MustCompile(`^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$`)
	imageRE = regexp.MustCompile(`^[a-z0-9][a-z0-9._-]{0,63}$`)
	labelRE = regexp.MustCompile(`^[a-zA-Z0-9]([a-zA-Z0-9._/-]{0,62})$`)
)

// ValidateName checks a guest or node name: a DNS label (lowercase letters, digits and
// dashes, at most 63), since it names the libvirt domain, the disk file and metrics.
func ValidateName(field, name string) *FieldError {
	if name == "" {
		return fieldErr(field, "is empty: give a name such as web1")
	}
	if !nameRE.MatchString(name) {
		return fieldErr(field, "%q is not a valid name: use 1 to 63 lowercase letters, digits and dashes, starting and ending with a letter or digit", name)
	}
	return nil
}

// Normalize fills defaults and validates a create request. It returns the first wrong
// field; nothing is changed in the cluster for a request that fails here.
func (c *CreateGuest) Normalize() *FieldError {
	if e := ValidateName("name", c.Name); e != nil {
		return e
	}
	if c.OS == "" {
		c.OS = profile.Default
	}
	if _, err := profile.Lookup(c.OS); err != nil {
		return fieldErr("os", "%v", err)
	}
	if c.CPUs < 1 || c.CPUs > MaxGuestCPUs {
		return fieldErr("cpus", "%d is out of range: give 1 to %d", c.CPUs, MaxGuestCPUs)
	}
	if c.MemoryBytes < MinGuestMemory || c.MemoryBytes > MaxGuestMemory {
		return fieldErr("memory_bytes", "%s is out of range: give %s to %s", units.FormatBytes(c.MemoryBytes), units.FormatBytes(MinGuestMemory), units.FormatBytes(MaxGuestMemory))
	}
	if c.MemoryBytes%(1<<20) != 0 {
		return fieldErr("memory_bytes", "%d bytes is not a whole number of MiB: give whole MiB, such as %dMiB", c.MemoryBytes, c.MemoryBytes>>20)
	}
	if c.Image != "" {
		if e := ValidateImageName("image", c.Image); e != nil {
			return e
		}
	}
	if c.ISO != "" {
		if e := ValidateImageName("iso", c.ISO); e != nil {
			return e
		}
		if c.Image != "" {
			return fieldErr("iso", "an ISO install boots image %q onto an empty disk, and image %q would make the disk: give --iso or --image, not both", c.ISO, c.Image)
		}
	}
	if c.DiskBytes == 0 && c.Image == "" {
		c.DiskBytes = DefaultDisk
	}
	if c.DiskBytes != 0 && (c.DiskBytes < MinDisk || c.DiskBytes > MaxDisk) {
		return fieldErr("disk_bytes", "%s is out of range: give %s to %s", units.FormatBytes(c.DiskBytes), units.FormatBytes(MinDisk), units.FormatBytes(MaxDisk))
	}
	if c.DiskBytes < 0 {
		return fieldErr("disk_bytes", "must not be negative")
	}
	if len(c.ExtraDiskBytes) > MaxExtraDisks {
		return fieldErr("extra_disk_bytes", "%d extra disks: a guest has at most %d", len(c.ExtraDiskBytes), MaxExtraDisks)
	}
	for _, b := range c.ExtraDiskBytes {
		if b < MinDisk || b > MaxDisk {
			return fieldErr("extra_disk_bytes", "%s is out of range: give %s to %s", units.FormatBytes(b), units.FormatBytes(MinDisk), units.FormatBytes(MaxDisk))
		}
	}
	switch c.Failover {
	case "":
		c.Failover = FailoverRestart
	case FailoverNone, FailoverRestart, FailoverTwin:
	default:
		return fieldErr("failover", "%q is not a failover policy: use none, restart or twin", c.Failover)
	}
	if c.Failover == FailoverTwin && c.ISO != "" {
		return fieldErr("iso", "a twin guest has no install media (its standby holds one disk of a running guest): install with --failover restart or none")
	}
	if c.Failover == FailoverTwin && len(c.ExtraDiskBytes) > 0 {
		return fieldErr("extra_disk_bytes", "a twin guest has one disk, the one its standby holds: give one disk size, or failover restart")
	}
	if c.Pool != "" {
		if e := ValidateName("pool", c.Pool); e != nil {
			return e
		}
	}
	if ci := c.CloudInit; ci != nil {
		prof, _ := profile.Lookup(c.OS)
		if !prof.CloudInit {
			return fieldErr("cloud_init", "os %s: %s", c.OS, prof.NoCloudInit)
		}
		if e := ci.Validate(); e != nil {
			return e
		}
	}
	for k, v := range c.Constraints {
		if !labelRE.MatchString(k) || (v != "" && !labelRE.MatchString(v)) {
			return fieldErr("constraints", "%q=%q is not a valid label: use letters, digits, dots, dashes, underscores and slashes", k, v)
		}
	}
	return nil
}

// ParseLabels reads "k=v,k=v" as written on the command line and in config files.
func ParseLabels(s string) (map[string]string, error) {
	out := map[string]string{}
	if strings.TrimSpace(s) == "" {
		return out, nil
	}
	for _, kv := range strings.Split(s, ",") {
		k, v, ok := strings.Cut(strings.TrimSpace(kv), "=")
		if !ok || !labelRE.MatchString(k) || !labelRE.MatchString(v) {
			return nil, fmt.Errorf("%q is not a label: write key=value (letters, digits, dots, dashes, underscores, slashes), separated by commas", kv)
		}
		if _, dup := out[k]; dup {
			return nil, fmt.Errorf("label %q given twice", k)
		}
		out[k] = v
	}
	return out, nil
}

// FormatLabels writes labels as ParseLabels reads them, sorted by key.
func FormatLabels(m map[string]string) string {
	parts := make([]string, 0, len(m))
	for k, v := range m {
		parts = append(parts, k+"="+v)
	}
	slices.Sort(parts)
	return strings.Join(parts, ",")
}

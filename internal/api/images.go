package api

import (
	"context"
	"encoding/hex"
	"io"
	"strings"
	"time"
)

// Image formats. A disk image (qcow2, raw) is the base guests' disks are made from;
// an iso is install media; a kernel image is a Linux kernel with an optional initrd
// and command line, booted directly (the lab guest), imported as a tar archive of
// its files kernel, initrd and cmdline.
const (
	ImageQCOW2  = "qcow2"
	ImageRaw    = "raw"
	ImageISO    = "iso"
	ImageKernel = "kernel"
)

// Image states: an image is importing until its bytes are all written and verified,
// then ready; only a ready image makes guests.
const (
	ImageImporting = "importing"
	ImageReady     = "ready"
)

// Image is an image as the API shows it: GET /v1/images, GET /v1/images/{name}, and
// the answer of PUT /v1/images/{name} (an import).
type Image struct {
	Name   string `json:"name"`
	Format string `json:"format"`
	// SizeBytes is the file's size; VirtualBytes the disk it holds (a qcow2's virtual
	// size; the file's size for raw and iso), the least a disk made from it can be.
	SizeBytes    int64     `json:"size_bytes"`
	VirtualBytes int64     `json:"virtual_bytes"`
	SHA256       string    `json:"sha256,omitempty"`
	State        string    `json:"state"`
	CreatedAt    time.Time `json:"created_at"`
	CreatedBy    string    `json:"created_by,omitempty"` // the token that imported it
	// UsedBy names the guests made from it, which keep it from being deleted.
	UsedBy []string `json:"used_by,omitempty"`
}

// Query parameters of an import, PUT /v1/images/{name}?format=F&sha256=S, whose body
// is the image's bytes (not JSON).
const (
	ImportFormat = "format"
	ImportSHA256 = "sha256"
)

// MaxImageBytes bounds an image's size: the largest disk a guest can have.
const MaxImageBytes = MaxDisk

// ValidateImageName checks an image name: it names a directory in the images
// directory, so lowercase letters, digits, dots, dashes and underscores, starting
// with a letter or digit.
func ValidateImageName(field, name string) *FieldError {
	if name == "" {
		return fieldErr(field, "is empty: give an image name such as debian-12")
	}
	if !imageRE.MatchString(name) {
		return fieldErr(field, "%q is not a valid image name: use 1 to 64 lowercase letters, digits, dots, dashes and underscores, starting with a letter or digit", name)
	}
	return nil
}

// ValidateImageFormat checks an import's format.
func ValidateImageFormat(format string) *FieldError {
	switch format {
	case ImageQCOW2, ImageRaw, ImageISO, ImageKernel:
		return nil
	case "":
		return fieldErr(ImportFormat, "is empty: give qcow2, raw, iso or kernel")
	}
	return fieldErr(ImportFormat, "%q is not an image format: use qcow2, raw, iso or kernel", format)
}

// NormalizeSHA256 checks a SHA-256 given as hex and returns it in lowercase.
func NormalizeSHA256(sum string) (string, *FieldError) {
	s := strings.ToLower(strings.TrimSpace(sum))
	if b, err := hex.DecodeString(s); err != nil || len(b) != 32 {
		return "", fieldErr(ImportSHA256, "%q is not a SHA-256: give its 64 hex digits, as sha256sum prints them", sum)
	}
	return s, nil
}

// upload is a request body streamed from a file: see Client.Upload.
type upload struct {
	r    io.ReadSeeker
	size int64
}

// Upload sends size bytes of r (read from its start) as the body of a request, and
// decodes the JSON answer into out. The body is streamed, never held in memory, with
// no bound on the time it takes; the server may refuse the request before the body is
// sent (Expect: 100-continue). Like Do, it moves on to the next address when a node
// does not answer, starting the body again from the start.
func (c *Client) Upload(ctx context.Context, method, path string, r io.ReadSeeker, size int64, out any) error {
	return c.Do(ctx, method, path, &upload{r: r, size: size}, out)
}

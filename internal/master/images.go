package master

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"net/http"
	"os"
	"path/filepath"
	"slices"
	"sync"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
	"github.com/dvmproject/dvm/internal/units"
	"github.com/dvmproject/dvm/internal/version"
)

// Images are cluster objects (store.ImageRecord) whose bytes live in the images
// directory, images_dir: shared storage mounted at the same path on every node (NFS,
// CephFS; in the lab a directory all nodes see). The master writes an imported
// image there once, as IMAGES_DIR/NAME/disk.FORMAT, and every node reads it there:
// no copy per node, and a guest restarted on another node finds its base where its
// first node did. An import is recorded as importing before its first byte is
// written and as ready only once the file is whole, synced, renamed into place and
// verified: a guest is never made from part of an image.

// imports are the imports in progress on this master, by image name.
type imports struct {
	mu      sync.Mutex
	running map[string]bool
}

func (im *imports) start(name string) {
	im.mu.Lock()
	defer im.mu.Unlock()
	if im.running == nil {
		im.running = map[string]bool{}
	}
	im.running[name] = true
}

func (im *imports) end(name string) {
	im.mu.Lock()
	defer im.mu.Unlock()
	delete(im.running, name)
}

func (im *imports) isRunning(name string) bool {
	im.mu.Lock()
	defer im.mu.Unlock()
	return im.running[name]
}

// imageFile is where an image's bytes are, in the images directory.
func imageFile(dir, name, format string) string {
	return filepath.Join(dir, name, "disk."+format)
}

// Images lists the cluster's images, each with the guests made from it.
func (m *Master) Images() []api.Image {
	_, guests, _ := m.st.Snapshot()
	recs := m.st.Images()
	out := make([]api.Image, 0, len(recs))
	for _, r := range recs {
		out = append(out, imageView(r, guests))
	}
	return out
}

// Image shows one image.
func (m *Master) Image(name string) (api.Image, error) {
	r, ok := m.st.Image(name)
	if !ok {
		return api.Image{}, noImage(name)
	}
	_, guests, _ := m.st.Snapshot()
	return imageView(r, guests), nil
}

func noImage(name string) error {
	return fmt.Errorf("image %q %w: vmctl image ls lists the images, vmctl image import makes one", name, ErrNotFound)
}

func imageView(r store.ImageRecord, guests []store.GuestRecord) api.Image {
	return api.Image{Name: r.Name, Format: r.Format, SizeBytes: r.SizeBytes, VirtualBytes: r.VirtualBytes, SHA256: r.SHA256,
		State: r.State, CreatedAt: r.CreatedAt, CreatedBy: r.CreatedBy, UsedBy: usersOf(r.Name, guests)}
}

// usersOf names the guests that use an image, sorted: made from it, or with it, install
// media, in their cdrom.
func usersOf(image string, guests []store.GuestRecord) []string {
	var out []string
	for _, g := range guests {
		if g.Image == image || g.ISO == image {
			out = append(out, g.Name)
		}
	}
	slices.Sort(out)
	return out
}

// ErrNoImagesDir: the master has no images directory to write an image to.
var ErrNoImagesDir = errors.New("this management node has no images_dir")

// ImportImage makes image name of the given format from body: streamed into a
// temporary file in IMAGES_DIR/NAME (never read into memory), its SHA-256 computed
// on the way and compared with want when given, its content checked to be of its
// format, then synced and renamed into place, and only then recorded ready. Whatever
// fails, nothing is kept: neither a file nor a record. token names who imports it.
func (m *Master) ImportImage(name, format, want, token string, body io.Reader) (api.Image, error) {
	if fe := api.ValidateImageName("name", name); fe != nil {
		return api.Image{}, fe
	}
	if fe := api.ValidateImageFormat(format); fe != nil {
		return api.Image{}, fe
	}
	if want != "" {
		sum, fe := api.NormalizeSHA256(want)
		if fe != nil {
			return api.Image{}, fe
		}
		want = sum
	}
	root := m.opts.ImagesDir
	if root == "" {
		return api.Image{}, fmt.Errorf("%w (%w): set images_dir in every management node's dvmd config to the shared images directory (the same path on every node), and restart dvmd; nothing was changed",
			ErrNoImagesDir, ErrConflict)
	}
	if err := m.mustAct(); err != nil {
		return api.Image{}, err
	}
	dir := filepath.Join(root, name)
	rec := store.ImageRecord{Name: name, Format: format, State: store.ImageImporting, CreatedAt: time.Now().UTC(), CreatedBy: token}
	if err := m.beginImport(rec, dir); err != nil {
		return api.Image{}, err
	}
	defer m.imports.end(name)
	if err := m.receiveImage(&rec, dir, want, body); err != nil {
		// Nothing is kept of an import that failed: the directory made for it, then
		// its record. A master that loses its role in between leaves the record
		// importing, which vmctl image delete removes.
		os.RemoveAll(dir)
		if _, derr := m.st.Apply(store.Command{Op: store.OpDeleteImage, Name: name}); derr != nil {
			m.log.Warn("remove the record of a failed import", "image", name, "err", derr)
		}
		return api.Image{}, err
	}
	rec.State = store.ImageReady
	if _, err := m.st.Apply(store.Command{Op: store.OpPutImage, Image: &rec}); err != nil {
		return api.Image{}, fmt.Errorf("image %q is written to %s but could not be recorded ready: %w; delete it (vmctl image delete %s) and import it again", name, dir, err, name)
	}
	m.log.Info("image imported", "image", name, "format", format, "bytes", rec.SizeBytes, "sha256", rec.SHA256)
	return imageView(rec, nil), nil
}

// beginImport records the import and makes its directory, or says why it cannot
// start: the name is taken by an image, or by a directory placed by hand (or left by
// an import that was cut off with its master).
func (m *Master) beginImport(rec store.ImageRecord, dir string) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	if old, ok := m.st.Image(rec.Name); ok {
		return fmt.Errorf("image %q already exists (%s, %s): %w; delete it first (vmctl image delete %s) or choose another name; nothing was changed",
			rec.Name, old.Format, old.State, ErrConflict, rec.Name)
	}
	if _, err := os.Lstat(dir); err == nil {
		return fmt.Errorf("%s exists in images_dir, though no image %q is recorded (placed there by hand, or left by an import cut off): %w; choose another name, or remove the directory; nothing was changed",
			dir, rec.Name, ErrConflict)
	}
	if err := os.Mkdir(dir, 0o755); err != nil {
		return fmt.Errorf("images_dir: %w (is %s the shared images directory, mounted and writable by dvmd?); nothing was changed", err, filepath.Dir(dir))
	}
	if _, err := m.st.Apply(store.Command{Op: store.OpPutImage, Image: &rec}); err != nil {
		os.Remove(dir)
		return err
	}
	m.imports.start(rec.Name)
	return nil
}

// receiveImage writes body into dir as rec's file and fills rec's size, virtual size
// and checksum; the file is renamed into place only once all is verified and synced.
func (m *Master) receiveImage(rec *store.ImageRecord, dir, want string, body io.Reader) error {
	if rec.Format == api.ImageKernel {
		return m.receiveKernel(rec, dir, want, body)
	}
	f, err := os.CreateTemp(dir, ".disk."+rec.Format+".*")
	if err != nil {
		return fmt.Errorf("images_dir: %w", err)
	}
	defer f.Close()
	h := sha256.New()
	head := &headWriter{max: formatHead}
	n, err := io.Copy(io.MultiWriter(f, h, head), body)
	if err != nil {
		return uploadErr(rec.Name, n, err)
	}
	sum := hex.EncodeToString(h.Sum(nil))
	if err := checkSum(sum, want, n); err != nil {
		return err
	}
	virtual, err := checkImageFormat(rec.Format, head.buf.Bytes(), n)
	if err != nil {
		return &api.FieldError{Field: api.ImportFormat, Msg: err.Error() + "; nothing was kept"}
	}
	if err := place(f, imageFile(filepath.Dir(dir), rec.Name, rec.Format)); err != nil {
		return err
	}
	syncDir(dir)
	syncDir(filepath.Dir(dir))
	rec.SizeBytes, rec.VirtualBytes, rec.SHA256 = n, virtual, sum
	return nil
}

// uploadErr says why an upload ended after n bytes.
func uploadErr(name string, n int64, err error) error {
	var mbe *http.MaxBytesError
	if errors.As(err, &mbe) {
		return &api.FieldError{Field: "body", Msg: fmt.Sprintf("larger than %s, the largest image", units.FormatBytes(api.MaxImageBytes))}
	}
	return fmt.Errorf("%w: the upload of image %q ended after %s: %v; nothing was kept: import it again", ErrBadRequest, name, units.FormatBytes(n), err)
}

// checkSum compares the SHA-256 of the n bytes received with the one the operator
// gave, if any.
func checkSum(sum, want string, n int64) error {
	switch {
	case n == 0:
		return &api.FieldError{Field: "body", Msg: "empty: send the image's bytes"}
	case want != "" && sum != want:
		return &api.FieldError{Field: api.ImportSHA256, Msg: fmt.Sprintf("the %s received have SHA-256 %s, not %s: the file is not the one meant, or was damaged on its way; check it (sha256sum FILE) and import it again; nothing was kept",
			units.FormatBytes(n), sum, want)}
	}
	return nil
}

// place makes a temporary file written in full the file final: synced, readable by
// QEMU (which runs as its own user), renamed. The caller syncs the directory.
func place(f *os.File, final string) error {
	if err := f.Sync(); err != nil {
		return fmt.Errorf("images_dir: sync %s: %w", f.Name(), err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("images_dir: %w", err)
	}
	if err := os.Chmod(f.Name(), 0o644); err != nil {
		return fmt.Errorf("images_dir: %w", err)
	}
	if err := os.Rename(f.Name(), final); err != nil {
		return fmt.Errorf("images_dir: %w", err)
	}
	return nil
}

// kernelFiles are the files of a kernel image, booted directly (the lab guest): the
// kernel, and optionally an initrd and a kernel command line.
var kernelFiles = []string{"kernel", "initrd", "cmdline"}

// maxCmdline bounds a kernel image's command line: Linux takes at most 2048 bytes on
// x86 (COMMAND_LINE_SIZE), and dvm adds its own parameters.
const maxCmdline = 2048

// receiveKernel unpacks a kernel image, sent as a tar archive of its files
// (kernelFiles, regular files at the archive's top), into dir, each through a
// temporary file renamed into place once all are verified. Its checksum is the
// archive's, every byte sent.
func (m *Master) receiveKernel(rec *store.ImageRecord, dir, want string, body io.Reader) error {
	h := sha256.New()
	counted := &countingReader{r: io.TeeReader(body, h)}
	tr := tar.NewReader(counted)
	files := map[string]*os.File{}
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	bad := func(format string, args ...any) error {
		return &api.FieldError{Field: "body", Msg: fmt.Sprintf(format, args...) + ": a kernel image is a tar archive of the files kernel, initrd and cmdline (vmctl image import NAME DIR makes it); nothing was kept"}
	}
	// blocks is how far the archive must go to hold its entries and its end: tar's
	// reader takes an archive that stops between entries for a whole one.
	var size, blocks int64
	for {
		hdr, err := tr.Next()
		if err == io.EOF {
			if counted.n < blocks+1024 {
				return bad("it is cut short (it has no end-of-archive blocks)")
			}
			break
		}
		if err != nil {
			if counted.err != nil {
				return uploadErr(rec.Name, counted.n, counted.err)
			}
			return bad("not a tar archive (%v)", err)
		}
		name := hdr.Name
		switch {
		case !slices.Contains(kernelFiles, name) || hdr.Typeflag != tar.TypeReg:
			return bad("it holds %q", name)
		case files[name] != nil:
			return bad("it holds %s twice", name)
		case name == "cmdline" && hdr.Size > maxCmdline:
			return bad("its cmdline is %d bytes, more than %d", hdr.Size, maxCmdline)
		}
		f, err := os.CreateTemp(dir, "."+name+".*")
		if err != nil {
			return fmt.Errorf("images_dir: %w", err)
		}
		files[name] = f
		blocks += 512 + (hdr.Size+511)/512*512
		n, err := io.Copy(f, tr)
		size += n
		if err != nil {
			if counted.err != nil {
				return uploadErr(rec.Name, counted.n, counted.err)
			}
			return bad("its %s is cut short (%v)", name, err)
		}
	}
	// What follows the archive's end (its padding) is hashed too: the checksum is of
	// every byte sent, as sha256sum of the archive gives it.
	if _, err := io.Copy(io.Discard, counted); err != nil {
		return uploadErr(rec.Name, counted.n, err)
	}
	if err := checkSum(hex.EncodeToString(h.Sum(nil)), want, counted.n); err != nil {
		return err
	}
	if files["kernel"] == nil {
		return bad("it has no kernel")
	}
	for name, f := range files {
		if err := place(f, filepath.Join(dir, name)); err != nil {
			return err
		}
	}
	syncDir(dir)
	syncDir(filepath.Dir(dir))
	rec.SizeBytes, rec.VirtualBytes, rec.SHA256 = size, 0, hex.EncodeToString(h.Sum(nil))
	return nil
}

// countingReader counts the bytes read through it and keeps the first error of the
// reader it reads, to tell a cut upload from a bad archive.
type countingReader struct {
	r   io.Reader
	n   int64
	err error
}

func (c *countingReader) Read(p []byte) (int, error) {
	n, err := c.r.Read(p)
	c.n += int64(n)
	if err != nil && err != io.EOF && c.err == nil {
		c.err = err
	}
	return n, err
}

func syncDir(dir string) {
	if d, err := os.Open(dir); err == nil {
		d.Sync()
		d.Close()
	}
}

// formatHead is how much of an image's start its format check reads: an ISO 9660
// volume descriptor is at 32 KiB.
const formatHead = 64 << 10

// headWriter keeps the first max bytes written to it.
type headWriter struct {
	buf bytes.Buffer
	max int
}

func (w *headWriter) Write(p []byte) (int, error) {
	if room := w.max - w.buf.Len(); room > 0 {
		w.buf.Write(p[:min(room, len(p))])
	}
	return len(p), nil
}

// qcow2Magic starts every qcow2 file.
var qcow2Magic = []byte{'Q', 'F', 'I', 0xfb}

// checkImageFormat checks that an image's content is of its format, from its first
// bytes and its size, and returns the size of the disk it holds. A qcow2 must stand
// alone: one naming a backing file or an external data file would have QEMU open a
// file of the host the uploader chose, and an encrypted one could not be booted.
func checkImageFormat(format string, head []byte, size int64) (int64, error) {
	isQcow2 := bytes.HasPrefix(head, qcow2Magic)
	switch format {
	case api.ImageQCOW2:
		if !isQcow2 {
			return 0, errors.New("the file is not a qcow2 image (it does not start with QFI\\xfb): give its format (qemu-img info FILE says it), such as --format raw")
		}
		if len(head) < 72 {
			return 0, errors.New("the file is too short for a qcow2 header")
		}
		be := binary.BigEndian
		ver := be.Uint32(head[4:8])
		if ver != 2 && ver != 3 {
			return 0, fmt.Errorf("qcow2 version %d: QEMU writes versions 2 and 3", ver)
		}
		if off := be.Uint64(head[8:16]); off != 0 {
			return 0, errors.New("the qcow2 image names a backing file: import a standalone image (qemu-img convert -O qcow2 FILE NEW makes one)")
		}
		if be.Uint32(head[32:36]) != 0 {
			return 0, errors.New("the qcow2 image is encrypted: import a decrypted one (qemu-img convert)")
		}
		if ver == 3 && len(head) >= 80 && be.Uint64(head[72:80])&(1<<2) != 0 {
			return 0, errors.New("the qcow2 image keeps its data in an external file: import a standalone image (qemu-img convert -O qcow2 FILE NEW makes one)")
		}
		virtual := be.Uint64(head[24:32])
		if virtual == 0 || virtual > api.MaxImageBytes {
			return 0, fmt.Errorf("the qcow2 image's virtual size %d is out of range: 1 byte to %s", virtual, units.FormatBytes(api.MaxImageBytes))
		}
		return int64(virtual), nil
	case api.ImageRaw:
		if isQcow2 {
			return 0, errors.New("the file is a qcow2 image: import it with --format qcow2")
		}
		return size, nil
	case api.ImageISO:
		if len(head) < 0x8006 || string(head[0x8001:0x8006]) != "CD001" {
			return 0, errors.New("the file is not an ISO 9660 image (no CD001 volume descriptor at byte 32769): give its format, such as --format raw")
		}
		return size, nil
	}
	return 0, fmt.Errorf("unknown format %q", format)
}

// DeleteImage removes an image: its record, then its directory. It is refused while
// a guest uses it (the guests' disks are overlays on it) and while this master
// imports it; an import that was cut off with its master (the record left
// importing) is removed with whatever it left.
func (m *Master) DeleteImage(name string) error {
	if fe := api.ValidateImageName("name", name); fe != nil {
		return fe
	}
	if err := m.mustAct(); err != nil {
		return err
	}
	rec, err := m.forgetImage(name)
	if err != nil {
		return err
	}
	// Outside m.mu: removing a large file from shared storage may take a while, and
	// placements wait on m.mu. An import of the same name meanwhile is refused, the
	// directory being there still.
	if root := m.opts.ImagesDir; root != "" {
		if err := os.RemoveAll(filepath.Join(root, name)); err != nil {
			return fmt.Errorf("image %q is deleted, but its files could not be removed: %w: remove %s by hand", name, err, filepath.Join(root, name))
		}
	}
	m.log.Info("image deleted", "image", name, "format", rec.Format)
	return nil
}

// forgetImage deletes an image's record, under m.mu (which creates hold where they
// check their image), unless a guest uses it or this master imports it.
func (m *Master) forgetImage(name string) (store.ImageRecord, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	rec, ok := m.st.Image(name)
	if !ok {
		return rec, noImage(name)
	}
	if m.imports.isRunning(name) {
		return rec, fmt.Errorf("image %q is being imported now: %w; wait for the import to end, or stop it; nothing was changed", name, ErrConflict)
	}
	_, guests, _ := m.st.Snapshot()
	if users := usersOf(name, guests); len(users) > 0 {
		return rec, fmt.Errorf("image %q is used by %d guests (%s): %w: %s; nothing was changed",
			name, len(users), joinNames(users), ErrConflict, usedHow(rec.Format))
	}
	_, err := m.st.Apply(store.Command{Op: store.OpDeleteImage, Name: name})
	return rec, err
}

// usedHow says why an image in use stays, and what frees it.
func usedHow(format string) string {
	if format == api.ImageISO {
		return "it is in their cdrom; eject it (vmctl vm eject GUEST) or delete them first"
	}
	return "their disks are made on it; delete them first"
}

// joinNames lists names for a message, the first ten of them.
func joinNames(names []string) string {
	if len(names) > 10 {
		return fmt.Sprintf("%s and %d more", joinNames(names[:10]), len(names)-10)
	}
	s := ""
	for i, n := range names {
		if i > 0 {
			s += ", "
		}
		s += n
	}
	return s
}

// guestImage checks the image a create names and sizes the guest's first disk from
// it: a disk image must be ready, and the disk is its virtual size when not given,
// never smaller. An image with no record is one placed by hand (a kernel directory,
// the lab guest's), taken as it is when its directory is there. It returns whether
// the image is a recorded one.
func (m *Master) guestImage(req *api.CreateGuest) (bool, error) {
	if req.Image == "" {
		return false, nil
	}
	im, ok := m.st.Image(req.Image)
	if !ok {
		if root := m.opts.ImagesDir; root != "" {
			if _, err := os.Stat(filepath.Join(root, req.Image)); err != nil {
				return false, &api.FieldError{Field: "image", Msg: fmt.Sprintf("no image %q: vmctl image ls lists the images, vmctl image import makes one", req.Image)}
			}
		}
		return false, nil
	}
	if err := imageReady(im); err != nil {
		return true, err
	}
	if im.Format == api.ImageKernel {
		return true, nil // booted directly: its disk, if any, is empty
	}
	if im.Format == api.ImageISO {
		return true, &api.FieldError{Field: "image", Msg: fmt.Sprintf("image %q is install media (iso): a guest's disk is made from a qcow2 or raw image", im.Name)}
	}
	switch {
	case req.DiskBytes == 0:
		req.DiskBytes = im.VirtualBytes
	case req.DiskBytes < im.VirtualBytes:
		return true, &api.FieldError{Field: "disk_bytes", Msg: fmt.Sprintf("%s is smaller than image %q's virtual size, %s: give %s or more, or leave it out for the image's size",
			units.FormatBytes(req.DiskBytes), im.Name, units.FormatBytes(im.VirtualBytes), units.FormatBytes(im.VirtualBytes))}
	}
	return true, nil
}

// imageReady says why a recorded image cannot make guests yet.
func imageReady(im store.ImageRecord) error {
	if im.State != store.ImageReady {
		return fmt.Errorf("image %q is %s, not ready: wait for its import to end (vmctl image show %s): %w", im.Name, im.State, im.Name, ErrConflict)
	}
	return nil
}

// imageStill says why a recorded image a create was checked against cannot make
// the guest now. Called with m.mu held.
func (m *Master) imageStill(name string) error {
	im, ok := m.st.Image(name)
	if !ok {
		return fmt.Errorf("image %q was deleted while the guest was being created: %w; nothing was created", name, ErrConflict)
	}
	return imageReady(im)
}

// guestISO checks the install media a create names: an image of format iso, ready,
// and every node's agent must know install media (an older one would refuse its
// whole assignment).
func (m *Master) guestISO(req api.CreateGuest) error {
	if req.ISO == "" {
		return nil
	}
	im, ok := m.st.Image(req.ISO)
	if !ok {
		return &api.FieldError{Field: "iso", Msg: fmt.Sprintf("no image %q: vmctl image ls lists the images, vmctl image import NAME FILE.iso makes one", req.ISO)}
	}
	if err := imageReady(im); err != nil {
		return err
	}
	if im.Format != api.ImageISO {
		return &api.FieldError{Field: "iso", Msg: fmt.Sprintf("image %q is a %s image, not install media (iso): give it as --image, which makes the guest's disk from it, or import an ISO (vmctl image import NAME FILE.iso)", im.Name, im.Format)}
	}
	return m.nodesRun("a guest with install media", disksSince)
}

// EjectISO takes a guest's install media out of its cdrom, in the replicated state:
// its node ejects it (from the running guest too), and wherever the guest is defined
// again (restarted elsewhere, moved), it has none; it then boots from its disk.
func (m *Master) EjectISO(name string) (api.Guest, string, error) {
	if err := m.mustAct(); err != nil {
		return api.Guest{}, "", err
	}
	iso := ""
	g, err := m.updateGuest(name, func(g *store.GuestRecord) (store.Op, error) {
		switch {
		case g.Desired == store.DesiredDeleted:
			return "", fmt.Errorf("guest %q is being deleted: %w", name, ErrConflict)
		case g.ISO == "":
			return "", fmt.Errorf("guest %q has no install media in its cdrom: %w; nothing was changed (vmctl vm show %s)", name, ErrConflict, name)
		}
		iso, g.ISO = g.ISO, ""
		return store.OpPutGuest, nil
	})
	if err != nil {
		return api.Guest{}, "", err
	}
	m.log.Info("install media ejected", "guest", name, "image", iso)
	return m.view(g, time.Now()), iso, nil
}

func (h *handler) ejectISO(w http.ResponseWriter, r *http.Request) {
	if err := decodeNone(r); err != nil {
		fail(w, err)
		return
	}
	g, iso, err := h.m.EjectISO(r.PathValue("name"))
	if err != nil {
		fail(w, err)
		return
	}
	callerOf(r).detail = "image " + iso + " ejected"
	writeJSON(w, http.StatusOK, g)
}

// disksSince is the first dvmd whose agents make extra disks and keep disks on a
// delete: an older agent refuses an assignment that holds either.
const disksSince = "0.3.0"

// extraDisks checks a create's extra disks: they follow a first disk, and every
// node's agent must know them (an older one would refuse its whole assignment).
func (m *Master) extraDisks(req api.CreateGuest) error {
	if len(req.ExtraDiskBytes) == 0 {
		return nil
	}
	if req.DiskBytes == 0 {
		return &api.FieldError{Field: "extra_disk_bytes", Msg: "extra disks follow a first disk: give its size first, such as --disk 20GiB,50GiB"}
	}
	return m.nodesRun("a guest with extra disks", disksSince)
}

// nodesRun refuses what needs dvmd since on nodes (every node not lost, when none
// is named) while one runs an older dvmd.
func (m *Master) nodesRun(what, since string, only ...string) error {
	nodes, _, _ := m.st.SnapshotWhere(func(*store.GuestRecord) bool { return false })
	for _, n := range nodes {
		if !n.LostAt.IsZero() || (len(only) > 0 && !slices.Contains(only, n.Name)) {
			continue
		}
		if !version.AtLeast(n.Version, since) {
			return fmt.Errorf("%s needs dvmd %s or newer on every node, and node %s runs %s: %w; finish the upgrade first; nothing was changed",
				what, since, n.Name, version.Or(n.Version), ErrConflict)
		}
	}
	return nil
}

// boolParam reads a query parameter that is true or false (absent: false).
func boolParam(r *http.Request, name string) (bool, error) {
	switch v := r.URL.Query().Get(name); v {
	case "", "false", "0":
		return false, nil
	case "true", "1":
		return true, nil
	default:
		return false, &api.FieldError{Field: name, Msg: fmt.Sprintf("%q: give true or false", v)}
	}
}

func (h *handler) listImages(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, h.m.Images())
}

func (h *handler) getImage(w http.ResponseWriter, r *http.Request) {
	im, err := h.m.Image(r.PathValue("name"))
	if err != nil {
		fail(w, err)
		return
	}
	writeJSON(w, http.StatusOK, im)
}

// importImage makes an image from the request's body, the image's bytes
// (?format=F&sha256=S): see Master.ImportImage. A refusal that needs no byte of the
// body (a bad name or format, a name taken) is answered before the client sends it,
// when it asked with Expect: 100-continue.
func (h *handler) importImage(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query()
	c := callerOf(r)
	im, err := h.m.ImportImage(r.PathValue("name"), q.Get(api.ImportFormat), q.Get(api.ImportSHA256), c.token, r.Body)
	if err != nil {
		fail(w, err)
		return
	}
	c.detail = fmt.Sprintf("image %s imported: %s, %s, sha256 %s", im.Name, im.Format, units.FormatBytes(im.SizeBytes), im.SHA256)
	writeJSON(w, http.StatusCreated, im)
}

func (h *handler) deleteImage(w http.ResponseWriter, r *http.Request) {
	if err := h.m.DeleteImage(r.PathValue("name")); err != nil {
		fail(w, err)
		return
	}
	callerOf(r).detail = "image " + r.PathValue("name") + " deleted"
	w.WriteHeader(http.StatusNoContent)
}

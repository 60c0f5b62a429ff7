package master

import (
	"archive/tar"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"net/http"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/store"
)

// qemuImg runs the real qemu-img (Debian's qemu-utils), skipping without it.
func qemuImg(t *testing.T, args ...string) {
	t.Helper()
	if _, err := exec.LookPath("qemu-img"); err != nil {
		t.Skip("no qemu-img (Debian: apt-get install qemu-utils)")
	}
	if out, err := exec.Command("qemu-img", args...).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img %v: %v\n%s", args, err, out)
	}
}

func importImage(c *api.Client, name, format, sum, file string) (api.Image, error) {
	f, err := os.Open(file)
	if err != nil {
		return api.Image{}, err
	}
	defer f.Close()
	st, err := f.Stat()
	if err != nil {
		return api.Image{}, err
	}
	q := url.Values{api.ImportFormat: {format}}
	if sum != "" {
		q.Set(api.ImportSHA256, sum)
	}
	var im api.Image
	err = c.Upload(context.Background(), "PUT", "/v1/images/"+url.PathEscape(name)+"?"+q.Encode(), f, st.Size(), &im)
	return im, err
}

func sumOf(t *testing.T, file string) string {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	s := sha256.Sum256(b)
	return hex.EncodeToString(s[:])
}

// listDir lists a directory and its subdirectories, temporary files included.
func listDir(t *testing.T, dir string) []string {
	t.Helper()
	var out []string
	filepath.WalkDir(dir, func(p string, d os.DirEntry, err error) error {
		if p != dir {
			rel, _ := filepath.Rel(dir, p)
			out = append(out, rel)
		}
		return nil
	})
	return out
}

// TestImageImport: a qcow2 made by the real qemu-img is imported over the API with
// its checksum: it is written whole to IMAGES_DIR/NAME/disk.qcow2 (nothing else left
// there), recorded ready with its virtual size and checksum, listed and shown, and
// its import is an event naming the token; a raw image without a checksum is
// recorded with the one computed.
func TestImageImport(t *testing.T) {
	r := newImagesRig(t, func(t *testing.T, o Options) (*Master, *api.Client) { return newTestMasterWith(t, o) })
	dir, images, m, ops, reader := r.dir, r.images, r.m, r.ops, r.reader
	src := filepath.Join(dir, "debian.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", src, "3G")

	sum := sumOf(t, src)
	im, err := importImage(ops, "debian-12", "qcow2", strings.ToUpper(sum), src)
	if err != nil {
		t.Fatal(err)
	}
	st, _ := os.Stat(src)
	if im.Name != "debian-12" || im.Format != "qcow2" || im.State != api.ImageReady || im.SHA256 != sum ||
		im.SizeBytes != st.Size() || im.VirtualBytes != 3<<30 || im.CreatedBy != "ops" {
		t.Fatalf("imported %+v", im)
	}
	if got := sumOf(t, filepath.Join(images, "debian-12", "disk.qcow2")); got != sum {
		t.Fatalf("the file written has SHA-256 %s, want %s", got, sum)
	}
	if left := listDir(t, images); !slices.Equal(left, []string{"debian-12", "debian-12/disk.qcow2"}) {
		t.Fatalf("images_dir holds %v", left)
	}
	var list []api.Image
	if err := reader.Do(context.Background(), "GET", "/v1/images", nil, &list); err != nil || len(list) != 1 || list[0].SHA256 != sum {
		t.Fatalf("image ls: %+v, %v", list, err)
	}
	var shown api.Image
	if err := reader.Do(context.Background(), "GET", "/v1/images/debian-12", nil, &shown); err != nil || shown.VirtualBytes != 3<<30 {
		t.Fatalf("image show: %+v, %v", shown, err)
	}
	found := false
	for _, e := range m.st.Events(0) {
		if e.Kind == EventWrite && strings.HasPrefix(e.Detail, "PUT /v1/images/debian-12 (201)") && e.Token == "ops" && strings.Contains(e.Detail, sum) {
			found = true
		}
	}
	if !found {
		t.Error("no write event for the import")
	}

	raw := filepath.Join(dir, "disk.img")
	os.WriteFile(raw, bytes.Repeat([]byte("dvm"), 100000), 0o644)
	im, err = importImage(ops, "scratch", "raw", "", raw)
	if err != nil {
		t.Fatal(err)
	}
	if im.SHA256 != sumOf(t, raw) || im.VirtualBytes != 300000 || im.State != api.ImageReady {
		t.Fatalf("raw: %+v", im)
	}
	if r, ok := m.st.Image("scratch"); !ok || r.State != store.ImageReady {
		t.Fatalf("record %+v", r)
	}
}

// TestImageImportBadInput: a wrong checksum, a bad name, an unknown format, content
// not of its format, a qcow2 naming a backing file, an empty file, a name taken (by
// an image or a directory placed by hand), a token too small and a master without
// images_dir: each refused with what was wrong, and nothing changed: no record, no
// file, not even a temporary one.
func TestImageImportBadInput(t *testing.T) {
	r := newImagesRig(t, func(t *testing.T, o Options) (*Master, *api.Client) { return newTestMasterWith(t, o) })
	dir, images, m, ops, reader := r.dir, r.images, r.m, r.ops, r.reader
	good := filepath.Join(dir, "good.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", good, "1G")
	overlay := filepath.Join(dir, "overlay.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", "-b", good, "-F", "qcow2", overlay)
	if _, err := importImage(ops, "base", "qcow2", "", good); err != nil {
		t.Fatal(err)
	}
	os.Mkdir(filepath.Join(images, "byhand"), 0o755)
	raw := filepath.Join(dir, "raw.img")
	os.WriteFile(raw, bytes.Repeat([]byte{0}, 40000), 0o644)
	empty := filepath.Join(dir, "empty")
	os.WriteFile(empty, nil, 0o644)
	wrong := strings.Repeat("ab", 32)

	before := listDir(t, images)
	recs := m.st.Images()
	for _, c := range []struct {
		what                 string
		c                    *api.Client
		name, format, sum, f string
		code                 int
		field, text          string
	}{
		{"wrong checksum", ops, "new", "qcow2", wrong, good, 400, "sha256", "not " + wrong},
		{"checksum not hex", ops, "new", "qcow2", "xyz", good, 400, "sha256", "64 hex digits"},
		{"bad name", ops, "New!", "qcow2", "", good, 400, "name", "not a valid image name"},
		{"unknown format", ops, "new", "vmdk", "", good, 400, "format", `"vmdk" is not an image format`},
		{"no format", ops, "new", "", "", good, 400, "format", "give qcow2, raw, iso or kernel"},
		{"raw called qcow2", ops, "new", "qcow2", "", raw, 400, "format", "not a qcow2 image"},
		{"qcow2 called raw", ops, "new", "raw", "", good, 400, "format", "import it with --format qcow2"},
		{"not an iso", ops, "new", "iso", "", raw, 400, "format", "not an ISO 9660 image"},
		{"backing file", ops, "new", "qcow2", "", overlay, 400, "format", "names a backing file"},
		{"empty", ops, "new", "raw", "", empty, 400, "body", "empty"},
		{"name taken", ops, "base", "qcow2", "", good, 409, "", `image "base" already exists`},
		{"directory by hand", ops, "byhand", "qcow2", "", good, 409, "", "no image \"byhand\" is recorded"},
		{"read token", reader, "new", "qcow2", "", good, 403, "", "needs operator"},
	} {
		_, err := importImage(c.c, c.name, c.format, c.sum, c.f)
		wantStatus(t, c.what, err, c.code, c.text)
		if code, field := statusOf(err); code == 400 && field != c.field {
			t.Errorf("%s: field %q, want %q", c.what, field, c.field)
		}
		if after := listDir(t, images); !slices.Equal(after, before) {
			t.Fatalf("%s left images_dir as %v, was %v", c.what, after, before)
		}
		if after := m.st.Images(); len(after) != len(recs) || after[0] != recs[0] {
			t.Fatalf("%s changed the records: %+v", c.what, after)
		}
	}

	// A master without images_dir says what to set.
	_, bare := newTestMasterWith(t, Options{})
	_, err := importImage(bare, "new", "qcow2", "", good)
	wantStatus(t, "no images_dir", err, 409, "set images_dir")
}

// TestGuestsFromImages: a guest made from a disk image gets the image's virtual size
// as its disk unless it asks for more (less is refused), extra disks go to its node's
// assignment, install media and images not ready make no guest; an image is not
// deleted while a guest uses it, and is deleted, files and all, once none does.
func TestGuestsFromImages(t *testing.T) {
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	os.Mkdir(images, 0o755)
	m, c := capacityMaster(t, Options{ImagesDir: images})
	ctx := context.Background()
	report(t, c, "n1", 8, 16)
	src := filepath.Join(dir, "src.qcow2")
	qemuImg(t, "create", "-q", "-f", "qcow2", src, "4G")
	if _, err := importImage(c, "debian", "qcow2", "", src); err != nil {
		t.Fatal(err)
	}
	createWith := func(req api.CreateGuest) (api.Guest, error) { return createSmall(c, req) }
	g, err := createWith(api.CreateGuest{Name: "web1", Image: "debian"})
	if err != nil || g.DiskBytes != 4<<30 || g.Node != "n1" {
		t.Fatalf("web1: %+v, %v", g, err)
	}
	g, err = createWith(api.CreateGuest{Name: "web2", Image: "debian", DiskBytes: 20 << 30, ExtraDiskBytes: []int64{50 << 30}})
	if err != nil || g.DiskBytes != 20<<30 || !slices.Equal(g.ExtraDiskBytes, []int64{50 << 30}) {
		t.Fatalf("web2: %+v, %v", g, err)
	}
	asg := m.Assignment(ctx, "n1", 0, 0)
	var web2 api.AssignedGuest
	for _, ag := range asg.Guests {
		if ag.Name == "web2" {
			web2 = ag
		}
	}
	if web2.Image != "debian" || web2.DiskBytes != 20<<30 || !slices.Equal(web2.ExtraDiskBytes, []int64{50 << 30}) {
		t.Fatalf("n1's assignment of web2: %+v", web2)
	}

	m.st.Apply(store.Command{Op: store.OpPutImage, Image: &store.ImageRecord{Name: "half", Format: "raw", State: store.ImageImporting}})
	m.st.Apply(store.Command{Op: store.OpPutImage, Image: &store.ImageRecord{Name: "media", Format: "iso", State: store.ImageReady, VirtualBytes: 1 << 20}})
	for _, b := range []refusal{
		{"disk smaller than the image", api.CreateGuest{Name: "x", Image: "debian", DiskBytes: 1 << 30}, 400, "disk_bytes", "smaller than image \"debian\"'s virtual size, 4GiB"},
		{"no such image", api.CreateGuest{Name: "x", Image: "nope"}, 400, "image", `no image "nope"`},
		{"install media", api.CreateGuest{Name: "x", Image: "media"}, 400, "image", "install media"},
		{"importing", api.CreateGuest{Name: "x", Image: "half"}, 409, "", "is importing, not ready"},
		{"twin with extra disks", api.CreateGuest{Name: "x", DiskBytes: 1 << 30, ExtraDiskBytes: []int64{1 << 30}, Failover: api.FailoverTwin}, 400, "extra_disk_bytes", "twin"},
		{"too many extra disks", api.CreateGuest{Name: "x", DiskBytes: 1 << 30, ExtraDiskBytes: make([]int64, 26)}, 400, "extra_disk_bytes", "at most 25"},
	} {
		_, err := createWith(b.req)
		b.check(t, m, err)
	}

	// A node of an older dvmd would refuse an assignment with extra disks.
	putNode(t, m, store.NodeRecord{Name: "old", CPUs: 4, MemoryBytes: 8 << 30, Version: "0.1.3"})
	_, err = createWith(api.CreateGuest{Name: "x", DiskBytes: 1 << 30, ExtraDiskBytes: []int64{1 << 30}})
	wantStatus(t, "extra disks with a 0.1.3 node", err, 409, "node old runs 0.1.3")
	if _, err := m.st.Apply(store.Command{Op: store.OpDeleteNode, Name: "old"}); err != nil {
		t.Fatal(err)
	}

	err = c.Do(ctx, "DELETE", "/v1/images/debian", nil, nil)
	wantStatus(t, "delete in use", err, 409, "used by 2 guests (web1, web2)")
	if _, ok := m.st.Image("debian"); !ok || len(listDir(t, images)) != 2 {
		t.Fatal("a refused delete changed the image")
	}
	err = c.Do(ctx, "DELETE", "/v1/guests/web1?keep_disks=maybe", nil, nil)
	wantStatus(t, "keep_disks=maybe", err, 400, "give true or false")
	if err := c.Do(ctx, "DELETE", "/v1/guests/web1?keep_disks=true", nil, nil); err != nil {
		t.Fatal(err)
	}
	if g, _ := m.st.Guest("web1"); !g.KeepDisks || g.Desired != store.DesiredDeleted {
		t.Fatalf("web1 deleted keeping its disks: %+v", g)
	}
	for _, ag := range m.Assignment(ctx, "n1", 0, 0).Guests {
		if ag.Name == "web1" && !ag.KeepDisks {
			t.Fatalf("assignment of web1 %+v does not keep its disks", ag)
		}
	}
	// Still used until the guests are gone.
	wantStatus(t, "delete in use by a guest being deleted", c.Do(ctx, "DELETE", "/v1/images/debian", nil, nil), 409, "web1")
	for _, name := range []string{"web1", "web2"} {
		m.st.Apply(store.Command{Op: store.OpDeleteGuest, Name: name})
	}
	if err := c.Do(ctx, "DELETE", "/v1/images/debian", nil, nil); err != nil {
		t.Fatal(err)
	}
	if _, ok := m.st.Image("debian"); ok {
		t.Fatal("image still recorded")
	}
	if left := listDir(t, images); len(left) != 0 {
		t.Fatalf("images_dir after the delete: %v", left)
	}
	wantStatus(t, "delete again", c.Do(ctx, "DELETE", "/v1/images/debian", nil, nil), http.StatusNotFound, `image "debian" not found`)
	// An import cut off with its master leaves a record importing, which a delete removes.
	if err := c.Do(ctx, "DELETE", "/v1/images/half", nil, nil); err != nil {
		t.Fatal(err)
	}
}

// imagesRig is a master with an images directory and tokens of each scope that
// guests and images need.
type imagesRig struct {
	dir, images        string // a temporary directory, and images_dir in it
	m                  *Master
	admin, ops, reader *api.Client
}

// newImagesRig starts a master with newMaster (newTestMasterWith, or capacityMaster
// for one that places guests).
func newImagesRig(t *testing.T, newMaster func(*testing.T, Options) (*Master, *api.Client)) imagesRig {
	t.Helper()
	r := imagesRig{dir: t.TempDir()}
	r.images = filepath.Join(r.dir, "images")
	if err := os.Mkdir(r.images, 0o755); err != nil {
		t.Fatal(err)
	}
	r.m, r.admin = newMaster(t, Options{ImagesDir: r.images})
	r.ops = as(t, r.admin, mustToken(t, r.admin, "ops", api.ScopeOperator))
	r.reader = as(t, r.admin, mustToken(t, r.admin, "viewer", api.ScopeRead))
	return r
}

// refusal is a create of guest x that must be refused with code (and, for a 400,
// field) and a message holding text.
type refusal struct {
	what  string
	req   api.CreateGuest
	code  int
	field string
	text  string
}

// check checks that err is the refusal and that nothing was created.
func (b refusal) check(t *testing.T, m *Master, err error) {
	t.Helper()
	wantStatus(t, b.what, err, b.code, b.text)
	if c, f := statusOf(err); c == 400 && f != b.field {
		t.Errorf("%s: field %q, want %q", b.what, f, b.field)
	}
	if _, ok := m.st.Guest("x"); ok {
		t.Fatalf("%s: guest x was created", b.what)
	}
}

// createSmall creates a guest of 1 CPU and 1 GiB as asked otherwise.
func createSmall(c *api.Client, req api.CreateGuest) (api.Guest, error) {
	req.CPUs, req.MemoryBytes = 1, 1<<30
	var g api.Guest
	err := c.Do(context.Background(), "POST", "/v1/guests", req, &g)
	return g, err
}

// tarOf is a tar archive of files, in order, as vmctl sends a kernel image.
func tarOf(t *testing.T, files ...[2]string) []byte {
	t.Helper()
	var buf bytes.Buffer
	tw := tar.NewWriter(&buf)
	for _, f := range files {
		if err := tw.WriteHeader(&tar.Header{Name: f[0], Mode: 0o644, Size: int64(len(f[1])), Typeflag: tar.TypeReg}); err != nil {
			t.Fatal(err)
		}
		tw.Write([]byte(f[1]))
	}
	tw.Close()
	return buf.Bytes()
}

// TestKernelImage: a kernel image arrives as a tar archive of kernel, initrd and
// cmdline, and is unpacked into IMAGES_DIR/NAME as the agents read it, its checksum
// the archive's; a guest made from it needs no disk. An archive with anything else
// in it, or without a kernel, is refused and leaves nothing.
func TestKernelImage(t *testing.T) {
	dir := t.TempDir()
	images := filepath.Join(dir, "images")
	os.Mkdir(images, 0o755)
	m, c := capacityMaster(t, Options{ImagesDir: images})
	report(t, c, "n1", 8, 16)
	put := func(name string, body []byte) (api.Image, error) {
		var im api.Image
		err := c.Upload(context.Background(), "PUT", "/v1/images/"+name+"?format=kernel", bytes.NewReader(body), int64(len(body)), &im)
		return im, err
	}
	archive := tarOf(t, [2]string{"kernel", "KERNEL"}, [2]string{"initrd", "INITRD!"}, [2]string{"cmdline", "console=ttyS0\n"})
	im, err := put("lab2", archive)
	if err != nil {
		t.Fatal(err)
	}
	sum := sha256.Sum256(archive)
	if im.Format != api.ImageKernel || im.State != api.ImageReady || im.SizeBytes != 6+7+14 || im.VirtualBytes != 0 || im.SHA256 != hex.EncodeToString(sum[:]) {
		t.Fatalf("imported %+v", im)
	}
	for name, want := range map[string]string{"kernel": "KERNEL", "initrd": "INITRD!", "cmdline": "console=ttyS0\n"} {
		if b, err := os.ReadFile(filepath.Join(images, "lab2", name)); err != nil || string(b) != want {
			t.Errorf("%s: %q, %v", name, b, err)
		}
	}
	if left := listDir(t, filepath.Join(images, "lab2")); len(left) != 3 {
		t.Fatalf("lab2 holds %v", left)
	}
	var g api.Guest
	if err := c.Do(context.Background(), "POST", "/v1/guests", api.CreateGuest{Name: "k1", OS: "linux", Image: "lab2", CPUs: 1, MemoryBytes: 128 << 20}, &g); err != nil || g.DiskBytes != 0 {
		t.Fatalf("guest from a kernel image: %+v, %v", g, err)
	}

	before := listDir(t, images)
	for what, body := range map[string][]byte{
		"another file":  tarOf(t, [2]string{"kernel", "K"}, [2]string{"../etc/passwd", "x"}),
		"no kernel":     tarOf(t, [2]string{"initrd", "I"}),
		"twice":         tarOf(t, [2]string{"kernel", "K"}, [2]string{"kernel", "K"}),
		"long cmdline":  tarOf(t, [2]string{"kernel", "K"}, [2]string{"cmdline", strings.Repeat("x", 3000)}),
		"not a tar":     bytes.Repeat([]byte("junk"), 1000),
		"a cut archive": archive[:700],
	} {
		_, err := put("bad", body)
		wantStatus(t, what, err, 400, "nothing was kept")
		if after := listDir(t, images); !slices.Equal(after, before) {
			t.Fatalf("%s left %v", what, after)
		}
		if _, ok := m.st.Image("bad"); ok {
			t.Fatalf("%s left a record", what)
		}
	}
}

// countingSeeker counts the bytes read from it.
type countingSeeker struct {
	*bytes.Reader
	n int
}

func (c *countingSeeker) Read(p []byte) (int, error) {
	n, err := c.Reader.Read(p)
	c.n += n
	return n, err
}

// TestRefusedImportSendsNothing: a refusal that needs none of the body (a name
// taken, a token too small) is answered before the client sends it.
func TestRefusedImportSendsNothing(t *testing.T) {
	images := filepath.Join(t.TempDir(), "images")
	os.Mkdir(images, 0o755)
	m, admin := newTestMasterWith(t, Options{ImagesDir: images})
	m.st.Apply(store.Command{Op: store.OpPutImage, Image: &store.ImageRecord{Name: "taken", Format: "raw", State: store.ImageReady}})
	reader := as(t, admin, mustToken(t, admin, "viewer", api.ScopeRead))
	for what, c := range map[string]struct {
		cl   *api.Client
		name string
		code int
	}{"a name taken": {admin, "taken", 409}, "a read token": {reader, "new", 403}} {
		body := &countingSeeker{Reader: bytes.NewReader(make([]byte, 8<<20))}
		err := c.cl.Upload(context.Background(), "PUT", "/v1/images/"+c.name+"?format=raw", body, 8<<20, nil)
		wantStatus(t, what, err, c.code, "")
		if body.n > 0 {
			t.Errorf("%s: %d bytes sent before the refusal (%v)", what, body.n, err)
		}
	}
}

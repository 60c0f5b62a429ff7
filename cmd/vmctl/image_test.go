package main

import (
	"archive/tar"
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/cmdline"
)

// vmctlErr runs vmctl and returns its standard output and error output.
func vmctlErr(args ...string) (string, string, error) {
	var out, errw bytes.Buffer
	app := newApp(&out)
	app.ErrWriter = &errw
	err := app.Run(cmdline.Interspersed(app, append([]string{"vmctl"}, args...)))
	return out.String(), errw.String(), err
}

// imageAPI answers an import as the master does (the SHA-256 of what it received;
// with tamper, of other bytes), and records each import's query and length.
func imageAPI(t *testing.T, tamper bool) ([]string, *[]string) {
	t.Helper()
	var seen []string
	g := tlsAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method != "PUT" || !strings.HasPrefix(r.URL.Path, "/v1/images/") {
			w.WriteHeader(http.StatusNotFound)
			return
		}
		h := sha256.New()
		n, _ := io.Copy(h, r.Body)
		if tamper {
			h.Write([]byte("x"))
		}
		seen = append(seen, r.URL.RawQuery+" "+r.Header.Get("Expect"))
		w.WriteHeader(http.StatusCreated)
		json.NewEncoder(w).Encode(api.Image{Name: strings.TrimPrefix(r.URL.Path, "/v1/images/"), Format: r.URL.Query().Get("format"),
			State: api.ImageReady, SizeBytes: n, VirtualBytes: n, SHA256: hex.EncodeToString(h.Sum(nil))})
	})
	return g, &seen
}

// TestImageImport: import streams the file with its format (read from the file when
// not given) and checksum, says how far it got on stderr, and shows the image; bad
// input is refused before anything is sent, and an image received with other bytes
// than were sent is an error that says what to do.
func TestImageImport(t *testing.T) {
	dir := t.TempDir()
	qcow := filepath.Join(dir, "a.qcow2")
	os.WriteFile(qcow, append([]byte{'Q', 'F', 'I', 0xfb}, bytes.Repeat([]byte{1}, 100000)...), 0o644)
	raw := filepath.Join(dir, "a.img")
	os.WriteFile(raw, bytes.Repeat([]byte{2}, 5000), 0o644)
	sum := sha256.Sum256(bytes.Repeat([]byte{2}, 5000))
	g, seen := imageAPI(t, false)

	out, errOut, err := vmctlErr(append(g, "image", "import", "deb", qcow)...)
	if err != nil || !strings.Contains(out, "State:     ready") || !strings.Contains(out, "Format:    qcow2") {
		t.Fatalf("import: %v\n%s", err, out)
	}
	if !strings.Contains(errOut, "importing image deb: 97KiB of 97KiB (100%)") {
		t.Errorf("progress: %q", errOut)
	}
	out, _, err = vmctlErr(append(g, "image", "import", "raw1", raw, "--sha256", strings.ToUpper(hex.EncodeToString(sum[:])))...)
	if err != nil || !strings.Contains(out, "Format:    raw") {
		t.Fatalf("raw import: %v\n%s", err, out)
	}
	want := []string{"format=qcow2 100-continue", "format=raw&sha256=" + hex.EncodeToString(sum[:]) + " 100-continue"}
	if strings.Join(*seen, "|") != strings.Join(want, "|") {
		t.Fatalf("requests %q, want %q", *seen, want)
	}

	os.WriteFile(filepath.Join(dir, "empty"), nil, 0o644)
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"image", "import", "deb", filepath.Join(dir, "missing")}, "no such file"},
		{[]string{"image", "import", "deb", dir}, "a kernel image directory holds kernel"},
		{[]string{"image", "import", "deb", dir, "--format", "raw"}, "a raw image is one file"},
		{[]string{"image", "import", "deb", raw, "--format", "kernel"}, "give the directory"},
		{[]string{"image", "import", "deb", filepath.Join(dir, "empty")}, "is empty"},
		{[]string{"image", "import", "Deb!", raw}, "not a valid image name"},
		{[]string{"image", "import", "deb", raw, "--format", "vmdk"}, `--format: "vmdk" is not an image format`},
		{[]string{"image", "import", "deb", raw, "--sha256", "abc"}, "--sha256: \"abc\" is not a SHA-256"},
		{[]string{"image", "import", "deb"}, "give an image name and a file"},
	} {
		if _, _, err := vmctlErr(append(g, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
	if len(*seen) != 2 {
		t.Fatalf("bad input was sent: %q", *seen)
	}

	// A directory is a kernel image, sent as a tar archive of its files.
	kdir := filepath.Join(dir, "lab")
	os.Mkdir(kdir, 0o755)
	os.WriteFile(filepath.Join(kdir, "kernel"), []byte("KERNEL"), 0o644)
	os.WriteFile(filepath.Join(kdir, "cmdline"), []byte("console=ttyS0"), 0o644)
	out, _, err = vmctlErr(append(g, "image", "import", "lab", kdir)...)
	if err != nil || !strings.Contains(out, "Format:    kernel") || (*seen)[2] != "format=kernel 100-continue" {
		t.Fatalf("kernel import: %v %q\n%s", err, *seen, out)
	}
	if _, _, err := vmctlErr(append(g, "image", "import", "lab", kdir, "--sha256", hex.EncodeToString(sum[:]))...); err == nil || !strings.Contains(err.Error(), "--sha256 checks an image file") {
		t.Errorf("--sha256 with a directory: %v", err)
	}
	ar, err := kernelArchive(kdir)
	if err != nil {
		t.Fatal(err)
	}
	defer os.Remove(ar)
	f, _ := os.Open(ar)
	tr := tar.NewReader(f)
	var names []string
	for h, err := tr.Next(); err == nil; h, err = tr.Next() {
		names = append(names, h.Name)
	}
	f.Close()
	if strings.Join(names, " ") != "kernel cmdline" {
		t.Fatalf("archive holds %v", names)
	}
	again, _ := kernelArchive(kdir)
	defer os.Remove(again)
	if a, b := readAll(t, ar), readAll(t, again); !bytes.Equal(a, b) {
		t.Fatal("the same files made two archives that differ")
	}

	bad, _ := imageAPI(t, true)
	if _, _, err := vmctlErr(append(bad, "image", "import", "deb", raw)...); err == nil || !strings.Contains(err.Error(), "vmctl image delete deb") {
		t.Fatalf("import received with other bytes: %v", err)
	}
}

// TestDiskFlags: --disk takes the first disk's size and the extra ones', and vm
// delete --keep-disks asks to keep them.
func TestDiskFlags(t *testing.T) {
	var deletes []string
	g, created := createAPI(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.Method != "DELETE" {
			return false
		}
		deletes = append(deletes, r.URL.String())
		w.WriteHeader(http.StatusAccepted)
		return true
	})
	if _, err := vmctl(append(g, "vm", "create", "web", "--image", "deb", "--disk", "20GiB, 50GiB", "--no-wait")...); err != nil {
		t.Fatal(err)
	}
	if len(*created) != 1 || (*created)[0].DiskBytes != 20<<30 || len((*created)[0].ExtraDiskBytes) != 1 || (*created)[0].ExtraDiskBytes[0] != 50<<30 {
		t.Fatalf("create sent %+v", *created)
	}
	for _, d := range []string{"20G,0", "20G,lots"} {
		if _, err := vmctl(append(g, "vm", "create", "web", "--disk", d, "--no-wait")...); err == nil || !strings.Contains(err.Error(), "--disk") {
			t.Errorf("--disk %s: %v", d, err)
		}
	}
	if _, err := vmctl(append(g, "vm", "delete", "web", "--keep-disks", "--no-wait")...); err != nil {
		t.Fatal(err)
	}
	if _, err := vmctl(append(g, "vm", "delete", "web", "--no-wait")...); err != nil {
		t.Fatal(err)
	}
	if strings.Join(deletes, " ") != "/v1/guests/web?keep_disks=true /v1/guests/web" {
		t.Fatalf("deletes %v", deletes)
	}
	if len(*created) != 1 {
		t.Fatalf("a bad --disk was sent: %+v", *created)
	}
}

func readAll(t *testing.T, file string) []byte {
	t.Helper()
	b, err := os.ReadFile(file)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// TestISOFlags: vm create --iso sends the install media (the disk then empty, of the
// default size, as the master makes it), --iso beside --image is refused before
// anything is sent, vm eject asks the guest's eject, and vm show names the ISO.
func TestISOFlags(t *testing.T) {
	var ejects []string
	g, created := createAPI(t, func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.Method == "POST" && r.URL.Path == "/v1/guests/inst/eject":
			ejects = append(ejects, r.URL.Path)
			json.NewEncoder(w).Encode(api.Guest{Name: "inst", State: api.GuestRunning})
		case r.Method == "GET" && r.URL.Path == "/v1/guests/inst":
			json.NewEncoder(w).Encode(api.Guest{Name: "inst", State: api.GuestRunning, ISO: "dfly", DiskBytes: 20 << 30})
		default:
			return false
		}
		return true
	})
	if _, err := vmctl(append(g, "vm", "create", "inst", "--iso", "dfly", "--no-wait")...); err != nil {
		t.Fatal(err)
	}
	if len(*created) != 1 || (*created)[0].ISO != "dfly" || (*created)[0].Image != "" {
		t.Fatalf("create sent %+v", *created)
	}
	_, err := vmctl(append(g, "vm", "create", "inst", "--iso", "dfly", "--image", "deb", "--no-wait")...)
	if err == nil || !strings.Contains(err.Error(), "--iso: ") || !strings.Contains(err.Error(), "not both") || len(*created) != 1 {
		t.Fatalf("--iso with --image: %v (sent %d)", err, len(*created))
	}
	if _, err := vmctl(append(g, "vm", "eject", "inst")...); err != nil || len(ejects) != 1 {
		t.Fatalf("eject: %v, %v", err, ejects)
	}
	out, err := vmctl(append(g, "vm", "show", "inst")...)
	if err != nil || !strings.Contains(out, "ISO:") || !strings.Contains(out, "dfly (in its cdrom, booted first; vmctl vm eject inst takes it out)") {
		t.Fatalf("show: %v\n%s", err, out)
	}
}

// TestVNCFlags: vm create --vnc asks for a display; vm vnc prints where it is and its
// password; vm show prints both to a token that may read the password, and to one
// that may not (403), the display and how to get it.
func TestVNCFlags(t *testing.T) {
	forbid := false
	g, created := createAPI(t, func(w http.ResponseWriter, r *http.Request) bool {
		switch {
		case r.URL.Path == "/v1/guests/gui/vnc" && forbid:
			w.WriteHeader(http.StatusForbidden)
			json.NewEncoder(w).Encode(api.Error{Error: "token viewer has scope read; this needs operator"})
		case r.URL.Path == "/v1/guests/gui/vnc":
			json.NewEncoder(w).Encode(api.VNC{Guest: "gui", Node: "n1", Display: "10.0.0.5:5900", Password: "abcd2345"})
		case r.URL.Path == "/v1/guests/gui":
			json.NewEncoder(w).Encode(api.Guest{Name: "gui", State: api.GuestRunning, VNC: &api.GuestVNC{Display: "10.0.0.5:5900"}})
		default:
			return false
		}
		return true
	})
	if _, err := vmctl(append(g, "vm", "create", "gui", "--vnc", "--no-wait")...); err != nil || len(*created) != 1 || !(*created)[0].VNC {
		t.Fatalf("create: %v, sent %+v", err, *created)
	}
	out, err := vmctl(append(g, "vm", "vnc", "gui")...)
	if err != nil || !strings.Contains(out, "10.0.0.5:5900") || !strings.Contains(out, "abcd2345") {
		t.Fatalf("vnc: %v\n%s", err, out)
	}
	out, err = vmctl(append(g, "vm", "show", "gui")...)
	if err != nil || !strings.Contains(out, "VNC:") || !strings.Contains(out, "10.0.0.5:5900, password abcd2345") {
		t.Fatalf("show: %v\n%s", err, out)
	}
	forbid = true
	out, err = vmctl(append(g, "vm", "show", "gui")...)
	if err != nil || strings.Contains(out, "abcd2345") || !strings.Contains(out, "10.0.0.5:5900; its password is shown to operator tokens (vmctl vm vnc gui)") {
		t.Fatalf("show with a read token: %v\n%s", err, out)
	}
}

// TestCloudInitFlags: --cloud-init sends the keys of every --ssh-key file (comments
// and blank lines left out) and the --user-data file; a private key, a key file with
// no key, a missing file, --ssh-key or --user-data without --cloud-init, and a
// DragonFly guest are refused before anything is sent, naming the flag; vm show
// summarises the seed.
func TestCloudInitFlags(t *testing.T) {
	g, created := createAPI(t, func(w http.ResponseWriter, r *http.Request) bool {
		if r.URL.Path != "/v1/guests/web" {
			return false
		}
		json.NewEncoder(w).Encode(api.Guest{Name: "web", State: api.GuestRunning, CloudInit: &api.GuestCloudInit{SSHKeys: []string{"k"}, UserDataBytes: 2048}})
		return true
	})
	dir := t.TempDir()
	keys := filepath.Join(dir, "keys.pub")
	os.WriteFile(keys, []byte("# mine\nssh-ed25519 AAAAC3Nz a@h\n\nssh-rsa AAAAB3Nz b@h\n"), 0o644)
	more := filepath.Join(dir, "id_ed25519.pub")
	os.WriteFile(more, []byte("ssh-ed25519 AAAAC3Nz c@h\n"), 0o644)
	user := filepath.Join(dir, "user-data")
	os.WriteFile(user, []byte("#cloud-config\npackages: [nginx]\n"), 0o644)
	private := filepath.Join(dir, "id_ed25519")
	os.WriteFile(private, []byte("-----BEGIN OPENSSH PRIVATE KEY-----\n"), 0o600)
	empty := filepath.Join(dir, "empty.pub")
	os.WriteFile(empty, []byte("# nothing\n"), 0o644)
	if _, err := vmctl(append(g, "vm", "create", "web", "--os", "linux", "--cloud-init", "--ssh-key", keys, "--ssh-key", more, "--user-data", user, "--no-wait")...); err != nil {
		t.Fatal(err)
	}
	if len(*created) != 1 || (*created)[0].CloudInit == nil || strings.Join((*created)[0].CloudInit.SSHKeys, "|") != "ssh-ed25519 AAAAC3Nz a@h|ssh-rsa AAAAB3Nz b@h|ssh-ed25519 AAAAC3Nz c@h" ||
		(*created)[0].CloudInit.UserData != "#cloud-config\npackages: [nginx]\n" {
		t.Fatalf("create sent %+v", *created)
	}
	for _, b := range []struct {
		args []string
		want string
	}{
		{[]string{"--os", "linux", "--cloud-init", "--ssh-key", private}, "this is a private key: give the public one"},
		{[]string{"--os", "linux", "--cloud-init", "--ssh-key", empty}, "holds no key"},
		{[]string{"--os", "linux", "--cloud-init", "--user-data", filepath.Join(dir, "nope")}, "--user-data: open"},
		{[]string{"--os", "linux", "--ssh-key", more}, "--ssh-key goes in a cloud-init seed: give --cloud-init too"},
		{[]string{"--os", "linux", "--user-data", user}, "give --cloud-init too"},
		{[]string{"--cloud-init"}, "--cloud-init: os dragonfly: DragonFly BSD has no cloud-init"},
		{[]string{"--os", "linux", "--cloud-init", "--ssh-key", user}, "--ssh-key: "},
	} {
		_, err := vmctl(append(append(g, "vm", "create", "x", "--no-wait"), b.args...)...)
		if err == nil || !strings.Contains(err.Error(), b.want) {
			t.Errorf("%v: %v, want %q", b.args, err, b.want)
		}
	}
	if len(*created) != 1 {
		t.Fatalf("refused creates were sent: %+v", (*created)[1:])
	}
	out, err := vmctl(append(g, "vm", "show", "web")...)
	if err != nil || !strings.Contains(out, "NoCloud seed: hostname web, addresses of its NICs, 1 SSH keys, user data of 2KiB") {
		t.Fatalf("show: %v\n%s", err, out)
	}
}

// createAPI answers POST /v1/guests as the master does (the guest running), keeping
// every body, and hands other requests to other, which says whether it answered them
// (else 404).
func createAPI(t *testing.T, other func(http.ResponseWriter, *http.Request) bool) ([]string, *[]api.CreateGuest) {
	t.Helper()
	var bodies []api.CreateGuest
	g := tlsAPI(t, func(w http.ResponseWriter, r *http.Request) {
		if r.Method == "POST" && r.URL.Path == "/v1/guests" {
			var req api.CreateGuest
			json.NewDecoder(r.Body).Decode(&req)
			bodies = append(bodies, req)
			w.WriteHeader(http.StatusCreated)
			json.NewEncoder(w).Encode(api.Guest{Name: req.Name, State: api.GuestRunning, ISO: req.ISO})
			return
		}
		if !other(w, r) {
			w.WriteHeader(http.StatusNotFound)
			json.NewEncoder(w).Encode(api.Error{Error: "not found"})
		}
	})
	return g, &bodies
}

// TestImageImportURL: a URL is fetched by vmctl (on loopback here) and imported as
// the file it fetched, its checksum checked; a URL that answers an error, a body cut
// short or a kernel format is refused with nothing sent to the cluster.
func TestImageImportURL(t *testing.T) {
	body := append([]byte{'Q', 'F', 'I', 0xfb}, bytes.Repeat([]byte{3}, 70000)...)
	sum := sha256.Sum256(body)
	files := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.URL.Path {
		case "/deb.qcow2":
			w.Header().Set("Content-Length", strconv.Itoa(len(body)))
			w.Write(body)
		case "/chunked.qcow2":
			w.Write(body) // no length: sent in chunks
		case "/short.qcow2":
			w.Header().Set("Content-Length", "90000")
			w.Write(body) // the connection ends 20 000 bytes early
		default:
			http.NotFound(w, r)
		}
	}))
	defer files.Close()
	g, seen := imageAPI(t, false)

	out, errOut, err := vmctlErr(append(g, "image", "import", "deb", files.URL+"/deb.qcow2", "--sha256", hex.EncodeToString(sum[:]))...)
	if err != nil || !strings.Contains(out, "Format:    qcow2") || !strings.Contains(out, hex.EncodeToString(sum[:])) {
		t.Fatalf("import from a URL: %v\n%s", err, out)
	}
	if !strings.Contains(errOut, "downloading "+files.URL+"/deb.qcow2: 68KiB of 68KiB (100%)") {
		t.Errorf("download progress: %q", errOut)
	}
	if _, errOut, err = vmctlErr(append(g, "image", "import", "deb1", files.URL+"/chunked.qcow2")...); err != nil || !strings.Contains(errOut, "downloading "+files.URL+"/chunked.qcow2: 68KiB, ") {
		t.Fatalf("import from a URL of unknown length: %v\n%s", err, errOut)
	}
	for _, c := range []struct {
		args []string
		want string
	}{
		{[]string{"image", "import", "deb2", files.URL + "/missing.qcow2"}, "URL: GET " + files.URL + "/missing.qcow2 answered 404 Not Found"},
		{[]string{"image", "import", "deb2", files.URL + "/short.qcow2"}, "URL: GET " + files.URL + "/short.qcow2"},
		{[]string{"image", "import", "deb2", files.URL + "/deb.qcow2", "--format", "kernel"}, "a kernel image is a directory, not a URL"},
		{[]string{"image", "import", "deb2", "http://"}, "is not a URL"},
	} {
		if _, _, err := vmctlErr(append(g, c.args...)...); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("%v: %v, want %q", c.args, err, c.want)
		}
	}
	if want := "format=qcow2&sha256=" + hex.EncodeToString(sum[:]) + " 100-continue|format=qcow2 100-continue"; strings.Join(*seen, "|") != want {
		t.Errorf("imports sent %q, want only %q", *seen, want)
	}
	if left, _ := filepath.Glob(filepath.Join(os.TempDir(), "vmctl-download-*")); len(left) > 0 {
		t.Errorf("downloads left behind: %v", left)
	}
}

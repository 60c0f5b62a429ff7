package main

import (
	"bytes"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"hash"
	"io"
	"net/http"
	"net/url"
	"os"
	"strings"
	"sync"
	"time"

	"github.com/dvmproject/dvm/internal/api"
	"github.com/dvmproject/dvm/internal/units"
	"github.com/urfave/cli/v2"
)

// imageCommand is `vmctl image`: images guests' disks are made from.
func imageCommand() *cli.Command {
	return &cli.Command{
		Name:  "image",
		Usage: "images that guests' disks are made from (vmctl vm create … --image NAME)",
		Subcommands: []*cli.Command{
			{
				Name:      "import",
				Usage:     "upload an image file to the cluster",
				ArgsUsage: "NAME FILE|DIR|URL",
				Description: "Examples:\n" +
					"  vmctl image import debian-12 debian-12-generic-amd64.qcow2 --sha256 SUM\n" +
					"  vmctl image import dfly dfly-x86_64-6.4.0_REL.img --format raw\n" +
					"  vmctl image import lab2 /var/lib/dvm-lab/shared/images/lab   # a kernel image\n" +
					"  vmctl image import deb12 https://cloud.debian.org/images/cloud/bookworm/latest/debian-12-genericcloud-amd64.qcow2\n\n" +
					"A URL (http or https) is fetched by vmctl into a temporary file first, with\n" +
					"progress, then imported as that file: the cluster itself fetches nothing.\n" +
					"The file is streamed to the master, which writes it to the images directory\n" +
					"(images_dir, shared by every node) and computes its SHA-256 on the way; with\n" +
					"--sha256 the image is kept only if the sums match. It is usable (ready) once it is\n" +
					"whole, verified and synced; whatever fails, nothing is kept. Progress goes to\n" +
					"stderr. Without --format the format is read from the file: qcow2 by its header,\n" +
					"iso by its volume descriptor, raw otherwise. A directory is a kernel image, booted\n" +
					"directly: its files kernel, initrd and cmdline are sent as one archive.",
				Flags: []cli.Flag{
					&cli.StringFlag{Name: "format", Usage: "the file's format: qcow2, raw or iso (default: read from the file); kernel for a directory"},
					&cli.StringFlag{Name: "sha256", Usage: "the file's SHA-256 `SUM` (64 hex digits, as sha256sum prints it): the import fails unless it matches"},
				},
				Action: imageImport,
			},
			{Name: "ls", Aliases: []string{"list"}, Usage: "list images and the guests made from them",
				Description: "Examples:\n  vmctl image ls\n  vmctl -o json image ls", Action: imageList},
			{Name: "show", Usage: "show one image", ArgsUsage: "NAME",
				Description: "Example:\n  vmctl image show debian-12", Action: imageShow},
			{Name: "delete", Aliases: []string{"rm"}, Usage: "delete an image no guest uses", ArgsUsage: "NAME",
				Description: "Refused, naming them, while guests made from it exist.\n\nExample:\n  vmctl image delete debian-12",
				Action:      deleteAction("image", "/v1/images/")},
		},
	}
}

func imageImport(c *cli.Context) error {
	if c.NArg() != 2 {
		return errors.New("give an image name and a file, a URL or a kernel image's directory: vmctl image import NAME FILE|URL")
	}
	name, file := c.Args().Get(0), c.Args().Get(1)
	if fe := api.ValidateImageName("name", name); fe != nil {
		return fmt.Errorf("NAME: %s", fe.Msg)
	}
	sum := c.String("sha256")
	if sum != "" {
		s, fe := api.NormalizeSHA256(sum)
		if fe != nil {
			return fmt.Errorf("--sha256: %s", fe.Msg)
		}
		sum = s
	}
	format := c.String("format")
	shown := file // what the messages name: the URL, not the file it was fetched into
	if isURL(file) {
		if format == api.ImageKernel {
			return fmt.Errorf("--format kernel: a kernel image is a directory, not a URL")
		}
		tmp, err := download(c, file)
		if err != nil {
			return fmt.Errorf("URL: %w", err)
		}
		defer os.Remove(tmp)
		file = tmp
	}
	if st, err := os.Stat(file); err == nil && st.IsDir() {
		if format != "" && format != api.ImageKernel {
			return fmt.Errorf("FILE: %s is a directory: a %s image is one file; a directory is a kernel image (kernel, initrd, cmdline)", file, format)
		}
		if sum != "" {
			return fmt.Errorf("--sha256 checks an image file; a kernel directory is sent as an archive vmctl makes, whose SHA-256 the import shows")
		}
		if file, err = kernelArchive(file); err != nil {
			return fmt.Errorf("FILE: %w", err)
		}
		defer os.Remove(file)
		format = api.ImageKernel
	} else if format == api.ImageKernel {
		return fmt.Errorf("--format kernel: give the directory that holds kernel, initrd and cmdline, not a file")
	}
	f, err := os.Open(file)
	if err != nil {
		return fmt.Errorf("FILE: %w", err)
	}
	defer f.Close()
	st, err := f.Stat()
	switch {
	case err != nil:
		return fmt.Errorf("FILE: %w", err)
	case !st.Mode().IsRegular():
		return fmt.Errorf("FILE: %s is not a regular file", shown)
	case st.Size() == 0:
		return fmt.Errorf("FILE: %s is empty", shown)
	case st.Size() > api.MaxImageBytes:
		return fmt.Errorf("FILE: %s is %s, larger than the largest image, %s", shown, units.FormatBytes(st.Size()), units.FormatBytes(api.MaxImageBytes))
	}
	if format == "" {
		if format, err = sniffFormat(f); err != nil {
			return fmt.Errorf("FILE: %w", err)
		}
	}
	if fe := api.ValidateImageFormat(format); fe != nil {
		return fmt.Errorf("--format: %s", fe.Msg)
	}
	cl, err := client(c)
	if err != nil {
		return err
	}
	q := url.Values{api.ImportFormat: {format}}
	if sum != "" {
		q.Set(api.ImportSHA256, sum)
	}
	body := &sending{f: f, h: sha256.New()}
	stop := showProgress(c.App.ErrWriter, "importing image "+name, body, st.Size())
	var im api.Image
	err = cl.Upload(c.Context, "PUT", "/v1/images/"+url.PathEscape(name)+"?"+q.Encode(), body, st.Size(), &im)
	stop(err == nil)
	if err != nil {
		var se *api.StatusError
		if errors.As(err, &se) && (se.Field == api.ImportFormat || se.Field == api.ImportSHA256) {
			return fmt.Errorf("--%s: %s", se.Field, strings.TrimPrefix(se.Msg, se.Field+": "))
		}
		return err
	}
	// The master checked what it received against --sha256; this checks it against
	// what was sent when no sum was given.
	if sent := body.sum(); im.SHA256 != sent {
		return fmt.Errorf("image %s was received with SHA-256 %s, but %s has %s: delete it (vmctl image delete %s) and import it again", name, im.SHA256, shown, sent, name)
	}
	if jsonOut(c) {
		return printJSON(c, im)
	}
	return showImage(c, im)
}

// isURL says whether an import's FILE is a URL to fetch.
func isURL(s string) bool {
	return strings.HasPrefix(s, "http://") || strings.HasPrefix(s, "https://")
}

// download fetches an image by its URL into a temporary file, which it returns (the
// caller removes it), showing progress as an upload does. vmctl fetches, not the
// cluster: the management nodes reach out to no address an operator names, and the
// upload that follows can start over at another management node from the file.
func download(c *cli.Context, raw string) (string, error) {
	u, err := url.Parse(raw)
	if err != nil || u.Host == "" {
		return "", fmt.Errorf("%q is not a URL such as https://cloud.debian.org/images/…/debian-12-genericcloud-amd64.qcow2", raw)
	}
	req, err := http.NewRequestWithContext(c.Context, http.MethodGet, u.String(), nil)
	if err != nil {
		return "", err
	}
	resp, err := http.DefaultClient.Do(req)
	if err != nil {
		return "", err
	}
	defer resp.Body.Close()
	if resp.StatusCode != http.StatusOK {
		return "", fmt.Errorf("GET %s answered %s", u.Redacted(), resp.Status)
	}
	if resp.ContentLength > api.MaxImageBytes {
		return "", fmt.Errorf("%s is %s, larger than the largest image, %s", u.Redacted(), units.FormatBytes(resp.ContentLength), units.FormatBytes(api.MaxImageBytes))
	}
	out, fail, err := tempFile("vmctl-download-*")
	if err != nil {
		return "", err
	}
	got := &sending{h: sha256.New()}
	stop := showProgress(c.App.ErrWriter, "downloading "+u.Redacted(), got, resp.ContentLength)
	// One byte past the limit tells an image too large from one just at it.
	n, err := io.Copy(out, io.TeeReader(io.LimitReader(resp.Body, api.MaxImageBytes+1), got))
	stop(err == nil)
	switch {
	case err != nil:
		return fail(fmt.Errorf("GET %s: %w", u.Redacted(), err))
	case n > api.MaxImageBytes:
		return fail(fmt.Errorf("%s is larger than the largest image, %s", u.Redacted(), units.FormatBytes(api.MaxImageBytes)))
	case resp.ContentLength >= 0 && n != resp.ContentLength:
		return fail(fmt.Errorf("GET %s ended after %d of %d bytes", u.Redacted(), n, resp.ContentLength))
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	return out.Name(), nil
}

// tempFile makes a temporary file for an import to send, and the way to give up on
// it: fail closes and removes it and returns err.
func tempFile(pattern string) (*os.File, func(error) (string, error), error) {
	out, err := os.CreateTemp("", pattern)
	if err != nil {
		return nil, nil, err
	}
	return out, func(err error) (string, error) {
		out.Close()
		os.Remove(out.Name())
		return "", err
	}, nil
}

// kernelArchive writes the kernel image in dir as the archive an import sends
// (api.WriteKernelArchive) to a temporary file, which it returns.
func kernelArchive(dir string) (string, error) {
	out, fail, err := tempFile("vmctl-kernel-*.tar")
	if err != nil {
		return "", err
	}
	if err := api.WriteKernelArchive(out, dir); err != nil {
		return fail(err)
	}
	if err := out.Close(); err != nil {
		return fail(err)
	}
	return out.Name(), nil
}

// sniffFormat reads an image's format from its first bytes, as the master checks it.
func sniffFormat(f *os.File) (string, error) {
	head := make([]byte, 0x8006)
	n, err := io.ReadFull(f, head)
	if err != nil && !errors.Is(err, io.ErrUnexpectedEOF) {
		return "", err
	}
	head = head[:n]
	if _, err := f.Seek(0, io.SeekStart); err != nil {
		return "", err
	}
	switch {
	case bytes.HasPrefix(head, []byte{'Q', 'F', 'I', 0xfb}):
		return api.ImageQCOW2, nil
	case len(head) >= 0x8006 && string(head[0x8001:0x8006]) == "CD001":
		return api.ImageISO, nil
	}
	return api.ImageRaw, nil
}

// sending is an image file as it is sent: it counts the bytes read and hashes them,
// from the start again when the upload starts over (at another management node).
type sending struct {
	f  *os.File
	mu sync.Mutex
	h  hash.Hash
	n  int64
}

func (s *sending) Read(p []byte) (int, error) {
	n, err := s.f.Read(p)
	s.mu.Lock()
	s.h.Write(p[:n])
	s.n += int64(n)
	s.mu.Unlock()
	return n, err
}

// Write counts and hashes p as if it were read: a download's progress.
func (s *sending) Write(p []byte) (int, error) {
	s.mu.Lock()
	s.h.Write(p)
	s.n += int64(len(p))
	s.mu.Unlock()
	return len(p), nil
}

func (s *sending) Seek(off int64, whence int) (int64, error) {
	pos, err := s.f.Seek(off, whence)
	if err == nil && pos == 0 {
		s.mu.Lock()
		s.h.Reset()
		s.n = 0
		s.mu.Unlock()
	}
	return pos, err
}

func (s *sending) sent() int64 {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.n
}

func (s *sending) sum() string {
	s.mu.Lock()
	defer s.mu.Unlock()
	return hex.EncodeToString(s.h.Sum(nil))
}

// showProgress writes how much of size body has sent, with the rate: on a terminal
// one line redrawn twice a second, elsewhere a line every 5 seconds. The function it
// returns stops it and ends the line.
func showProgress(w io.Writer, what string, body *sending, size int64) func(ok bool) {
	every, redraw := 5*time.Second, false
	if f, ok := w.(*os.File); ok {
		if st, err := f.Stat(); err == nil && st.Mode()&os.ModeCharDevice != 0 {
			every, redraw = 500*time.Millisecond, true
		}
	}
	start := time.Now()
	line := func() string {
		n := body.sent()
		rate := float64(n) / max(time.Since(start).Seconds(), 0.001)
		if size <= 0 { // a download of unknown length
			return fmt.Sprintf("%s: %s, %s/s", what, units.FormatBytes(n), units.FormatBytes(int64(rate)))
		}
		return fmt.Sprintf("%s: %s of %s (%d%%), %s/s", what, units.FormatBytes(n), units.FormatBytes(size), n*100/max(size, 1), units.FormatBytes(int64(rate)))
	}
	done := make(chan struct{})
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			select {
			case <-done:
				return
			case <-t.C:
				if redraw {
					fmt.Fprintf(w, "\r\033[K%s", line())
				} else {
					fmt.Fprintln(w, line())
				}
			}
		}
	}()
	return func(ok bool) {
		close(done)
		wg.Wait()
		end := ""
		if !ok {
			end = " (failed)"
		}
		if redraw {
			fmt.Fprintf(w, "\r\033[K%s%s\n", line(), end)
		} else if ok {
			fmt.Fprintln(w, line())
		}
	}
}

const imageHeader = "NAME\tFORMAT\tSTATE\tSIZE\tVIRTUAL\tGUESTS"

func imageRow(im api.Image) []string {
	return []string{im.Name, im.Format, im.State, units.FormatBytes(im.SizeBytes), virtualSize(im), orDash(strings.Join(im.UsedBy, ","))}
}

// virtualSize is the disk an image holds; a kernel image holds none.
func virtualSize(im api.Image) string {
	if im.VirtualBytes == 0 {
		return "-"
	}
	return units.FormatBytes(im.VirtualBytes)
}

func imageList(c *cli.Context) error { return list(c, "/v1/images", imageHeader, imageRow) }

func imageShow(c *cli.Context) error {
	name, err := oneArg(c, "name")
	if err != nil {
		return err
	}
	return show(c, "/v1/images/"+url.PathEscape(name), func(_ *api.Client, im api.Image) error { return showImage(c, im) })
}

func showImage(c *cli.Context, im api.Image) error {
	w := c.App.Writer
	p := func(k, v string) {
		if v != "" {
			fmt.Fprintf(w, "%-10s %s\n", k+":", v)
		}
	}
	p("Name", im.Name)
	p("Format", im.Format)
	p("State", im.State)
	p("Size", units.FormatBytes(im.SizeBytes))
	p("Virtual", strings.TrimPrefix(virtualSize(im), "-"))
	p("SHA-256", im.SHA256)
	p("Guests", strings.Join(im.UsedBy, ", "))
	p("Created", im.CreatedAt.Format(time.RFC3339))
	p("By", im.CreatedBy)
	return nil
}

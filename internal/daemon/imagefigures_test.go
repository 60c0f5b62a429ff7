package daemon

import (
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"testing"
	"time"

	"github.com/dvmproject/dvm/internal/api"
)

// TestImageFigures prints issue 13's figures (scripts/bench-images; DVM_IMAGE_BENCH=1,
// DVM_IMAGE_MIB sets the image's size, 1024 MiB by default): the import of a raw
// image of random bytes over the dev cluster's TLS API (streamed, its SHA-256 checked,
// synced and renamed into the shared images directory) against `cp` of the same file
// on the same filesystem followed by a sync, in MiB/s; and the time from `vm create`
// of a 20 GiB guest from that image to the guest running (its disk a qcow2 overlay on
// the image, made by qemu-img).
func TestImageFigures(t *testing.T) {
	if os.Getenv("DVM_IMAGE_BENCH") != "1" {
		t.Skip("prints figures: run with DVM_IMAGE_BENCH=1 (scripts/bench-images)")
	}
	mib := 1024
	if s := os.Getenv("DVM_IMAGE_MIB"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 1 {
			t.Fatalf("DVM_IMAGE_MIB=%q: give a size in MiB", s)
		}
		mib = n
	}
	dir := t.TempDir()
	src := filepath.Join(dir, "src.raw")
	f, err := os.Create(src)
	if err != nil {
		t.Fatal(err)
	}
	rnd, err := os.Open("/dev/urandom")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := io.CopyN(f, rnd, int64(mib)<<20); err != nil {
		t.Fatal(err)
	}
	rnd.Close()
	if err := f.Sync(); err != nil {
		t.Fatal(err)
	}
	f.Close()
	rate := func(d time.Duration) float64 { return float64(mib) / d.Seconds() }

	// The yardstick: cp to the same filesystem, then sync, as an operator copies an
	// image onto shared storage by hand.
	start := time.Now()
	if out, err := exec.Command("cp", src, filepath.Join(dir, "copy.raw")).CombinedOutput(); err != nil {
		t.Fatalf("cp: %v %s", err, out)
	}
	if out, err := exec.Command("sync", "-f", filepath.Join(dir, "copy.raw")).CombinedOutput(); err != nil {
		t.Fatalf("sync: %v %s", err, out)
	}
	cp := time.Since(start)

	cluster := filepath.Join(dir, "cluster")
	_, c := startDev(t, cluster, 1)
	ctx := context.Background()
	in, err := os.Open(src)
	if err != nil {
		t.Fatal(err)
	}
	defer in.Close()
	var im api.Image
	start = time.Now()
	if err := c.Upload(ctx, "PUT", "/v1/images/bench?format=raw", in, int64(mib)<<20, &im); err != nil {
		t.Fatal(err)
	}
	imp := time.Since(start)
	if im.State != api.ImageReady {
		t.Fatalf("imported %+v", im)
	}

	start = time.Now()
	if err := c.Do(ctx, "POST", "/v1/guests", api.CreateGuest{Name: "clone", OS: "linux", CPUs: 1, MemoryBytes: 256 << 20,
		Image: "bench", DiskBytes: 20 << 30}, nil); err != nil {
		t.Fatal(err)
	}
	waitFor(t, "clone running", func() bool { return guest(t, c, "clone").State == api.GuestRunning })
	clone := time.Since(start)

	t.Logf("FIGURE image import of %d MiB: %.0f MiB/s over the API (%.2f s), against %.0f MiB/s for cp + sync (%.2f s): %.2f x",
		mib, rate(imp), imp.Seconds(), rate(cp), cp.Seconds(), rate(imp)/rate(cp))
	t.Logf("FIGURE a 20 GiB guest cloned from the image: %s from vm create to running (test driver; the disk a qcow2 overlay)",
		fmt.Sprintf("%.0f ms", clone.Seconds()*1000))
}

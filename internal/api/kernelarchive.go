package api

import (
	"archive/tar"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"time"
)

// WriteKernelArchive writes the files of a kernel image in dir (kernel, and initrd
// and cmdline when there) to w as the tar archive an import of format kernel sends.
// The archive is the same for the same files (no times, owners or modes of their
// own), so its SHA-256 is too.
func WriteKernelArchive(w io.Writer, dir string) error {
	tw := tar.NewWriter(w)
	for _, name := range []string{"kernel", "initrd", "cmdline"} {
		f, err := os.Open(filepath.Join(dir, name))
		if errors.Is(err, os.ErrNotExist) && name != "kernel" {
			continue
		}
		if err != nil {
			return fmt.Errorf("a kernel image directory holds kernel, and optionally initrd and cmdline: %w", err)
		}
		st, err := f.Stat()
		if err == nil && !st.Mode().IsRegular() {
			err = fmt.Errorf("%s is not a regular file", f.Name())
		}
		if err == nil {
			err = tw.WriteHeader(&tar.Header{Name: name, Mode: 0o644, Size: st.Size(), ModTime: time.Unix(0, 0), Format: tar.FormatUSTAR})
		}
		if err == nil {
			_, err = io.Copy(tw, f)
		}
		f.Close()
		if err != nil {
			return err
		}
	}
	return tw.Close()
}

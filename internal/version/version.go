// Package version holds dvm's version, set at build time with
// -ldflags "-X github.com/dvmproject/dvm/internal/version.Version=…".
package version

// Version of this build.
var Version = "0.1.0-dev"

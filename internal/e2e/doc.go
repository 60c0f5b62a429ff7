// Package e2e holds dvm's end-to-end tests: real libvirtd nodes in the namespace lab
// (internal/lab), driven through vmctl and checked with libvirt against each node, as an
// operator would. They need root and the lab's packages; with CI=true a missing part is
// a failure, not a skip.
package e2e

package api

import (
	"slices"
	"strings"
	"unicode/utf8"
)

// Limits of a cloud-init seed: the whole create body is at most 64 KiB.
const (
	MaxUserData = 32 << 10
	MaxSSHKeys  = 16
	MaxSSHKey   = 2 << 10 // an 8192-bit RSA public key is about 1.4 KiB
)

// sshKeyTypes are the key types of OpenSSH's authorized_keys lines.
var sshKeyTypes = []string{"ssh-ed25519", "ssh-rsa", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384", "ecdsa-sha2-nistp521",
	"sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com", "ssh-dss"}

// userDataStarts are the first lines cloud-init knows user data by.
var userDataStarts = []string{"#cloud-config", "#!", "#include", "#cloud-boothook", "#part-handler", "#cloud-config-archive",
	"## template: jinja", "Content-Type: multipart/"}

// Validate checks a seed's SSH keys (one authorized_keys line each: TYPE KEY
// [COMMENT]) and user data (text that cloud-init knows by its first line).
func (ci *CloudInit) Validate() *FieldError {
	if len(ci.SSHKeys) > MaxSSHKeys {
		return fieldErr("cloud_init.ssh_keys", "%d keys: give at most %d", len(ci.SSHKeys), MaxSSHKeys)
	}
	for _, k := range ci.SSHKeys {
		f := strings.Fields(k)
		switch {
		case len(k) > MaxSSHKey:
			return fieldErr("cloud_init.ssh_keys", "a key of %d bytes: an SSH public key is at most %d", len(k), MaxSSHKey)
		case strings.ContainsAny(k, "\r\n") || !utf8.ValidString(k):
			return fieldErr("cloud_init.ssh_keys", "a key spans lines or is not text: give one public key a line, as in id_ed25519.pub")
		case len(f) < 2 || !slices.Contains(sshKeyTypes, f[0]):
			return fieldErr("cloud_init.ssh_keys", "%q is not an SSH public key: give a line such as \"ssh-ed25519 AAAAC3… you@host\" (the .pub file, never the private key)", short(k))
		}
	}
	u := ci.UserData
	switch {
	case u == "":
	case len(u) > MaxUserData:
		return fieldErr("cloud_init.user_data", "%d bytes: user data is at most %d here", len(u), MaxUserData)
	case !utf8.ValidString(u):
		return fieldErr("cloud_init.user_data", "is not UTF-8 text (compressed user data is not taken): give it as text")
	case !slices.ContainsFunc(userDataStarts, func(p string) bool { return strings.HasPrefix(u, p) }):
		return fieldErr("cloud_init.user_data", "starts with %q, which cloud-init does not know: begin it with #cloud-config, or #! for a script", short(u))
	}
	return nil
}

// short is the start of s, for a message.
func short(s string) string {
	line, _, _ := strings.Cut(s, "\n")
	if r := []rune(line); len(r) > 40 {
		return string(r[:40]) + "…"
	}
	return line
}

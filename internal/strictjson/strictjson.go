// Package strictjson decodes JSON that must hold nothing its reader does not know:
// what two builds of dvm exchange (log entries, snapshots, assignments). A field a
// reader does not know was written by a newer build, and skipping it would lose what
// it says.
package strictjson

import (
	"bytes"
	"encoding/json"
	"errors"
	"strconv"
	"strings"
)

// Decode decodes data into v, refusing fields v does not have and data after the
// value.
func Decode(data []byte, v any) error {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return err
	}
	if dec.More() {
		return errors.New("trailing data after the JSON value")
	}
	return nil
}

// UnknownField reads the field's name out of Decode's refusal of it.
func UnknownField(err error) (string, bool) {
	if err == nil {
		return "", false
	}
	rest, ok := strings.CutPrefix(err.Error(), "json: unknown field ")
	if !ok {
		return "", false
	}
	if f, uerr := strconv.Unquote(rest); uerr == nil {
		return f, true
	}
	return rest, true
}

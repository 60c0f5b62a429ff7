package store

import "errors"

func isNotLeader(err error) bool { return errors.Is(err, ErrNotLeader) }

package main

import "syscall"

// raiseFileLimit raises the soft limit on open files (RLIMIT_NOFILE) to the hard limit
// and returns the limit now in force. The daemon's sockets are bounded (see
// docs/security.md), but a default soft limit of 1024 is below those bounds; the hard
// limit is what the administrator allows (systemd's LimitNOFILE). Go's runtime does the
// same at start on Linux, for the process but not for its children; doing it here keeps
// the daemon's limit whatever the runtime does and tells the log what it is.
func raiseFileLimit() (uint64, error) {
	var rl syscall.Rlimit
	if err := syscall.Getrlimit(syscall.RLIMIT_NOFILE, &rl); err != nil {
		return 0, err
	}
	if rl.Cur < rl.Max {
		want := rl
		want.Cur = rl.Max
		if err := syscall.Setrlimit(syscall.RLIMIT_NOFILE, &want); err != nil {
			return rl.Cur, err
		}
		rl = want
	}
	return rl.Cur, nil
}

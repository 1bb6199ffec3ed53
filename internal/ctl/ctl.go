// Package ctl is the control socket of a running stt-tun daemon.
//
// Each interface's daemon listens on a unix stream socket, <state-dir>/<name>.sock, mode
// 0600 so that only root (the socket's owner) can connect. The protocol is line-delimited
// JSON: the client writes one Request per line and reads one Response per line.
//
//	{"op":"status"}  →  {"ok":true,"status":{...status.Status...}}
//	{"op":"down"}    →  {"ok":true,"pid":1234}                 (ack: shutdown begins)
//	                 →  {"ok":true,"stopped":true}             (the tunnel is closed)
//	                    or {"ok":false,"error":"..."}          (closing it failed)
//	                    then the daemon closes the connection and exits.
//	{"op":"reload"}  →  {"ok":true,"changes":["peer \"gamma\" added", ...]}
//	                    or {"ok":false,"error":"..."}          (refused; the running
//	                                                            configuration stays)
//	{"op":"ping","peer":"beta","timeout_ms":1000}
//	                 →  {"ok":true,"ping":{"peer":"beta","replied":true,"rtt_ms":0.41,
//	                                       "path":"udp","endpoint":"192.0.2.7:51900"}}
//	                    or {"ok":true,"ping":{"peer":"beta","replied":false,"reason":"..."}}
//	                    or {"ok":false,"error":"..."}          (no such peer)
//	{"op":"statement","statement":"<base64>"}   (see statement.go)
//	                 →  {"ok":true,"statement":{"accepted":false,"reason":"stale"}}
//	{"op":"rotate","statement":"<base64>","seed":"<base64>"}   (see rotate.go)
//	                 →  {"ok":true,"rotate":{"offered":3}}
//	anything else    →  {"ok":false,"error":"unknown op \"x\""}
//
// A request line is at most MaxRequestSize bytes; a connection that sends nothing for
// IdleTimeout is closed.
package ctl

import (
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/stt-tun/stt-tun/internal/status"
)

const (
	// MaxRequestSize bounds one request line, newline included.
	MaxRequestSize = 64 << 10

	// IdleTimeout is how long the server waits for the next request on a connection, and
	// for a client to take a response.
	IdleTimeout = 10 * time.Second

	// SocketSuffix is the file name suffix of control sockets in the state directory.
	SocketSuffix = ".sock"

	lockSuffix = ".lock"
)

// Operations a client may request.
const (
	OpStatus = "status" // report the tunnel's status.Status
	OpDown   = "down"   // stop the tunnel, undo its routing and exit
	OpReload = "reload" // read the configuration file again and apply the changes
	OpPing   = "ping"   // send one STT echo to a peer and wait for the answer
)

// Ping timeouts: a request without timeout_ms waits DefaultPingTimeout, and none waits
// longer than MaxPingTimeout.
const (
	DefaultPingTimeout = time.Second
	MaxPingTimeout     = time.Minute
)

// Request is one line sent by a client.
type Request struct {
	Op string `json:"op"`
	// Peer names the peer of a ping request.
	Peer string `json:"peer,omitempty"`
	// TimeoutMS bounds a ping request's wait for the answer, in milliseconds; 0 means
	// DefaultPingTimeout.
	TimeoutMS int64 `json:"timeout_ms,omitempty"`
	// Statement is the base64 of the signed statement of a statement request.
	Statement string `json:"statement,omitempty"`
	// Seed is the base64 of the next seed of a rotate request (rotate.go).
	Seed string `json:"seed,omitempty"`
}

// PingResult is the outcome of one ping request.
type PingResult struct {
	Peer    string `json:"peer"`
	Replied bool   `json:"replied"`
	// RTT is the round-trip time in milliseconds, when the peer replied.
	RTT float64 `json:"rtt_ms,omitempty"`
	// Path is the transport the echo went and came back on: "udp", "ws" or "relay".
	Path string `json:"path,omitempty"`
	// Endpoint is the underlay address the echo was sent to.
	Endpoint string `json:"endpoint,omitempty"`
	// Via names the member that relayed the echo (path "relay").
	Via string `json:"via,omitempty"`
	// Reason says why there was no reply: a timeout, or no session yet.
	Reason string `json:"reason,omitempty"`
}

// Response is one line sent by the server.
type Response struct {
	OK     bool           `json:"ok"`
	Error  string         `json:"error,omitempty"`
	Status *status.Status `json:"status,omitempty"`
	// PID is the daemon's process id, sent in the acknowledgement of a down request.
	PID int `json:"pid,omitempty"`
	// Stopped marks the final response to a down request: the tunnel has been closed.
	Stopped bool `json:"stopped,omitempty"`
	// Changes lists what a reload changed, one line each; empty when nothing did.
	Changes []string `json:"changes,omitempty"`
	// Ping is the answer to a ping request.
	Ping *PingResult `json:"ping,omitempty"`
	// Statement is the answer to a statement request (statement.go).
	Statement *StatementResult `json:"statement,omitempty"`
	// Rotate is the answer to a rotate request (rotate.go).
	Rotate *RotateResult `json:"rotate,omitempty"`
}

var (
	// ErrNotRunning means no daemon answers on the socket: it does not exist or nothing
	// listens on it (the daemon exited without removing it).
	ErrNotRunning = errors.New("not running")

	// ErrRunning means another daemon already serves the interface.
	ErrRunning = errors.New("already running")
)

// SocketPath is the control socket of interface name in state directory dir.
func SocketPath(dir, name string) string {
	return filepath.Join(dir, name+SocketSuffix)
}

// List returns the names of the interfaces that have a control socket in dir, sorted.
// A missing dir has none. A socket may be stale; only a request tells.
func List(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if errors.Is(err, os.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("list control sockets: %w", err)
	}
	var names []string
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), SocketSuffix)
		if !ok || name == "" || e.Type()&os.ModeSocket == 0 {
			continue
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}

// checkName rejects names that would escape dir or do not fit a unix socket address.
func checkName(dir, name string) error {
	if name == "" || name == "." || name == ".." || strings.ContainsAny(name, "/\x00") {
		return fmt.Errorf("invalid interface name %q", name)
	}
	// sun_path holds 108 bytes including the terminating NUL; the temporary name used
	// while binding is longer than the final one.
	if p := tempSocketPath(dir, name); len(p) > 107 {
		return fmt.Errorf("control socket path %s is too long for a unix socket", p)
	}
	return nil
}

func tempSocketPath(dir, name string) string {
	return filepath.Join(dir, fmt.Sprintf(".%s.%d.tmp", name, os.Getpid()))
}

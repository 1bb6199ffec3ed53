// Validation: parse drives it section by section, and the checks of values that
// more than one section uses are here. Each section's own checks are in
// validate_interface.go, validate_peer.go, validate_websocket.go and, for
// [forwarding], [metrics], [logging] and [advanced], validate_settings.go.

package config

import (
	"bytes"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"net/netip"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// parse decodes, validates and fills defaults. dir anchors relative file paths;
// checkFiles makes it check that the TLS files the document names exist.
func parse(data []byte, path, dir string, checkFiles bool) (*Config, error) {
	name := path
	if name == "" {
		name = "<input>"
	}
	ec := &errorCollector{path: name}
	// Editors on Windows may start a file with a byte order mark, which TOML
	// does not allow; it carries no meaning, so drop it.
	data = bytes.TrimPrefix(data, []byte("\xef\xbb\xbf"))
	sch := buildSchema()
	raw, ok := decodeRaw(data, ec, sch)
	if !ok {
		return nil, ec.err()
	}
	v := &validator{ec: ec, pos: indexPositions(data), dir: dir, defaultLink: defaultLinkName(path), checkFiles: checkFiles}
	for _, sec := range sch {
		// The decoder takes a lone [peer] as a one-element array; refuse it so
		// that the second [peer] does not fail with a puzzling redefinition.
		if line, ok := v.pos.tables[sec.name]; ok && sec.isArray {
			ec.add(line, "[%s] must be written %s, two brackets on each side, one section per %s", sec.name, sec.header(), sec.name)
		}
	}
	cfg := v.config(raw)
	if err := ec.err(); err != nil {
		return nil, err
	}
	cfg.Path = path
	return cfg, nil
}

// validator turns a rawFile into a Config, reporting each problem at the line of
// the key or array element at fault.
type validator struct {
	ec  *errorCollector
	pos *positions
	dir string
	// defaultLink is the link name when [interface] sets none: the file's base name,
	// as wg-quick does, so that `up NAME` and `down NAME` name the same interface.
	defaultLink string
	// noInterface is set when [interface] is missing, which is reported once
	// rather than once per required key.
	noInterface bool
	// checkFiles makes optional file keys (TLS certificates, keys and CAs) fail
	// when their file does not exist.
	checkFiles bool
}

// errAt reports a problem at the line of a dotted path such as
// "peer.1.allowed_prefixes.0".
func (v *validator) errAt(path, format string, args ...any) {
	line := v.pos.line(path)
	if line == 0 {
		line = 1
	}
	v.ec.add(line, format, args...)
}

func (v *validator) config(raw *rawFile) *Config {
	cfg := &Config{}
	if raw.Interface == nil {
		v.ec.add(1, "missing [interface] section; it needs at least seed_file and key_file")
		v.noInterface = true
		raw.Interface = &rawInterface{}
	}
	cfg.Interface = v.iface(raw.Interface)
	cfg.WebSocket = v.websocket(raw.WebSocket)
	cfg.Forwarding = v.forwarding(raw.Forwarding)
	cfg.Discovery = v.discovery(raw.Discovery, &cfg.Interface)
	cfg.Membership = v.membership(raw.Membership, cfg.Discovery)
	cfg.Peers = v.peers(raw.Peers, cfg.Interface.NodeName, cfg.Discovery.Enabled)
	cfg.Metrics = v.metrics(raw.Metrics)
	cfg.Logging = v.logging(raw.Logging)
	cfg.Advanced = v.advanced(raw.Advanced)
	v.exitPeer(cfg)
	v.reachable(cfg, raw.Peers)
	v.announcedOverlaps(cfg)
	if cfg.WebSocket.PublicURL != "" && !cfg.Discovery.Enabled {
		v.errAt("websocket.public_url", "websocket: public_url has no use without [discovery]: it is announced in this node's member record")
	}
	return cfg
}

// optionalFile checks an optional path key, "" meaning none, resolves it against the
// configuration file's directory and, when files are checked, makes sure it exists.
func (v *validator) optionalFile(s *string, path, label string) string {
	if s == nil || *s == "" {
		return ""
	}
	p := *s
	if strings.ContainsFunc(p, unicode.IsControl) {
		v.errAt(path, "%s %q contains control characters", label, p)
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(v.dir, p)
	}
	p = filepath.Clean(p)
	if v.checkFiles {
		fi, err := os.Stat(p)
		switch {
		case errors.Is(err, fs.ErrNotExist):
			v.errAt(path, "%s %s does not exist", label, p)
			return ""
		case err != nil:
			v.errAt(path, "%s %s: %v", label, p, errors.Unwrap(err))
			return ""
		case fi.IsDir():
			v.errAt(path, "%s %s is a directory, not a file", label, p)
			return ""
		}
	}
	return p
}

// checkName applies the rules for node and peer names: they appear in the
// handshake, in logs and on command lines.
func checkName(s string) error {
	switch {
	case s == "":
		return errors.New("is empty")
	case len(s) > MaxNameLen:
		return fmt.Errorf("is %d bytes long; the limit is %d", len(s), MaxNameLen)
	case !utf8.ValidString(s):
		return errors.New("is not valid UTF-8")
	case strings.ContainsFunc(s, func(r rune) bool { return unicode.IsSpace(r) || !unicode.IsPrint(r) }):
		return errors.New("may not contain spaces or control characters")
	}
	return nil
}

func parsePrefix(s, example string) (netip.Prefix, error) {
	if !strings.Contains(s, "/") {
		return netip.Prefix{}, fmt.Errorf("%q has no prefix length; write ADDRESS/LENGTH, e.g. %s", s, example)
	}
	p, err := netip.ParsePrefix(s)
	if err != nil {
		return p, fmt.Errorf("%q is not an IP prefix; write ADDRESS/LENGTH, e.g. %s", s, example)
	}
	if p.Addr().Is4In6() {
		return p, fmt.Errorf("%q is an IPv4-mapped IPv6 prefix; write the IPv4 prefix instead", s)
	}
	return p, nil
}

// parseDuration parses a Go duration string such as "25s" or "2m", with errors
// phrased for the configuration file.
func parseDuration(s string) (time.Duration, error) {
	d, err := time.ParseDuration(s)
	if err != nil {
		if _, nerr := strconv.ParseFloat(s, 64); nerr == nil {
			return 0, fmt.Errorf("has no unit; write e.g. \"%ss\"", s)
		}
		return 0, errors.New("is not a duration; write e.g. \"25s\", \"2m\" or \"1h30m\"")
	}
	if d < 0 {
		return 0, errors.New("is negative")
	}
	return d, nil
}

// checkListen accepts HOST:PORT for a listener: HOST empty (every address), an IP
// address or a host name; PORT 1 to 65535.
func checkListen(s string) error {
	if strings.Contains(s, "://") {
		return errors.New("is a URL; write HOST:PORT, e.g. \"0.0.0.0:8443\"")
	}
	host, port, err := net.SplitHostPort(s)
	if err != nil {
		return errors.New("is not HOST:PORT; write e.g. \"0.0.0.0:8443\", \"[::]:8443\" or \"127.0.0.1:8080\"")
	}
	if n, err := strconv.ParseUint(port, 10, 16); err != nil || n == 0 {
		return fmt.Errorf("has port %q; want a number from 1 to 65535", port)
	}
	if host == "" {
		return nil
	}
	if a, err := netip.ParseAddr(host); err == nil {
		if a.IsMulticast() {
			return fmt.Errorf("has address %s, which is multicast", a)
		}
		return nil
	}
	if strings.Contains(host, ":") {
		return fmt.Errorf("has host %q, which is not an IPv6 address", host)
	}
	return checkHostName(host)
}

func checkHostName(h string) error {
	h = strings.TrimSuffix(h, ".")
	if h == "" || len(h) > 253 {
		return errors.New("has an empty or too long host name")
	}
	for label := range strings.SplitSeq(h, ".") {
		if label == "" || len(label) > 63 || label[0] == '-' || label[len(label)-1] == '-' {
			return fmt.Errorf("has an invalid host name %q", h)
		}
		for _, c := range []byte(label) {
			if !(c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || c >= '0' && c <= '9' || c == '-' || c == '_') {
				return fmt.Errorf("has an invalid host name %q", h)
			}
		}
	}
	return nil
}

// CheckName applies the rules for node and peer names to a name learned at run time
// (from a handshake or a member record).
func CheckName(s string) error { return checkName(s) }

package config

import (
	"bytes"
	"errors"
	"fmt"
	"reflect"
	"regexp"
	"sort"
	"strings"

	toml "github.com/pelletier/go-toml/v2"
)

// The raw* types mirror the file one to one. Pointers tell a key that is absent
// (take the default) from one set to its zero value. Integers are decoded as int64
// and range-checked by validate, which words the errors better than the decoder.
// The `want` tag describes the expected value in type errors.

type rawFile struct {
	Interface  *rawInterface  `toml:"interface"`
	WebSocket  *rawWebSocket  `toml:"websocket"`
	Forwarding *rawForwarding `toml:"forwarding"`
	Discovery  *rawDiscovery  `toml:"discovery"`
	Membership *rawMembership `toml:"membership"`
	Peers      []rawPeer      `toml:"peer"`
	Metrics    *rawMetrics    `toml:"metrics"`
	Logging    *rawLogging    `toml:"logging"`
	Advanced   *rawAdvanced   `toml:"advanced"`
}

type rawInterface struct {
	Name       *string  `toml:"name"`
	NodeName   *string  `toml:"node_name"`
	Addresses  []string `toml:"addresses" want:"an array of prefixes such as [\"10.99.0.1/24\"]"`
	MTU        *int64   `toml:"mtu"`
	ListenPort *int64   `toml:"listen_port"`
	UDP        *bool    `toml:"udp"`
	SeedFile   *string  `toml:"seed_file"`
	KeyFile    *string  `toml:"key_file"`
	ExitPeer   *string  `toml:"exit_peer"`
	FwMark     *int64   `toml:"fwmark"`
	Table      *int64   `toml:"table"`
	KillSwitch *bool    `toml:"kill_switch"`
	MSSClamp   *bool    `toml:"mss_clamp"`
}

type rawWebSocket struct {
	Listen  *string `toml:"listen" want:"a string HOST:PORT such as \"0.0.0.0:8443\""`
	Path    *string `toml:"path" want:"a string such as \"/stt\""`
	TLSCert *string `toml:"tls_cert" want:"a string, the path of a PEM certificate file"`
	TLSKey  *string `toml:"tls_key" want:"a string, the path of a PEM key file"`

	MaxPending          *int64 `toml:"max_pending"`
	MaxPendingPerSource *int64 `toml:"max_pending_per_source"`

	PublicURL *string `toml:"public_url" want:"a string URL such as \"wss://vpn.example.net/stt\""`
}

type rawDiscovery struct {
	Bootstrap        []string `toml:"bootstrap" want:"an array of strings such as [\"192.0.2.1:51900\", \"wss://hub.example.net/stt\"]"`
	AcceptPrefixes   []string `toml:"accept_prefixes" want:"an array of prefixes such as [\"10.99.0.0/16\"]"`
	AnnouncePrefixes []string `toml:"announce_prefixes" want:"an array of prefixes such as [\"192.168.50.0/24\"]"`
	Endpoints        []string `toml:"endpoints" want:"an array of strings IP:PORT such as [\"203.0.113.5:51900\"]"`
	IdleTimeout      *string  `toml:"idle_timeout" want:"a duration string such as \"5m\""`
	MeshIPv6         *bool    `toml:"mesh_ipv6"`
	Relay            *bool    `toml:"relay"`
	NATKeepalive     *string  `toml:"nat_keepalive" want:"a duration string such as \"25s\""`
}

type rawMembership struct {
	Admins []string `toml:"admins" want:"an array of base64 Ed25519 public keys such as [\"F0VTtFbd38aQjsqxwQH+arIeK6oGF3lbfUOmNIKZP9U=\"]"`
}

type rawForwarding struct {
	Enabled    *bool `toml:"enabled"`
	Masquerade *bool `toml:"masquerade"`
}

type rawPeer struct {
	Name                *string  `toml:"name"`
	Endpoint            *string  `toml:"endpoint" want:"a string HOST:PORT such as \"192.0.2.2:51900\""`
	AllowedPrefixes     []string `toml:"allowed_prefixes" want:"an array of prefixes such as [\"10.99.0.2/32\"]"`
	PublicKey           *string  `toml:"public_key" want:"a base64 string"`
	PersistentKeepalive *string  `toml:"persistent_keepalive" want:"a duration string such as \"25s\""`
	Route               *bool    `toml:"route"`
	WSURL               *string  `toml:"ws_url" want:"a string URL such as \"wss://vpn.example.net/stt\""`
	WSProxy             *string  `toml:"ws_proxy" want:"a string: \"\", \"none\" or \"http://HOST:PORT\""`
	WSCAFile            *string  `toml:"ws_ca_file" want:"a string, the path of a PEM file"`
	WSInsecure          *bool    `toml:"ws_insecure"`
}

type rawMetrics struct {
	Listen *string `toml:"listen" want:"a string HOST:PORT such as \"127.0.0.1:9586\""`
}

type rawLogging struct {
	Level  *string `toml:"level" want:"a string: \"debug\", \"info\", \"warn\" or \"error\""`
	Format *string `toml:"format" want:"a string: \"text\" or \"json\""`
}

type rawAdvanced struct {
	RekeyAfter         *string `toml:"rekey_after" want:"a duration string such as \"120s\""`
	RekeyAfterMessages *int64  `toml:"rekey_after_messages"`
	FallbackAfter      *string `toml:"fallback_after" want:"a duration string such as \"3s\""`
	ProbeInterval      *string `toml:"probe_interval" want:"a duration string such as \"10s\""`
	ReplayWindow       *string `toml:"handshake_replay_window" want:"a duration string such as \"180s\""`
	PMTUDiscovery      *bool   `toml:"pmtu_discovery" want:"true or false"`
	PMTUReprobe        *string `toml:"pmtu_reprobe_interval" want:"a duration string such as \"10m\""`
}

// schemaKey is one key the file format accepts.
type schemaKey struct {
	name string
	want string // what a value must look like, for type errors
}

// schemaSection is one table of the file format.
type schemaSection struct {
	name    string
	isArray bool // [[name]] rather than [name]
	keys    []schemaKey
}

// header is the section as it is written in a file.
func (s *schemaSection) header() string {
	if s.isArray {
		return "[[" + s.name + "]]"
	}
	return "[" + s.name + "]"
}

func (s *schemaSection) key(name string) *schemaKey {
	for i := range s.keys {
		if s.keys[i].name == name {
			return &s.keys[i]
		}
	}
	return nil
}

// schema is the file format derived from the raw types, so that error messages,
// suggestions and the documentation test cannot drift from what the decoder accepts.
type schema []schemaSection

func buildSchema() schema {
	var s schema
	top := reflect.TypeFor[rawFile]()
	for i := range top.NumField() {
		f := top.Field(i)
		t := f.Type
		sec := schemaSection{name: f.Tag.Get("toml")}
		if t.Kind() == reflect.Slice {
			sec.isArray = true
			t = t.Elem()
		}
		if t.Kind() == reflect.Pointer {
			t = t.Elem()
		}
		for j := range t.NumField() {
			kf := t.Field(j)
			want := kf.Tag.Get("want")
			if want == "" {
				want = describeType(kf.Type)
			}
			sec.keys = append(sec.keys, schemaKey{name: kf.Tag.Get("toml"), want: want})
		}
		s = append(s, sec)
	}
	return s
}

func describeType(t reflect.Type) string {
	if t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.String:
		return "a string"
	case reflect.Int64:
		return "an integer"
	case reflect.Bool:
		return "true or false"
	case reflect.Slice:
		return "an array"
	}
	return t.String()
}

func (s schema) section(name string) *schemaSection {
	for i := range s {
		if s[i].name == name {
			return &s[i]
		}
	}
	return nil
}

// keys lists every accepted key as "section.key".
func (s schema) keys() []string {
	var out []string
	for _, sec := range s {
		for _, k := range sec.keys {
			out = append(out, sec.name+"."+k.name)
		}
	}
	return out
}

// decodeRaw decodes data strictly into a rawFile, turning the decoder's errors into
// located, reworded ones. It reports whether raw is complete enough to validate:
// after unknown keys it is, after syntax and type errors it is not.
func decodeRaw(data []byte, ec *errorCollector, sch schema) (*rawFile, bool) {
	var raw rawFile
	dec := toml.NewDecoder(bytes.NewReader(data)).DisallowUnknownFields()
	err := dec.Decode(&raw)
	if err == nil {
		return &raw, true
	}
	var strict *toml.StrictMissingError
	var de *toml.DecodeError
	switch {
	case errors.As(err, &strict):
		// The unknown keys are reported by position; the peer index needs the
		// position index, which a document that decoded this far can build.
		pos := indexPositions(data)
		for i := range strict.Errors {
			e := &strict.Errors[i]
			line, _ := e.Position()
			ec.add(line, "%s", unknownKeyMessage(sch, pos, e.Key(), line, e.Error()))
		}
		// Everything else decoded, so validation can report the remaining
		// problems in the same run.
		return &raw, true
	case errors.As(err, &de):
		line, _ := de.Position()
		ec.add(line, "%s", decodeMessage(sch, data, de, line))
	default:
		ec.add(0, "%s", strings.TrimPrefix(err.Error(), "toml: "))
	}
	return nil, false
}

var mismatchRE = regexp.MustCompile(`^cannot decode TOML ([a-z ]+?) into `)

// decodeMessage rewords a decoder error so that it names the TOML key and the
// expected value instead of Go types.
func decodeMessage(sch schema, data []byte, de *toml.DecodeError, line int) string {
	msg := strings.TrimPrefix(de.Error(), "toml: ")
	key := de.Key()
	if len(key) == 0 {
		return msg
	}
	if strings.HasPrefix(msg, "cannot store an array table") {
		if sec := sch.section(key[0]); sec != nil && !sec.isArray && len(key) == 1 {
			return fmt.Sprintf("[[%s]] must be written %s: there is only one", sec.name, sec.header())
		}
		return fmt.Sprintf("[[%s]] is not a section stt-tun knows; sections are %s", strings.Join(key, "."), sectionList(sch))
	}
	m := mismatchRE.FindStringSubmatch(msg)
	if m == nil {
		return msg
	}
	got := m[1]
	if len(key) == 1 {
		if sec := sch.section(key[0]); sec != nil {
			want := "a table " + sec.header()
			if sec.isArray {
				want = "written as " + sec.header() + " sections, one per " + sec.name
			}
			return fmt.Sprintf("%s must be %s, not a TOML %s", key[0], want, got)
		}
		return fmt.Sprintf("%s: unexpected TOML %s", key[0], got)
	}
	sec := sch.section(key[0])
	if sec == nil || len(key) != 2 {
		return fmt.Sprintf("%s: unexpected TOML %s", strings.Join(key, "."), got)
	}
	where := sectionLabel(sec, data, line)
	k := sec.key(key[1])
	if k == nil {
		return fmt.Sprintf("%s: %s: unexpected TOML %s", where, key[1], got)
	}
	return fmt.Sprintf("%s: %s must be %s, not a TOML %s", where, key[1], k.want, got)
}

// sectionLabel names the section a line belongs to; for peers it uses the peer's
// name when the document gives one.
func sectionLabel(sec *schemaSection, data []byte, line int) string {
	if sec.name != "peer" {
		return sec.name
	}
	return "peer" + indexPositions(data).peerSuffix(line)
}

// unknownKeyMessage explains a key or table the schema does not have and suggests
// the likely intended one.
func unknownKeyMessage(sch schema, pos *positions, key toml.Key, line int, orig string) string {
	if len(key) == 0 {
		return strings.TrimPrefix(orig, "toml: ")
	}
	isTable := strings.Contains(orig, "missing table")
	if len(key) == 1 {
		name := key[0]
		if isTable {
			msg := fmt.Sprintf("unknown section [%s]", name)
			if s := suggestSection(sch, name); s != "" {
				msg += "; did you mean " + s + "?"
			} else {
				msg += "; sections are " + sectionList(sch)
			}
			return msg
		}
		msg := fmt.Sprintf("unknown key %q at top level", name)
		if home := homeOf(sch, name, ""); home != "" {
			return msg + "; it belongs in " + home + ", so put it after that header"
		}
		return msg + "; keys go inside a section: " + sectionList(sch)
	}
	sec := sch.section(key[0])
	if sec == nil || len(key) > 2 || isTable {
		return fmt.Sprintf("unknown section [%s]; sections are %s", strings.Join(key, "."), sectionList(sch))
	}
	where := sec.header()
	if sec.name == "peer" {
		where += pos.peerSuffix(line)
	}
	name := key[1]
	msg := fmt.Sprintf("unknown key %q in %s", name, where)
	if s := suggestKey(sec, name); s != "" {
		return msg + "; did you mean " + s + "?"
	}
	if home := homeOf(sch, name, sec.name); home != "" {
		msg += "; it belongs in " + home
		if sec.name == "peer" {
			msg += ", and keys after a [[peer]] header belong to that peer: move it above the first [[peer]]"
		}
		return msg
	}
	return msg + "; valid keys are " + keyList(sec)
}

// homeOf returns the header of the section, other than except, that has key name.
func homeOf(sch schema, name, except string) string {
	for i := range sch {
		if sch[i].name != except && sch[i].key(name) != nil {
			return sch[i].header()
		}
	}
	return ""
}

func suggestKey(sec *schemaSection, name string) string {
	best, bestD := "", 3
	for _, k := range sec.keys {
		if d := keyDistance(name, k.name); d < bestD {
			best, bestD = k.name, d
		}
	}
	return best
}

func suggestSection(sch schema, name string) string {
	best, bestD := "", 3
	for i := range sch {
		if d := keyDistance(name, sch[i].name); d < bestD {
			best, bestD = sch[i].header(), d
		}
	}
	if name == "peers" || name == "Peer" {
		return "[[peer]]"
	}
	return best
}

func sectionList(sch schema) string {
	var h []string
	for i := range sch {
		h = append(h, sch[i].header())
	}
	return strings.Join(h, ", ")
}

func keyList(sec *schemaSection) string {
	var k []string
	for _, key := range sec.keys {
		k = append(k, key.name)
	}
	sort.Strings(k)
	return strings.Join(k, ", ")
}

// keyDistance is the edit distance between two keys after folding case and
// treating '-' and '_' alike, so that "ListenPort" and "listen-port" both lead
// to listen_port.
func keyDistance(a, b string) int {
	norm := func(s string) []rune {
		s = strings.ToLower(strings.ReplaceAll(s, "-", "_"))
		return []rune(s)
	}
	x, y := norm(a), norm(b)
	if strings.ReplaceAll(string(x), "_", "") == strings.ReplaceAll(string(y), "_", "") {
		return 0
	}
	if len(x) > 64 || len(y) > 64 {
		return 1 << 30
	}
	prev := make([]int, len(y)+1)
	cur := make([]int, len(y)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(x); i++ {
		cur[0] = i
		for j := 1; j <= len(y); j++ {
			cost := 1
			if x[i-1] == y[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(y)]
}

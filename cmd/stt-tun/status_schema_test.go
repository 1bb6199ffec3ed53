package main

import (
	"context"
	"encoding/json"
	"maps"
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/stt-tun/stt-tun/config"
	"github.com/stt-tun/stt-tun/internal/status"
	"github.com/stt-tun/stt-tun/tun/tuntest"
	"github.com/stt-tun/stt-tun/tunnel"
)

const schemaDoc = "../../docs/status-schema.md"

// schemaRow is one documented field: its path ("mtu", "peers[].name",
// "counters.drop_auth") and its Absent cell.
type schemaRow struct{ path, absent string }

var (
	schemaRowRE     = regexp.MustCompile("^\\| `([a-z_0-9.\\[\\]]+)` \\|[^|]*\\|[^|]*\\|([^|]*)\\|")
	schemaVersionRE = regexp.MustCompile("The current schema version is `([0-9]+)`")
)

func readSchemaDoc(t *testing.T) (rows []schemaRow, version int) {
	t.Helper()
	data, err := os.ReadFile(schemaDoc)
	if err != nil {
		t.Fatal(err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if m := schemaRowRE.FindStringSubmatch(line); m != nil {
			rows = append(rows, schemaRow{m[1], strings.TrimSpace(m[2])})
		}
	}
	m := schemaVersionRE.FindStringSubmatch(string(data))
	if m == nil {
		t.Fatalf("%s does not say \"The current schema version is `N`\"", schemaDoc)
	}
	version, _ = strconv.Atoi(m[1])
	return rows, version
}

// jsonPaths lists the fields of a JSON document as the schema names them: objects'
// keys joined with ".", array elements as "[]".
func jsonPaths(t *testing.T, v any) []string {
	t.Helper()
	b, err := json.Marshal(v)
	if err != nil {
		t.Fatal(err)
	}
	var doc any
	if err := json.Unmarshal(b, &doc); err != nil {
		t.Fatal(err)
	}
	set := map[string]bool{}
	var walk func(prefix string, v any)
	walk = func(prefix string, v any) {
		switch v := v.(type) {
		case map[string]any:
			for k, e := range v {
				p := k
				if prefix != "" {
					p = prefix + "." + k
				}
				set[p] = true
				walk(p, e)
			}
		case []any:
			for _, e := range v {
				walk(prefix+"[]", e)
			}
		}
	}
	walk("", doc)
	return slices.Sorted(maps.Keys(set))
}

// populate sets every field of the struct v points to, recursively, to a value other
// than its zero value, so that nothing omitempty hides a field from the comparison.
// A field of a type it does not know fails the test: extend it, and the document.
func populate(t *testing.T, v reflect.Value, counters map[string]uint64) {
	t.Helper()
	for i := range v.NumField() {
		f, sf := v.Field(i), v.Type().Field(i)
		switch {
		case f.Type() == reflect.TypeFor[time.Time]():
			f.Set(reflect.ValueOf(time.Date(2026, 5, 1, 12, 0, 0, 123, time.UTC)))
		case f.Type() == reflect.TypeFor[map[string]uint64]() && sf.Name == "Counters":
			f.Set(reflect.ValueOf(counters))
		case f.Kind() == reflect.String:
			f.SetString("x")
		case f.CanInt():
			f.SetInt(1)
		case f.CanUint():
			f.SetUint(1)
		case f.CanFloat():
			f.SetFloat(1.5)
		case f.Kind() == reflect.Bool:
			f.SetBool(true)
		case f.Kind() == reflect.Slice:
			s := reflect.MakeSlice(f.Type(), 1, 1)
			if e := s.Index(0); e.Kind() == reflect.Struct {
				populate(t, e, counters)
			} else if e.Kind() == reflect.String {
				e.SetString("x")
			} else {
				t.Fatalf("populate: field %s: slice of %s", sf.Name, e.Type())
			}
			f.Set(s)
		case f.Kind() == reflect.Struct:
			populate(t, f, counters)
		case f.Kind() == reflect.Pointer && f.Type().Elem().Kind() == reflect.Struct:
			e := reflect.New(f.Type().Elem())
			populate(t, e.Elem(), counters)
			f.Set(e)
		default:
			t.Fatalf("populate: field %s of type %s; teach populate and document it", sf.Name, f.Type())
		}
	}
}

// realCounters are the counters of a real tunnel (on the in-memory device), so that
// the document is held to the counter names the engine really reports. The tunnel
// has [discovery] on, so that the mesh's counters are among them.
func realCounters(t *testing.T) map[string]uint64 {
	t.Helper()
	dir := t.TempDir()
	seed, _ := config.GenerateSeed()
	key, _ := config.GenerateNodeKey()
	for name, line := range map[string]string{"seed": config.EncodeKey(seed), "key": key.Encode()} {
		if err := os.WriteFile(filepath.Join(dir, name), []byte(line+"\n"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	cfg := &config.Config{
		Interface: config.Interface{
			Name: "mem-schema", NodeName: "schema", MTU: 1420,
			SeedFile: filepath.Join(dir, "seed"), KeyFile: filepath.Join(dir, "key"),
		},
		Discovery: config.Discovery{Enabled: true, MeshIPv6: true},
	}
	tu, err := tunnel.Start(context.Background(), cfg, tunnel.Options{Device: tuntest.NewMem("mem-schema", 1420, 4)})
	if err != nil {
		t.Fatal(err)
	}
	defer tu.Close()
	c := tu.Status().Counters
	if len(c) == 0 {
		t.Fatal("a running tunnel reports no counters")
	}
	return c
}

// TestStatusJSONMatchesSchemaDoc holds `status --json` to docs/status-schema.md: a
// fully populated status prints exactly the documented fields, a bare one exactly
// those documented as never absent, and the version is the documented one.
func TestStatusJSONMatchesSchemaDoc(t *testing.T) {
	rows, docVersion := readSchemaDoc(t)
	if docVersion != status.SchemaVersion {
		t.Errorf("%s documents schema version %d, the program prints %d", schemaDoc, docVersion, status.SchemaVersion)
	}
	var documented, never []string
	for _, r := range rows {
		if slices.Contains(documented, r.path) {
			t.Errorf("%s documents %s twice", schemaDoc, r.path)
		}
		documented = append(documented, r.path)
		if r.absent == "never" {
			never = append(never, r.path)
		}
	}
	slices.Sort(documented)
	slices.Sort(never)

	var full status.Status
	populate(t, reflect.ValueOf(&full).Elem(), realCounters(t))
	got := jsonPaths(t, forJSON(full))
	if m := missing(got, documented); len(m) > 0 {
		t.Errorf("fields printed but not documented in %s: %v", schemaDoc, m)
	}
	if m := missing(documented, got); len(m) > 0 {
		t.Errorf("fields documented in %s but not printed: %v", schemaDoc, m)
	}

	// A peer that never connected, on an interface still starting: only the fields
	// documented as never absent.
	bare := forJSON(status.Status{Interface: "stt0", Peers: []status.Peer{{Name: "beta"}}})
	if got := jsonPaths(t, bare); !slices.Equal(got, never) {
		t.Errorf("a bare status prints %v;\nthe document says these are never absent: %v", got, never)
	}
}

// missing lists the elements of a that are not in b.
func missing(a, b []string) []string {
	var out []string
	for _, s := range a {
		if !slices.Contains(b, s) {
			out = append(out, s)
		}
	}
	return out
}

// TestStatusJSONVersionAndArrays checks what the CLI prints: the schema version on each
// object, and [] rather than null for absent lists.
func TestStatusJSONVersionAndArrays(t *testing.T) {
	h := newHarness(t)
	serveFake(t, h.dir, status.Status{Interface: "stt5", Peers: []status.Peer{{Name: "beta", Path: "none"}}})
	r := h.run("", "status", "--json", "stt5")
	if r.code != 0 {
		t.Fatalf("status --json: %+v", r)
	}
	for _, want := range []string{`"schema_version": 1,`, `"addresses": [],`, `"allowed_prefixes": [],`} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("status --json lacks %s:\n%s", want, r.stdout)
		}
	}
	if strings.Contains(r.stdout, "null") || strings.Contains(r.stdout, "last_handshake") {
		t.Errorf("status --json has a null or a handshake that never happened:\n%s", r.stdout)
	}
	r = h.run("", "status", "--json")
	var all []map[string]any
	if err := json.Unmarshal([]byte(r.stdout), &all); err != nil || len(all) != 1 || all[0]["schema_version"] != 1.0 {
		t.Errorf("status --json (all): %v\n%s", err, r.stdout)
	}
}

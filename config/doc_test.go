package config

import (
	"os"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"

	toml "github.com/pelletier/go-toml/v2"
)

const docPath = "../docs/configuration.md"

// docTOMLBlocks returns the ```toml code blocks of the configuration reference,
// each with the heading it appears under.
func docTOMLBlocks(t testing.TB) (blocks, headings []string) {
	t.Helper()
	data, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	var cur strings.Builder
	in := false
	heading := ""
	for line := range strings.SplitSeq(string(data), "\n") {
		switch {
		case !in && strings.HasPrefix(line, "#"):
			heading = strings.TrimSpace(strings.TrimLeft(line, "#"))
		case !in && strings.TrimSpace(line) == "```toml":
			in = true
			cur.Reset()
		case in && strings.TrimSpace(line) == "```":
			in = false
			blocks = append(blocks, cur.String())
			headings = append(headings, heading)
		case in:
			cur.WriteString(line + "\n")
		}
	}
	return blocks, headings
}

// docTableRow is one row of a reference table.
type docTableRow struct {
	section string // "interface", "peer", ...
	header  string // as written: "[interface]", "[[peer]]"
	key     string
	def     string // the Default cell
}

var (
	sectionHeadingRE = regexp.MustCompile("^### `(\\[\\[?([a-z_]+)\\]\\]?)`$")
	tableRowRE       = regexp.MustCompile("^\\| `([a-z0-9_]+)` \\|[^|]*\\|([^|]*)\\|")
)

func docTables(t *testing.T) []docTableRow {
	t.Helper()
	data, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	var rows []docTableRow
	var header, section string
	for line := range strings.SplitSeq(string(data), "\n") {
		if strings.HasPrefix(line, "#") {
			header, section = "", ""
			if m := sectionHeadingRE.FindStringSubmatch(line); m != nil {
				header, section = m[1], m[2]
			}
			continue
		}
		if section == "" {
			continue
		}
		if m := tableRowRE.FindStringSubmatch(line); m != nil {
			rows = append(rows, docTableRow{section: section, header: header, key: m[1], def: strings.TrimSpace(m[2])})
		}
	}
	return rows
}

// TestDocExamplesParse checks that every TOML example in the reference is a
// complete, valid configuration.
func TestDocExamplesParse(t *testing.T) {
	blocks, headings := docTOMLBlocks(t)
	if len(blocks) < 2 {
		t.Fatalf("found %d toml blocks in %s", len(blocks), docPath)
	}
	for i, b := range blocks {
		if _, err := Parse([]byte(b), "/etc/stt-tun/example.toml"); err != nil {
			t.Errorf("example under %q does not parse:\n%v", headings[i], err)
		}
	}
}

// TestDocKeysMatchParser checks that the complete example, the reference tables
// and the parser know exactly the same keys, and that every key outside that set
// is refused in every section.
func TestDocKeysMatchParser(t *testing.T) {
	sch := buildSchema()
	parserKeys := sch.keys()
	sort.Strings(parserKeys)

	// Keys used in the complete example.
	blocks, headings := docTOMLBlocks(t)
	i := slices.Index(headings, "Complete example")
	if i < 0 {
		t.Fatal(`no toml block under "## Complete example"`)
	}
	var example map[string]any
	if err := toml.Unmarshal([]byte(blocks[i]), &example); err != nil {
		t.Fatal(err)
	}
	var exampleKeys []string
	for sec, v := range example {
		var tables []map[string]any
		switch v := v.(type) {
		case map[string]any:
			tables = append(tables, v)
		case []any:
			for _, e := range v {
				tables = append(tables, e.(map[string]any))
			}
		default:
			t.Fatalf("top-level key %q in the example", sec)
		}
		for _, tbl := range tables {
			for k := range tbl {
				if !slices.Contains(exampleKeys, sec+"."+k) {
					exampleKeys = append(exampleKeys, sec+"."+k)
				}
			}
		}
	}
	sort.Strings(exampleKeys)
	if !reflect.DeepEqual(exampleKeys, parserKeys) {
		t.Errorf("complete example keys differ from the parser's:\nexample: %v\nparser:  %v", exampleKeys, parserKeys)
	}

	// Keys in the reference tables, with the section written as the parser wants it.
	var tableKeys []string
	for _, r := range docTables(t) {
		tableKeys = append(tableKeys, r.section+"."+r.key)
		sec := sch.section(r.section)
		if sec == nil {
			t.Errorf("documented section %s is unknown to the parser", r.header)
		} else if sec.header() != r.header {
			t.Errorf("documented as %s, parser has %s", r.header, sec.header())
		}
	}
	sort.Strings(tableKeys)
	if !reflect.DeepEqual(tableKeys, parserKeys) {
		t.Errorf("reference table keys differ from the parser's:\ntables: %v\nparser: %v", tableKeys, parserKeys)
	}

	// Every key that is not documented for a section is refused there: the keys of
	// the other sections (the likely mistakes) and a made-up one.
	var names []string
	for _, sec := range sch {
		for _, k := range sec.keys {
			names = append(names, k.name)
		}
	}
	names = append(names, "bogus_key")
	for _, sec := range sch {
		for _, name := range names {
			if sec.key(name) != nil {
				continue
			}
			src := docWithKey(sec.name, name+" = 1")
			_, err := Parse([]byte(src), "t.toml")
			if err == nil || !strings.Contains(err.Error(), `unknown key "`+name+`"`) {
				t.Errorf("key %q in %s: got %v", name, sec.header(), err)
			}
		}
	}
	// And every documented key is accepted where it is documented (values aside:
	// the error, if any, must not be about an unknown key).
	for _, r := range docTables(t) {
		_, err := Parse([]byte(docWithKey(r.section, r.key+" = 1")), "t.toml")
		if err != nil && strings.Contains(err.Error(), "unknown key") {
			t.Errorf("documented key %s.%s refused: %v", r.section, r.key, err)
		}
	}
}

// TestDocDefaults checks each default the tables state as a literal: setting a
// key to its documented default must give the same Config as leaving it out.
func TestDocDefaults(t *testing.T) {
	literalRE := regexp.MustCompile("^`([^`]+)`")
	checked := 0
	for _, r := range docTables(t) {
		m := literalRE.FindStringSubmatch(r.def)
		if m == nil {
			continue // "required", "none", or prose
		}
		without, err := Parse([]byte(docWithKey(r.section, "")), "/etc/stt-tun/t.toml")
		if err != nil {
			t.Fatal(err)
		}
		with, err := Parse([]byte(docWithKey(r.section, r.key+" = "+m[1])), "/etc/stt-tun/t.toml")
		if err != nil {
			t.Errorf("%s.%s = %s (documented default): %v", r.section, r.key, m[1], err)
			continue
		}
		if !reflect.DeepEqual(with, without) {
			t.Errorf("%s.%s: documented default %s is not the default", r.section, r.key, m[1])
		}
		checked++
	}
	if checked < 10 {
		t.Errorf("only %d defaults checked; did the table format change?", checked)
	}
}

// docWithKey returns a minimal valid document with line added to section.
func docWithKey(section, line string) string {
	parts := map[string][]string{
		"interface": {`[interface]`, `node_name = "alpha"`, `seed_file = "/s"`, `key_file = "/k"`},
		// The other [websocket] keys only make sense with a listener.
		"websocket":  {`[websocket]`, `listen = "127.0.0.1:8443"`},
		"forwarding": {`[forwarding]`},
		"discovery":  {`[discovery]`},
		"membership": {`[membership]`},
		"peer":       {`[[peer]]`, `name = "beta"`, `allowed_prefixes = ["10.99.0.2/32"]`},
		"metrics":    {`[metrics]`},
		"logging":    {`[logging]`},
		"advanced":   {`[advanced]`},
	}
	var out []string
	for _, sec := range []string{"interface", "websocket", "forwarding", "discovery", "membership", "peer", "metrics", "logging", "advanced"} {
		out = append(out, parts[sec]...)
		if sec == section && line != "" {
			out = append(out, line)
		}
	}
	return doc(out...)
}

// TestDocErrorExample checks that the sample error output in the reference is
// what the parser really prints for testdata/errors.toml.
func TestDocErrorExample(t *testing.T) {
	data, err := os.ReadFile(docPath)
	if err != nil {
		t.Fatal(err)
	}
	text := string(data)
	i := strings.Index(text, "```\n/etc/stt-tun/alpha.toml:")
	if i < 0 {
		t.Fatal("no sample error output in the reference")
	}
	block := text[i+4:]
	block = block[:strings.Index(block, "```")]

	src, err := os.ReadFile("testdata/errors.toml")
	if err != nil {
		t.Fatal(err)
	}
	_, err = Parse(src, "/etc/stt-tun/alpha.toml")
	if err == nil {
		t.Fatal("testdata/errors.toml parses")
	}
	if got := err.Error() + "\n"; got != block {
		t.Errorf("the reference shows\n%s\nthe parser prints\n%s", block, got)
	}
}

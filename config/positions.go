package config

import (
	"fmt"
	"sort"
	"strconv"
	"strings"

	"github.com/pelletier/go-toml/v2/unstable"
)

// positions maps the dotted path of every table, key and array element in a
// document to the line where it appears, so that problems found after decoding
// can still be reported as FILE:LINE. Array elements and [[array tables]] get
// their index as a path component: "peer.1.allowed_prefixes.0".
type positions struct {
	lines map[string]int
	// peerLines holds the line of each [[peer]] header, in order, to find which
	// peer a line belongs to.
	peerLines []int
	// tables holds the line of each [table] header (not [[array table]]).
	tables map[string]int
	// values holds the text of string values, for naming peers in messages.
	values map[string]string
}

// indexPositions walks the document's syntax tree. It is only called on documents
// that already decoded, so it does not report syntax errors; on a parse error it
// returns what it has seen so far.
func indexPositions(data []byte) *positions {
	pos := &positions{lines: make(map[string]int), values: make(map[string]string), tables: make(map[string]int)}
	var p unstable.Parser
	p.Reset(data)
	arrayCount := make(map[string]int)
	table := ""
	for p.NextExpression() {
		expr := p.Expression()
		switch expr.Kind {
		case unstable.Table:
			table = keyPath(expr)
			line := lineOfKey(&p, expr)
			pos.set(table, line)
			if _, ok := pos.tables[table]; !ok {
				pos.tables[table] = line
			}
		case unstable.ArrayTable:
			name := keyPath(expr)
			n := arrayCount[name]
			arrayCount[name] = n + 1
			table = name + "." + strconv.Itoa(n)
			line := lineOfKey(&p, expr)
			pos.set(table, line)
			if name == "peer" {
				pos.peerLines = append(pos.peerLines, line)
			}
		case unstable.KeyValue:
			path := join(table, keyPath(expr))
			line := lineOfKey(&p, expr)
			pos.set(path, line)
			pos.walkValue(&p, path, expr.Value(), line)
		}
	}
	return pos
}

// walkValue records the elements of arrays and the keys of inline tables.
func (pos *positions) walkValue(p *unstable.Parser, path string, v *unstable.Node, line int) {
	switch v.Kind {
	case unstable.String:
		if _, ok := pos.values[path]; !ok {
			pos.values[path] = string(v.Data)
		}
	case unstable.Array:
		i := 0
		it := v.Children()
		for it.Next() {
			n := it.Node()
			if n.Kind == unstable.Comment {
				continue
			}
			elem := path + "." + strconv.Itoa(i)
			l := lineOfValue(p, n, line)
			pos.set(elem, l)
			if path == "peer" {
				pos.peerLines = append(pos.peerLines, l)
			}
			pos.walkValue(p, elem, n, l)
			i++
		}
	case unstable.InlineTable:
		it := v.Children()
		for it.Next() {
			kv := it.Node()
			if kv.Kind != unstable.KeyValue {
				continue
			}
			sub := join(path, keyPath(kv))
			l := lineOfKey(p, kv)
			pos.set(sub, l)
			pos.walkValue(p, sub, kv.Value(), l)
		}
	}
}

// set keeps the first position of a path: a table may be extended later by
// dotted keys, but its header is where it begins.
func (pos *positions) set(path string, line int) {
	if _, ok := pos.lines[path]; !ok {
		pos.lines[path] = line
	}
}

// line returns the line of path, or of its closest recorded ancestor, or 0.
func (pos *positions) line(path string) int {
	for {
		if l, ok := pos.lines[path]; ok {
			return l
		}
		i := strings.LastIndexByte(path, '.')
		if i < 0 {
			return 0
		}
		path = path[:i]
	}
}

// has reports whether path appears in the document.
func (pos *positions) has(path string) bool {
	_, ok := pos.lines[path]
	return ok
}

// peerAt returns the index of the [[peer]] that contains line, or -1.
func (pos *positions) peerAt(line int) int {
	i := sort.SearchInts(pos.peerLines, line+1) - 1
	return i
}

// peerSuffix returns ` "NAME"` or ` #N` for the peer containing line, or "".
func (pos *positions) peerSuffix(line int) string {
	i := pos.peerAt(line)
	if i < 0 {
		return ""
	}
	if name := pos.values["peer."+strconv.Itoa(i)+".name"]; name != "" {
		return fmt.Sprintf(" %q", name)
	}
	return fmt.Sprintf(" #%d", i+1)
}

func keyPath(n *unstable.Node) string {
	var parts []string
	it := n.Key()
	for it.Next() {
		parts = append(parts, string(it.Node().Data))
	}
	return strings.Join(parts, ".")
}

func join(table, key string) string {
	if table == "" {
		return key
	}
	return table + "." + key
}

func lineOfKey(p *unstable.Parser, n *unstable.Node) int {
	it := n.Key()
	if it.Next() {
		return lineOfRange(p, it.Node().Raw)
	}
	return 0
}

// lineOfValue finds a value's line; array nodes carry no range of their own, so
// their first element stands in, and an empty array inherits its key's line.
func lineOfValue(p *unstable.Parser, n *unstable.Node, fallback int) int {
	if n.Raw.Length > 0 {
		return lineOfRange(p, n.Raw)
	}
	if n.Kind == unstable.Array {
		it := n.Children()
		for it.Next() {
			if c := it.Node(); c.Kind != unstable.Comment {
				return lineOfValue(p, c, fallback)
			}
		}
	}
	return fallback
}

func lineOfRange(p *unstable.Parser, r unstable.Range) int {
	return p.Shape(r).Start.Line
}

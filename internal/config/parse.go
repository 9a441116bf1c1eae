package config

import (
	"bytes"
	"errors"
	"fmt"
	"io"
	"net/netip"
	"reflect"
	"strconv"
	"strings"

	"gopkg.in/yaml.v3"
)

// Parse decodes a configuration file, fills in defaults and validates it.
// It reads nothing but data.
//
// Problems are returned as a *Problems error listing all of them. When the
// YAML itself cannot be decoded (syntax errors, unknown fields, wrong
// types) the config is nil and only those problems are reported, because
// validating a half-decoded file would bury the real mistake under
// follow-on errors. Otherwise the decoded config is returned even when it
// fails validation, so that callers can show it.
func Parse(data []byte) (*Config, error) {
	root, probs := parseTree(data)
	if len(probs) > 0 {
		return nil, probs.err()
	}
	cfg := Default()
	// Derived from heartbeat_interval unless the file sets it.
	cfg.HALink.DeadInterval = Duration{}
	cfg.HALink.DeadIntervalMax = Duration{}
	if root != nil {
		// yaml.v3 stops at the first bad prefix and reports the rest by
		// line only; the walk finds every decode problem by path first.
		tc := newTreeChecker()
		tc.value(root, reflect.TypeFor[Config](), "")
		if len(tc.problems) > 0 {
			return nil, tc.problems.err()
		}
		dec := yaml.NewDecoder(bytes.NewReader(data))
		dec.KnownFields(true)
		if err := dec.Decode(&cfg); err != nil {
			return nil, decodeProblems(err).err()
		}
	}
	cfg.fillDerived()
	return &cfg, cfg.Validate()
}

// parseTree parses data into a node tree and returns the top-level mapping,
// or nil for an empty file.
func parseTree(data []byte) (*yaml.Node, Problems) {
	dec := yaml.NewDecoder(bytes.NewReader(data))
	var doc yaml.Node
	if err := dec.Decode(&doc); err != nil {
		if errors.Is(err, io.EOF) {
			return nil, nil
		}
		return nil, Problems{syntaxProblem(err, data)}
	}
	// A trailing "---" is harmless; a second document is a mistake that
	// would otherwise be silently ignored.
	for {
		var extra yaml.Node
		err := dec.Decode(&extra)
		if errors.Is(err, io.EOF) {
			break
		}
		if err != nil {
			return nil, Problems{syntaxProblem(err, data)}
		}
		if !isNull(resolve(extra.Content[0])) {
			return nil, Problems{{Message: fmt.Sprintf("a second YAML document starts at line %d; the file must hold exactly one document: remove the extra '---' and what follows", extra.Line)}}
		}
	}
	root := resolve(doc.Content[0])
	if isNull(root) {
		return nil, nil
	}
	return root, nil
}

// syntaxProblem makes a yaml.v3 syntax error ("yaml: line 3: did not find
// expected key") readable. yaml.v3 reports the line where the enclosing
// construct starts, so the mistake may be on a later line.
func syntaxProblem(err error, data []byte) Problem {
	msg := strings.TrimPrefix(err.Error(), "yaml: ")
	where := ""
	if rest, ok := strings.CutPrefix(msg, "line "); ok {
		if num, after, ok := strings.Cut(rest, ": "); ok {
			if _, err := strconv.Atoi(num); err == nil {
				where, msg = " near line "+num, after
			}
		}
	}
	hint := "check the indentation (spaces only) and that every quote and bracket is closed; quote values that contain ': ' or ' #'"
	if n := tabIndentedLine(data); n > 0 {
		hint = fmt.Sprintf("line %d is indented with a tab; YAML must be indented with spaces", n)
	}
	return Problem{Message: fmt.Sprintf("invalid YAML%s: %s; %s", where, msg, hint)}
}

// tabIndentedLine is the first line (1-based) indented with a tab, or 0.
func tabIndentedLine(data []byte) int {
	for i, l := range bytes.Split(data, []byte("\n")) {
		indent := l[:len(l)-len(bytes.TrimLeft(l, " \t"))]
		if bytes.ContainsRune(indent, '\t') {
			return i + 1
		}
	}
	return 0
}

// decodeProblems converts an error of the strict decoder. The tree walk
// catches everything it is known to report, so this is a safety net.
func decodeProblems(err error) Problems {
	var te *yaml.TypeError
	if errors.As(err, &te) {
		p := make(Problems, len(te.Errors))
		for i, e := range te.Errors {
			p[i] = Problem{Message: e}
		}
		return p
	}
	return Problems{{Message: strings.TrimPrefix(err.Error(), "yaml: ")}}
}

// treeChecker walks the node tree along the Config type and records, by
// path, every key that is unknown or repeated and every value that does
// not decode into its field. Leaf values are decoded by yaml.v3 itself,
// so the walk agrees with the real decoder on what is acceptable.
type treeChecker struct {
	problems Problems
	// expanding holds the aliases being walked: an alias met again inside
	// its own anchor would loop forever.
	expanding map[*yaml.Node]bool
	// visits bounds the walk, since aliases can make a small file expand
	// exponentially ("billion laughs").
	visits int
}

// maxVisits is far above any real configuration's node count.
const maxVisits = 100_000

func newTreeChecker() *treeChecker {
	return &treeChecker{expanding: map[*yaml.Node]bool{}}
}

// deref calls fn with n, or with the node that the alias n refers to.
func (tc *treeChecker) deref(n *yaml.Node, path string, fn func(*yaml.Node)) {
	tc.visits++
	if tc.visits == maxVisits {
		tc.problems.add(path, "", "the file expands to more than %d values (line %d); use fewer YAML aliases", maxVisits, n.Line)
	}
	if tc.visits >= maxVisits {
		return
	}
	if n.Kind != yaml.AliasNode {
		fn(n)
		return
	}
	if tc.expanding[n] || n.Alias == nil {
		tc.problems.add(path, "", "alias *%s at line %d refers to a value that contains it; remove the loop", n.Value, n.Line)
		return
	}
	tc.expanding[n] = true
	defer delete(tc.expanding, n)
	tc.deref(n.Alias, path, fn)
}

func (tc *treeChecker) value(n *yaml.Node, t reflect.Type, path string) {
	tc.deref(n, path, func(n *yaml.Node) {
		switch {
		case isNull(n):
			// yaml.v3 leaves the default in place.
		case t == reflect.TypeFor[Duration]() || t == reflect.TypeFor[netip.Prefix]() || t == reflect.TypeFor[Rate]():
			tc.leaf(n, t, path)
		case t.Kind() == reflect.Map:
			tc.dict(n, t, path)
		case t.Kind() == reflect.Struct:
			tc.mapping(n, t, path, map[string]int{})
		case t.Kind() == reflect.Slice:
			tc.sequence(n, t, path)
		default:
			tc.leaf(n, t, path)
		}
	})
}

func (tc *treeChecker) mapping(n *yaml.Node, t reflect.Type, path string, seen map[string]int) {
	names := fieldNames(t)
	if n.Kind != yaml.MappingNode {
		subject := "must"
		if path == "" {
			subject = "the file must"
		}
		tc.problems.add(path, scalarValue(n), "%s be a mapping with the fields %s, not %s (line %d)",
			subject, strings.Join(names, ", "), describe(n), n.Line)
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			tc.problems.add(path, "", "keys must be plain field names, not %s (line %d)", describe(k), k.Line)
			continue
		}
		if k.ShortTag() == "!!merge" {
			tc.merge(v, t, path)
			continue
		}
		fpath := join(path, k.Value)
		f, ok := fieldByName(t, k.Value)
		if !ok {
			tc.problems.add(fpath, "", "unknown field %q at line %d: check the spelling%s; known fields of %s are: %s",
				k.Value, k.Line, suggest(k.Value, names), section(path), strings.Join(names, ", "))
			continue
		}
		if first, dup := seen[k.Value]; dup {
			tc.problems.add(fpath, "", "%q is set twice, at line %d and line %d; remove one of them", k.Value, first, k.Line)
			continue
		}
		seen[k.Value] = k.Line
		tc.value(v, f.Type, fpath)
	}
}

// dict checks a mapping with free keys (config_sync.hooks): every value
// against the element type.
func (tc *treeChecker) dict(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.MappingNode {
		tc.problems.add(path, scalarValue(n), "must be a mapping of name: value, not %s (line %d)", describe(n), n.Line)
		return
	}
	for i := 0; i+1 < len(n.Content); i += 2 {
		k, v := n.Content[i], n.Content[i+1]
		if k.Kind != yaml.ScalarNode {
			tc.problems.add(path, "", "keys must be plain names, not %s (line %d)", describe(k), k.Line)
			continue
		}
		tc.value(v, t.Elem(), join(path, k.Value))
	}
}

// merge checks the mappings pulled in by a "<<: *anchor" merge key. Keys
// they share with the mapping itself are overrides, not duplicates.
func (tc *treeChecker) merge(v *yaml.Node, t reflect.Type, path string) {
	tc.deref(v, path, func(v *yaml.Node) {
		srcs := []*yaml.Node{v}
		if v.Kind == yaml.SequenceNode {
			srcs = v.Content
		}
		for _, s := range srcs {
			tc.deref(s, path, func(s *yaml.Node) {
				tc.mapping(s, t, path, map[string]int{})
			})
		}
	})
}

func (tc *treeChecker) sequence(n *yaml.Node, t reflect.Type, path string) {
	if n.Kind != yaml.SequenceNode {
		tc.problems.add(path, scalarValue(n), "must be a list, not %s (line %d); write [a, b] or one \"- item\" per line", describe(n), n.Line)
		return
	}
	for i, e := range n.Content {
		tc.value(e, t.Elem(), fmt.Sprintf("%s[%d]", path, i))
	}
}

func (tc *treeChecker) leaf(n *yaml.Node, t reflect.Type, path string) {
	want, hint := expected(t, n.Value)
	bad := n.Kind != yaml.ScalarNode
	if !bad && isInt(t) {
		// yaml.v3 would quietly truncate 7.5 to 7.
		bad = n.ShortTag() != "!!int"
	}
	if !bad {
		bad = n.Decode(reflect.New(t).Interface()) != nil
	}
	if !bad {
		return
	}
	if n.Kind != yaml.ScalarNode {
		tc.problems.add(path, "", "must be %s, not %s (line %d)", want, describe(n), n.Line)
		return
	}
	tc.problems.add(path, n.Value, "must be %s (line %d)%s", want, n.Line, hint)
}

// expected describes what a leaf of type t must look like, and a hint for
// fixing the value v.
func expected(t reflect.Type, v string) (want, hint string) {
	switch {
	case t == reflect.TypeFor[Duration]():
		want = `a duration such as "100ms", "2s" or "1m"`
		if _, err := strconv.ParseFloat(v, 64); err == nil {
			hint = fmt.Sprintf("; add a unit, e.g. %sms or %ss", v, v)
		}
	case t == reflect.TypeFor[Rate]():
		want = `0 (off), bytes per second such as "20MB/s" or entries per second such as "50000/s"`
	case t == reflect.TypeFor[netip.Prefix]():
		want = "an address with prefix length such as 192.0.2.1/24 or fd00::1/64"
		if a, err := netip.ParseAddr(v); err == nil && a.Zone() == "" {
			bits := 24
			if a.Is6() {
				bits = 64
			}
			hint = fmt.Sprintf("; add the subnet's prefix length, e.g. %s/%d", a, bits)
		} else if strings.Contains(v, "%") {
			hint = "; remove the zone (%...): the interface is implied"
		}
	case t.Kind() == reflect.Bool:
		want = "true or false"
	case isInt(t):
		want = "a whole number"
	case t.Kind() == reflect.String:
		want = "a single text value"
	default:
		want = "a " + t.String()
	}
	return want, hint
}

func isInt(t reflect.Type) bool {
	switch t.Kind() {
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return true
	}
	return false
}

// describe names what a node is, for "expected X, got Y" messages.
func describe(n *yaml.Node) string {
	switch n.Kind {
	case yaml.MappingNode:
		return "a mapping"
	case yaml.SequenceNode:
		return "a list"
	}
	return "a single value"
}

func scalarValue(n *yaml.Node) string {
	if n.Kind == yaml.ScalarNode {
		return n.Value
	}
	return ""
}

// resolve follows an alias to its anchored node.
func resolve(n *yaml.Node) *yaml.Node {
	for n.Kind == yaml.AliasNode && n.Alias != nil {
		n = n.Alias
	}
	return n
}

func isNull(n *yaml.Node) bool {
	return n.Kind == yaml.ScalarNode && n.ShortTag() == "!!null"
}

func join(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// section names a mapping in messages.
func section(path string) string {
	if path == "" {
		return "the top level"
	}
	return path
}

// fieldNames lists the YAML keys of struct type t in declaration order.
func fieldNames(t reflect.Type) []string {
	names := make([]string, 0, t.NumField())
	for f := range t.Fields() {
		if name := yamlName(f); name != "" {
			names = append(names, name)
		}
	}
	return names
}

func fieldByName(t reflect.Type, name string) (reflect.StructField, bool) {
	for f := range t.Fields() {
		if yamlName(f) == name {
			return f, true
		}
	}
	return reflect.StructField{}, false
}

func yamlName(f reflect.StructField) string {
	if !f.IsExported() {
		return ""
	}
	name, _, _ := strings.Cut(f.Tag.Get("yaml"), ",")
	if name == "-" {
		return ""
	}
	return name
}

// suggest proposes the known name closest to a misspelt key.
func suggest(key string, names []string) string {
	norm := func(s string) string { return strings.ReplaceAll(strings.ToLower(s), "-", "_") }
	best, bestDist := "", 3 // farther than 2 edits is a guess, not a typo
	for _, n := range names {
		if d := editDistance(norm(key), norm(n)); d < bestDist {
			best, bestDist = n, d
		}
	}
	if best == "" {
		return ""
	}
	return fmt.Sprintf(" (did you mean %q?)", best)
}

// editDistance is the Levenshtein distance between a and b.
func editDistance(a, b string) int {
	prev := make([]int, len(b)+1)
	cur := make([]int, len(b)+1)
	for j := range prev {
		prev[j] = j
	}
	for i := 1; i <= len(a); i++ {
		cur[0] = i
		for j := 1; j <= len(b); j++ {
			cost := 1
			if a[i-1] == b[j-1] {
				cost = 0
			}
			cur[j] = min(prev[j]+1, cur[j-1]+1, prev[j-1]+cost)
		}
		prev, cur = cur, prev
	}
	return prev[len(b)]
}

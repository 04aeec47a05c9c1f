package config

import (
	"bytes"
	"encoding"
	"errors"
	"fmt"
	"reflect"
	"strconv"
	"strings"

	"github.com/goccy/go-yaml"
	"github.com/goccy/go-yaml/ast"
	"github.com/goccy/go-yaml/token"

	"github.com/lapsehq/lapse"
)

// Error is a configuration error at a place in a file. Its message reads
// "lapse.yaml:14:5: targets.demo-api.config.audience: what is wrong", so an
// operator can go straight to the line. The cause is an *lapse.Error with
// code EINVALID unless a connector returned something else.
type Error struct {
	File   string
	Line   int // 1-based; 0 when the error concerns the whole file
	Column int // 1-based; 0 when unknown
	// Path names the field, e.g. "entitlements[2].max_duration"; empty for
	// the document itself.
	Path string
	Err  error
}

func (e *Error) Error() string {
	var b strings.Builder
	b.WriteString(e.File)
	if e.Line > 0 {
		b.WriteString(":" + strconv.Itoa(e.Line))
		if e.Column > 0 {
			b.WriteString(":" + strconv.Itoa(e.Column))
		}
	}
	b.WriteString(": ")
	if e.Path != "" {
		b.WriteString(e.Path + ": ")
	}
	b.WriteString(message(e.Err))
	return b.String()
}

// Unwrap returns the cause.
func (e *Error) Unwrap() error { return e.Err }

// message is what an operator reads about err: a *lapse.Error's safe
// message with its cause, any other error's text.
func message(err error) string {
	if err == nil {
		return "invalid"
	}
	if le, ok := err.(*lapse.Error); ok && le.Message != "" {
		if le.Err != nil {
			return le.Message + ": " + le.Err.Error()
		}
		return le.Message
	}
	return err.Error()
}

// invalid returns an EINVALID error with a formatted message.
func invalid(format string, args ...any) error {
	return lapse.Errorf(lapse.EINVALID, format, args...)
}

// position returns where node should be reported: a mapping entry at its
// key, a mapping at its first key, anything else at its first token.
func position(node ast.Node) (line, col int) {
	var tk *token.Token
	switch n := node.(type) {
	case nil:
		return 0, 0
	case *ast.MappingValueNode:
		tk = n.Key.GetToken()
	case *ast.MappingNode:
		if len(n.Values) > 0 {
			tk = n.Values[0].Key.GetToken()
		} else {
			tk = n.GetToken()
		}
	default:
		tk = node.GetToken()
	}
	if tk == nil || tk.Position == nil {
		return 0, 0
	}
	return tk.Position.Line, tk.Position.Column
}

// nodePath turns the parser's "$.a.b[2]" into "a.b[2]".
func nodePath(node ast.Node) string {
	if node == nil {
		return ""
	}
	p := strings.TrimPrefix(node.GetPath(), "$")
	return strings.TrimPrefix(p, ".")
}

// step is one element of a field path: a mapping key (string) or a
// sequence index (int).
type step = any

// joinPath renders steps the way the parser renders node paths.
func joinPath(steps []step) string {
	var b strings.Builder
	for _, s := range steps {
		switch s := s.(type) {
		case int:
			fmt.Fprintf(&b, "[%d]", s)
		case string:
			if b.Len() > 0 {
				b.WriteByte('.')
			}
			if strings.ContainsAny(s, "$*.[]") {
				s = "'" + s + "'"
			}
			b.WriteString(s)
		}
	}
	return b.String()
}

// unwrapNode looks through tags, anchors and aliases to the value.
func unwrapNode(n ast.Node) ast.Node {
	for {
		switch v := n.(type) {
		case *ast.TagNode:
			n = v.Value
		case *ast.AnchorNode:
			n = v.Value
		case *ast.AliasNode:
			n = v.Value
		default:
			return n
		}
	}
}

// mappingValues returns the entries of a mapping node, or ok=false if node
// is not a mapping.
func mappingValues(node ast.Node) ([]*ast.MappingValueNode, bool) {
	switch n := unwrapNode(node).(type) {
	case *ast.MappingNode:
		return n.Values, true
	case *ast.MappingValueNode:
		return []*ast.MappingValueNode{n}, true
	}
	return nil, false
}

// keyString returns the text of a mapping key without quotes.
func keyString(k ast.MapKeyNode) string {
	if s, ok := unwrapNode(k).(*ast.StringNode); ok {
		return s.Value
	}
	if tk := k.GetToken(); tk != nil {
		return tk.Value
	}
	return k.String()
}

// lookup follows steps from node. It returns the entry for the last step
// that exists (a *ast.MappingValueNode for a key, the item for an index)
// and whether every step was found, so an error about a missing field can
// still point at the block that lacks it.
func lookup(node ast.Node, steps []step) (ast.Node, bool) {
	cur := node
	var at ast.Node = node
	for _, s := range steps {
		switch s := s.(type) {
		case string:
			values, ok := mappingValues(cur)
			if !ok {
				return at, false
			}
			var found *ast.MappingValueNode
			for _, kv := range values {
				if keyString(kv.Key) == s {
					found = kv
					break
				}
			}
			if found == nil {
				return at, false
			}
			at, cur = found, found.Value
		case int:
			seq, ok := unwrapNode(cur).(*ast.SequenceNode)
			if !ok || s < 0 || s >= len(seq.Values) {
				return at, false
			}
			at, cur = seq.Values[s], seq.Values[s]
		}
	}
	return at, true
}

// valueNode returns the value of a mapping entry, or node itself.
func valueNode(node ast.Node) ast.Node {
	if kv, ok := node.(*ast.MappingValueNode); ok {
		return kv.Value
	}
	return node
}

// isNull reports whether node is absent or an explicit null.
func isNull(node ast.Node) bool {
	if node == nil {
		return true
	}
	_, ok := unwrapNode(node).(*ast.NullNode)
	return ok
}

// decodeStrict decodes node into v, rejecting unknown keys, and turns every
// failure into an *Error at the offending line and field.
func decodeStrict(file string, src []byte, node ast.Node, v any) error {
	if isNull(node) {
		return nil
	}
	err := newDecoder(src).DecodeFromNode(node, v)
	if err == nil {
		return nil
	}
	return decodeError(file, src, node, reflect.TypeOf(v), err)
}

// newDecoder returns a strict decoder that knows the anchors of the whole
// file, so a block decoded on its own can still use aliases and merge keys
// (<<: *common) that point outside it. Duplicate keys are already refused
// by the parser; the decoder's own check would also refuse a key that
// overrides a merged one, which YAML allows.
func newDecoder(src []byte) *yaml.Decoder {
	return yaml.NewDecoder(strings.NewReader(""), yaml.Strict(), yaml.AllowDuplicateMapKey(), yaml.ReferenceReaders(bytes.NewReader(src)))
}

// decodeError positions a decoding error. The YAML library attaches a token
// to structural errors (unknown key, wrong type); errors from a value's own
// unmarshaler (a bad duration, a bad secret reference) carry none, so the
// failing node is found by decoding the children one at a time.
func decodeError(file string, src []byte, root ast.Node, typ reflect.Type, err error) error {
	var ye yaml.Error
	if errors.As(err, &ye) && ye.GetToken() != nil {
		tk := ye.GetToken()
		node := nodeWithToken(root, tk)
		e := &Error{File: file, Path: nodePath(node), Err: invalid("%s", yamlMessage(ye))}
		if node != nil {
			e.Line, e.Column = position(node)
		} else if tk.Position != nil {
			e.Line, e.Column = tk.Position.Line, tk.Position.Column
		}
		return e
	}
	node := narrow(src, root, typ)
	if _, ok := err.(*lapse.Error); !ok {
		// A value's unmarshaler rejected the input: the input is invalid.
		err = &lapse.Error{Code: lapse.EINVALID, Message: err.Error()}
	}
	e := &Error{File: file, Path: nodePath(node), Err: err}
	e.Line, e.Column = position(node)
	return e
}

// yamlMessage rewrites the YAML library's messages, which speak of Go
// types, in the words of the file.
func yamlMessage(ye yaml.Error) string {
	var te *yaml.TypeError
	if errors.As(ye, &te) {
		return "expected " + yamlKind(te.DstType)
	}
	var ue *yaml.UnknownFieldError
	if errors.As(ye, &ue) {
		return strings.Replace(ue.Message, "unknown field", "unknown key", 1)
	}
	return ye.GetMessage()
}

// yamlKind names what a Go type looks like in YAML.
func yamlKind(t reflect.Type) string {
	if t == nil {
		return "a different value"
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Bool:
		return "true or false"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64:
		return "an integer"
	case reflect.Float32, reflect.Float64:
		return "a number"
	case reflect.String:
		return "a string"
	case reflect.Slice, reflect.Array:
		return "a list"
	case reflect.Map, reflect.Struct:
		return "a mapping"
	}
	return "a different value"
}

// nodeWithToken returns the outermost node under root whose token is tk.
func nodeWithToken(root ast.Node, tk *token.Token) ast.Node {
	var found ast.Node
	ast.Walk(visitFunc(func(n ast.Node) bool {
		if found != nil {
			return false
		}
		if n.GetToken() == tk {
			found = n
			return false
		}
		return true
	}), root)
	return found
}

type visitFunc func(ast.Node) bool

func (f visitFunc) Visit(n ast.Node) ast.Visitor {
	if f(n) {
		return f
	}
	return nil
}

var (
	textUnmarshalerType = reflect.TypeFor[encoding.TextUnmarshaler]()
	unmarshalerTypes    = []reflect.Type{
		textUnmarshalerType,
		reflect.TypeFor[yaml.InterfaceUnmarshaler](),
		reflect.TypeFor[yaml.InterfaceUnmarshalerContext](),
		reflect.TypeFor[yaml.BytesUnmarshaler](),
		reflect.TypeFor[yaml.BytesUnmarshalerContext](),
		reflect.TypeFor[yaml.NodeUnmarshaler](),
		reflect.TypeFor[yaml.NodeUnmarshalerContext](),
	}
)

// decodesItself reports whether values of t decode the whole node on their
// own, so there is nothing finer to narrow to.
func decodesItself(t reflect.Type) bool {
	pt := reflect.PointerTo(t)
	for _, u := range unmarshalerTypes {
		if t.Implements(u) || pt.Implements(u) {
			return true
		}
	}
	return false
}

// narrow returns the deepest node under node that still fails to decode
// into a value of type t.
func narrow(src []byte, node ast.Node, t reflect.Type) ast.Node {
	if t == nil {
		return node
	}
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	if decodesItself(t) {
		return node
	}
	fails := func(n ast.Node, t reflect.Type) bool {
		for t.Kind() == reflect.Pointer {
			t = t.Elem() // the decoder skips a nil pointer target
		}
		return newDecoder(src).DecodeFromNode(n, reflect.New(t).Interface()) != nil
	}
	switch t.Kind() {
	case reflect.Struct:
		values, ok := mappingValues(node)
		if !ok {
			return node
		}
		fields := yamlFields(t)
		for _, kv := range values {
			ft, ok := fields[keyString(kv.Key)]
			if ok && !isNull(kv.Value) && fails(kv.Value, ft) {
				return narrow(src, kv.Value, ft)
			}
		}
	case reflect.Map:
		values, ok := mappingValues(node)
		if !ok {
			return node
		}
		for _, kv := range values {
			if !isNull(kv.Value) && fails(kv.Value, t.Elem()) {
				return narrow(src, kv.Value, t.Elem())
			}
		}
	case reflect.Slice, reflect.Array:
		seq, ok := unwrapNode(node).(*ast.SequenceNode)
		if !ok {
			return node
		}
		for _, item := range seq.Values {
			if fails(item, t.Elem()) {
				return narrow(src, item, t.Elem())
			}
		}
	}
	return node
}

// yamlFields maps the keys a struct accepts to the types of its fields,
// following the YAML library's naming (yaml tag, else json tag, else the
// lower-cased field name; inline structs flattened).
func yamlFields(t reflect.Type) map[string]reflect.Type {
	out := map[string]reflect.Type{}
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		tag := f.Tag.Get("yaml")
		if tag == "" {
			tag = f.Tag.Get("json")
		}
		if tag == "-" || (f.PkgPath != "" && !f.Anonymous) {
			continue
		}
		opts := strings.Split(tag, ",")
		name := strings.ToLower(f.Name)
		if opts[0] != "" {
			name = opts[0]
		}
		inline := false
		for _, o := range opts[1:] {
			inline = inline || o == "inline"
		}
		ft := f.Type
		for ft.Kind() == reflect.Pointer {
			ft = ft.Elem()
		}
		if inline && ft.Kind() == reflect.Struct {
			for k, v := range yamlFields(ft) {
				out[k] = v
			}
			continue
		}
		out[name] = f.Type
	}
	return out
}

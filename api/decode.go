package api

import (
	"bytes"
	"encoding/json"
	"errors"
	"mime"
	"net/http"
	"net/url"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

// Input limits of the HTTP layer. The Service enforces the limits of the
// domain (reason length, duration bounds); these keep a request from costing
// more than it is worth before the Service sees it.
const (
	// MaxJSONBody bounds every JSON request body.
	MaxJSONBody = 64 << 10
	// MaxFormBody bounds the introspection form (a token is a few hundred bytes).
	MaxFormBody = 16 << 10
	// MaxJSONDepth bounds the nesting of a JSON body. No input of the API
	// nests deeper than 2; anything deeper is an attack on the parser.
	MaxJSONDepth = 32
)

// inputSpec describes one JSON input type: the exact member names it
// accepts and the names of its lapse.Duration members, so that a bad
// duration is reported against the field the caller sent.
type inputSpec struct {
	fields         []string
	durationFields []string
}

var durationType = reflect.TypeFor[lapse.Duration]()

// newInputSpec derives the spec of the struct type T from its JSON tags, so
// a field added to an input in the domain is accepted without touching the
// HTTP layer.
func newInputSpec[T any]() *inputSpec {
	spec := &inputSpec{}
	var walk func(t reflect.Type)
	walk = func(t reflect.Type) {
		for i := 0; i < t.NumField(); i++ {
			f := t.Field(i)
			if !f.IsExported() {
				continue
			}
			name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
			if name == "-" {
				continue
			}
			if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
				walk(f.Type)
				continue
			}
			if name == "" {
				name = f.Name
			}
			spec.fields = append(spec.fields, name)
			if f.Type == durationType {
				spec.durationFields = append(spec.durationFields, name)
			}
		}
	}
	walk(reflect.TypeFor[T]())
	return spec
}

// badDuration names the duration member of data that does not decode: the
// only one, or the first of several that fails on its own; fallback when
// none does.
func (s *inputSpec) badDuration(data []byte, fallback string) string {
	switch len(s.durationFields) {
	case 0:
		return fallback
	case 1:
		return s.durationFields[0]
	}
	var members map[string]json.RawMessage
	if json.Unmarshal(data, &members) != nil {
		return fallback
	}
	for _, name := range s.durationFields {
		raw, ok := members[name]
		if !ok {
			continue
		}
		var d lapse.Duration
		if json.Unmarshal(raw, &d) != nil {
			return name
		}
	}
	return fallback
}

func (s *inputSpec) known(name []byte) bool {
	for _, f := range s.fields {
		if f == string(name) {
			return true
		}
	}
	return false
}

// The specs of every JSON input the API decodes.
var (
	specRequestInput  = newInputSpec[lapse.RequestInput]()
	specDecisionInput = newInputSpec[lapse.DecisionInput]()
	specReviewInput   = newInputSpec[lapse.ReviewInput]()
	specReleaseInput  = newInputSpec[lapse.ReleaseInput]()
	specExtendInput   = newInputSpec[lapse.ExtendInput]()
	specRevokeInput   = newInputSpec[lapse.RevokeInput]()
	specAPIKeyInput   = newInputSpec[lapse.APIKeyInput]()
	specMandateInput  = newInputSpec[lapse.MandateInput]()
	specAckInput      = newInputSpec[ackInput]()
	specEmpty         = newInputSpec[struct{}]()
)

var bodyPool = sync.Pool{New: func() any { return new(bytes.Buffer) }}

// decodeJSON reads r's body into v under the API's rules: a JSON content
// type, at most MaxJSONBody bytes, valid UTF-8, one JSON object nested at
// most MaxJSONDepth deep whose members are exactly (case-sensitively) those
// of spec, each at most once, and nothing after it. With optional, an empty
// body is the empty object. Errors are EINVALID or ETOOLARGE naming the
// field ("body" for the body as a whole).
func decodeJSON(w http.ResponseWriter, r *http.Request, v any, spec *inputSpec, optional bool) error {
	if r.ContentLength > MaxJSONBody {
		// Refused on the declared length alone: a 10 MB body is never read.
		return lapse.FieldErrorf(lapse.ETOOLARGE, "body", "request body is larger than %d bytes", MaxJSONBody)
	}
	if r.ContentLength != 0 {
		if err := checkJSONContentType(r.Header); err != nil {
			return err
		}
	}
	buf := bodyPool.Get().(*bytes.Buffer)
	defer func() {
		if buf.Cap() <= MaxJSONBody*2 {
			buf.Reset()
			bodyPool.Put(buf)
		}
	}()
	buf.Reset()
	if r.Body != nil && r.Body != http.NoBody {
		body := http.MaxBytesReader(w, r.Body, MaxJSONBody)
		if _, err := buf.ReadFrom(body); err != nil {
			if _, ok := errors.AsType[*http.MaxBytesError](err); ok {
				return lapse.FieldErrorf(lapse.ETOOLARGE, "body", "request body is larger than %d bytes", MaxJSONBody)
			}
			return lapse.FieldErrorf(lapse.EINVALID, "body", "cannot read request body")
		}
	}
	data := buf.Bytes()
	if len(bytes.TrimSpace(data)) == 0 {
		if optional {
			return nil
		}
		return lapse.FieldErrorf(lapse.EINVALID, "body", "a JSON request body is required")
	}
	if err := checkJSON(data, spec); err != nil {
		return err
	}
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.DisallowUnknownFields()
	if err := dec.Decode(v); err != nil {
		return decodeError(err, spec, data)
	}
	// checkJSON proved the body is exactly one value; this is a second guard
	// in case the two parsers ever disagree.
	if len(bytes.TrimSpace(data[dec.InputOffset():])) != 0 {
		return lapse.FieldErrorf(lapse.EINVALID, "body", "unexpected data after the JSON object")
	}
	return nil
}

// checkJSONContentType accepts application/json, with at most a UTF-8
// charset parameter.
func checkJSONContentType(h http.Header) error {
	ct := h.Get("Content-Type")
	if ct == "application/json" {
		return nil
	}
	mt, params, err := mime.ParseMediaType(ct)
	if err != nil || mt != "application/json" {
		return lapse.FieldErrorf(lapse.EINVALID, "Content-Type", "request body must be application/json")
	}
	for k, v := range params {
		if k != "charset" || !strings.EqualFold(v, "utf-8") {
			return lapse.FieldErrorf(lapse.EINVALID, "Content-Type", "unsupported media type parameter %q", k)
		}
	}
	return nil
}

// decodeError turns an encoding/json error into an EINVALID naming the
// field; data is the body that failed.
func decodeError(err error, spec *inputSpec, data []byte) error {
	if e, ok := errors.AsType[*lapse.Error](err); ok {
		// A TextUnmarshaler (lapse.Duration) refused its value; encoding/json
		// does not say which member it was reading, the spec does.
		field := e.Field
		if e.Field == "duration" {
			field = spec.badDuration(data, field)
		}
		return lapse.FieldErrorf(e.Code, field, "%s", e.Message)
	}
	if e, ok := errors.AsType[*json.UnmarshalTypeError](err); ok {
		field := e.Field
		if field == "" {
			field = "body"
		}
		return lapse.FieldErrorf(lapse.EINVALID, field, "wrong JSON type: %s where %s was expected", e.Value, jsonTypeName(e.Type))
	}
	if rest, ok := strings.CutPrefix(err.Error(), "json: unknown field "); ok {
		// encoding/json has no typed error for this; checkJSON normally
		// catches it first.
		if name, uerr := strconv.Unquote(rest); uerr == nil {
			return lapse.FieldErrorf(lapse.EINVALID, name, "unknown field %q", name)
		}
	}
	return lapse.FieldErrorf(lapse.EINVALID, "body", "malformed JSON")
}

func jsonTypeName(t reflect.Type) string {
	if t == nil {
		return "another type"
	}
	if t == durationType || reflect.PointerTo(t).Implements(reflect.TypeFor[interface{ UnmarshalText([]byte) error }]()) {
		return "string"
	}
	switch t.Kind() {
	case reflect.String:
		return "string"
	case reflect.Bool:
		return "boolean"
	case reflect.Int, reflect.Int8, reflect.Int16, reflect.Int32, reflect.Int64,
		reflect.Uint, reflect.Uint8, reflect.Uint16, reflect.Uint32, reflect.Uint64, reflect.Float32, reflect.Float64:
		return "number"
	case reflect.Slice, reflect.Array:
		return "array"
	case reflect.Struct, reflect.Map:
		return "object"
	}
	return "another type"
}

// checkJSON validates the shape of a JSON body in one pass before it is
// decoded: valid UTF-8, a single top-level object, nesting no deeper than
// MaxJSONDepth, and top-level member names that the input knows, exactly
// and at most once each. encoding/json alone would accept "Entitlement" for
// "entitlement", keep the last of two duplicate members, and recurse into
// any depth of nesting; a strict API refuses all three, and the depth check
// runs before the recursive decoder sees the body.
func checkJSON(data []byte, spec *inputSpec) error {
	if !utf8.Valid(data) {
		return lapse.FieldErrorf(lapse.EINVALID, "body", "request body is not valid UTF-8")
	}
	i := skipSpace(data, 0)
	if i >= len(data) || data[i] != '{' {
		return lapse.FieldErrorf(lapse.EINVALID, "body", "request body must be a JSON object")
	}
	var seen [16][]byte // member names of the top-level object; inputs have few
	nseen := 0
	var extra [][]byte
	depth := 0
	expectKey := false // the next string at depth 1 is a member name
	for ; i < len(data); i++ {
		switch c := data[i]; c {
		case '{':
			depth++
			if depth > MaxJSONDepth {
				return lapse.FieldErrorf(lapse.EINVALID, "body", "JSON is nested deeper than %d levels", MaxJSONDepth)
			}
			expectKey = depth == 1
		case '[':
			depth++
			if depth > MaxJSONDepth {
				return lapse.FieldErrorf(lapse.EINVALID, "body", "JSON is nested deeper than %d levels", MaxJSONDepth)
			}
		case '}', ']':
			depth--
			if depth == 0 {
				if len(bytes.TrimSpace(data[i+1:])) != 0 {
					return lapse.FieldErrorf(lapse.EINVALID, "body", "unexpected data after the JSON object")
				}
				return nil
			}
			if depth < 0 {
				return lapse.FieldErrorf(lapse.EINVALID, "body", "malformed JSON")
			}
		case ',':
			expectKey = depth == 1
		case '"':
			end, ok := stringEnd(data, i)
			if !ok {
				return lapse.FieldErrorf(lapse.EINVALID, "body", "malformed JSON")
			}
			if expectKey && depth == 1 {
				expectKey = false
				name := data[i+1 : end]
				if bytes.IndexByte(name, '\\') >= 0 {
					var s string
					if err := json.Unmarshal(data[i:end+1], &s); err != nil {
						return lapse.FieldErrorf(lapse.EINVALID, "body", "malformed JSON")
					}
					name = []byte(s)
				}
				if !spec.known(name) {
					return lapse.FieldErrorf(lapse.EINVALID, string(name), "unknown field %q", name)
				}
				dup := false
				for _, s := range seen[:nseen] {
					dup = dup || bytes.Equal(s, name)
				}
				for _, s := range extra {
					dup = dup || bytes.Equal(s, name)
				}
				if dup {
					return lapse.FieldErrorf(lapse.EINVALID, string(name), "field %q appears more than once", name)
				}
				if nseen < len(seen) {
					seen[nseen] = name
					nseen++
				} else {
					extra = append(extra, name)
				}
			}
			i = end
		}
	}
	return lapse.FieldErrorf(lapse.EINVALID, "body", "malformed JSON: unexpected end")
}

// stringEnd returns the index of the quote that closes the JSON string
// starting at data[start].
func stringEnd(data []byte, start int) (int, bool) {
	for j := start + 1; j < len(data); j++ {
		switch data[j] {
		case '\\':
			j++
		case '"':
			return j, true
		}
	}
	return 0, false
}

func skipSpace(data []byte, i int) int {
	for i < len(data) && (data[i] == ' ' || data[i] == '\t' || data[i] == '\n' || data[i] == '\r') {
		i++
	}
	return i
}

// noBody checks that a request that takes no input carries none: an empty
// body or an empty JSON object.
func noBody(w http.ResponseWriter, r *http.Request) error {
	return decodeJSON(w, r, &struct{}{}, specEmpty, true)
}

// query is a strict reader of URL query parameters: each parameter at most
// once, and any parameter the endpoint does not know is an error naming it.
type query struct {
	v url.Values
}

func parseQuery(r *http.Request, known ...string) (query, error) {
	v, err := url.ParseQuery(r.URL.RawQuery)
	if err != nil {
		return query{}, lapse.FieldErrorf(lapse.EINVALID, "query", "malformed query string")
	}
	for k, vals := range v {
		found := false
		for _, n := range known {
			if k == n {
				found = true
				break
			}
		}
		if !found {
			return query{}, lapse.FieldErrorf(lapse.EINVALID, k, "unknown query parameter %q", k)
		}
		if len(vals) > 1 {
			return query{}, lapse.FieldErrorf(lapse.EINVALID, k, "query parameter %q given more than once", k)
		}
	}
	return query{v}, nil
}

func (q query) str(name string) string { return q.v.Get(name) }

func (q query) has(name string) bool { return q.v.Has(name) }

// boolean reads "true" or "false" (absent is false).
func (q query) boolean(name string) (bool, error) {
	switch q.v.Get(name) {
	case "", "false":
		return false, nil
	case "true":
		return true, nil
	}
	return false, lapse.FieldErrorf(lapse.EINVALID, name, "%s must be true or false", name)
}

// limit reads a list limit in 1..lapse.MaxListLimit (absent is 0: the
// Service's default).
func (q query) limit() (int, error) {
	s := q.v.Get("limit")
	if s == "" {
		if q.v.Has("limit") {
			return 0, lapse.FieldErrorf(lapse.EINVALID, "limit", "limit is empty")
		}
		return 0, nil
	}
	n, err := strconv.Atoi(s)
	if err != nil || n < 1 || n > lapse.MaxListLimit {
		return 0, lapse.FieldErrorf(lapse.EINVALID, "limit", "limit must be an integer from 1 to %d", lapse.MaxListLimit)
	}
	return n, nil
}

// principal reads a principal ID and normalises it.
func (q query) principal(name string) (string, error) {
	s := q.v.Get(name)
	if s == "" {
		return "", nil
	}
	id, err := lapse.NormalizeID(s)
	if err != nil {
		return "", lapse.FieldErrorf(lapse.EINVALID, name, "%s", lapse.ErrorMessage(err))
	}
	return id, nil
}

// name reads a catalog name (target, entitlement).
func (q query) name(param string) (string, error) {
	s := q.v.Get(param)
	if s != "" && !validName(s) {
		return "", lapse.FieldErrorf(lapse.EINVALID, param, "%s is not a valid name", param)
	}
	return s, nil
}

// validName reports whether s can be a configured name: a target or an
// entitlement ("prod-db/read"). Names are configuration, not free text, so
// the API accepts only printable ASCII without spaces, quotes or
// backslashes.
func validName(s string) bool {
	if s == "" || len(s) > lapse.MaxIDLength {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c <= ' ' || c >= 0x7f || c == '"' || c == '\\' || c == '\'' || c == '<' || c == '>' {
			return false
		}
	}
	return true
}

// validKeyPrefix reports whether s has the shape of an API key's public
// prefix (12 characters of lowercase base32, see authn).
func validKeyPrefix(s string) bool {
	if len(s) != 12 {
		return false
	}
	for _, c := range s {
		if !(c >= 'a' && c <= 'z' || c >= '2' && c <= '7') {
			return false
		}
	}
	return true
}

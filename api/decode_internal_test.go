package api

import (
	"bytes"
	"encoding/json"
	"io"
	"slices"
	"strings"
	"testing"
	"unicode/utf8"

	"github.com/lapsehq/lapse"
)

func TestCheckJSONDepthLimit(t *testing.T) {
	nest := func(n int) string {
		// {"reason": followed by n-1 arrays: n levels in all.
		return `{"reason":` + strings.Repeat("[", n-1) + strings.Repeat("]", n-1) + `}`
	}
	if err := checkJSON([]byte(nest(MaxJSONDepth)), specRequestInput); err != nil {
		t.Fatalf("depth %d refused: %v", MaxJSONDepth, err)
	}
	err := checkJSON([]byte(nest(MaxJSONDepth+1)), specRequestInput)
	if lapse.ErrorCode(err) != lapse.EINVALID || lapse.ErrorField(err) != "body" {
		t.Fatalf("depth %d: err = %v, want invalid body", MaxJSONDepth+1, err)
	}
}

func TestCheckJSONKeys(t *testing.T) {
	for _, tc := range []struct {
		in, field string
	}{
		{`{"entitlement":"a","reason":"b"}`, ""},
		{`{}`, ""},
		{`{"reason":"{\"admin\":1}"}`, ""},           // a key-like string inside a value
		{`{"reason":"\\","ticket":"x"}`, ""},         // an escaped backslash ends the string
		{`{"entitlement":["admin"],"reason":1}`, ""}, // shape is the decoder's business
		{`{"admin":1}`, "admin"},
		{`{"entitlement":"a","entitlement":"a"}`, "entitlement"},
		{`{"entitl\u0065ment":"a","entitlement":"b"}`, "entitlement"},
		{`{"reason":{"admin":1}}`, ""}, // nested members are not top-level fields
		{`{"ENTITLEMENT":"a"}`, "ENTITLEMENT"},
		{`{"entitlement":"a"}]`, "body"},
		{`{"entitlement":"a"`, "body"},
		{`  `, "body"},
		{`[]`, "body"},
	} {
		err := checkJSON([]byte(tc.in), specRequestInput)
		if got := lapse.ErrorField(err); got != tc.field || (tc.field == "") != (err == nil) {
			t.Errorf("checkJSON(%s) = %v, want field %q", tc.in, err, tc.field)
		}
	}
}

func TestInputSpecs(t *testing.T) {
	if !slices.Equal(specRequestInput.durationFields, []string{"duration"}) || !slices.Equal(specAPIKeyInput.durationFields, []string{"ttl"}) ||
		!slices.Equal(specMandateInput.durationFields, []string{"max_duration", "expires_in"}) {
		t.Fatalf("duration fields: %q %q %q", specRequestInput.durationFields, specAPIKeyInput.durationFields, specMandateInput.durationFields)
	}
	// With two durations in one input, a bad one is named by its member.
	for body, field := range map[string]string{
		`{"agent_id":"a","max_duration":"banana","expires_in":"1h"}`: "max_duration",
		`{"agent_id":"a","max_duration":"5m","expires_in":"-1h"}`:    "expires_in",
		`{"expires_in":"0s"}`: "expires_in",
	} {
		var in lapse.MandateInput
		err := json.Unmarshal([]byte(body), &in)
		if got := lapse.ErrorField(decodeError(err, specMandateInput, []byte(body))); got != field {
			t.Errorf("%s: field %q, want %q", body, got, field)
		}
	}
	if len(specEmpty.fields) != 0 {
		t.Fatalf("empty spec has fields %v", specEmpty.fields)
	}
}

// FuzzCheckJSON compares checkJSON with a reference built on encoding/json's
// tokenizer: on every syntactically valid JSON text, both must agree on
// whether the body is one object, nested at most MaxJSONDepth deep, whose
// top-level members are known and unique.
func FuzzCheckJSON(f *testing.F) {
	for _, s := range []string{
		`{"entitlement":"a","duration":"5m"}`, `{"reason":[[["x"]]]}`, `{"a":1}`, `[1]`, `"x"`,
		`{"reason":"}{]["}`, `{"reason":"\"","ticket":"\\"}`, `{"entitlement":"a","entitlement":"b"}`,
		`{"reason":{"reason":{"reason":1}}}`, `{"\u0072eason":"x"}`, strings.Repeat("[", 40),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		err := checkJSON(data, specRequestInput)
		if !json.Valid(data) || !utf8.Valid(data) {
			return // only that it did not panic
		}
		want := referenceCheck(data, specRequestInput)
		if (err == nil) != want {
			t.Fatalf("checkJSON(%q) = %v, reference accepts: %v", data, err, want)
		}
	})
}

func referenceCheck(data []byte, spec *inputSpec) bool {
	dec := json.NewDecoder(bytes.NewReader(data))
	dec.UseNumber()
	type frame struct{ object, expectKey bool }
	var stack []frame
	seen := map[string]bool{}
	first := true
	for {
		tok, err := dec.Token()
		if err == io.EOF {
			return true
		}
		if err != nil {
			return false
		}
		if first {
			if d, ok := tok.(json.Delim); !ok || d != '{' {
				return false
			}
		}
		first = false
		if tok == json.Delim('}') || tok == json.Delim(']') {
			stack = stack[:len(stack)-1]
			if len(stack) > 0 && stack[len(stack)-1].object {
				stack[len(stack)-1].expectKey = true
			}
			continue
		}
		isKey := len(stack) > 0 && stack[len(stack)-1].object && stack[len(stack)-1].expectKey
		if isKey {
			stack[len(stack)-1].expectKey = false
			if len(stack) == 1 {
				k := tok.(string)
				if !spec.known([]byte(k)) || seen[k] {
					return false
				}
				seen[k] = true
			}
			continue
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].expectKey = true // a value was read; a key comes next
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, frame{object: true, expectKey: true})
		case json.Delim('['):
			stack = append(stack, frame{})
		}
		if len(stack) > MaxJSONDepth {
			return false
		}
	}
}

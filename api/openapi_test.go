package api_test

import (
	"encoding/json"
	"reflect"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/goccy/go-yaml"

	"github.com/lapsehq/lapse"
	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/connector/token"
)

func loadOpenAPI(t *testing.T) map[string]any {
	t.Helper()
	var doc map[string]any
	if err := yaml.Unmarshal(api.OpenAPI, &doc); err != nil {
		t.Fatalf("openapi.yaml does not parse: %v", err)
	}
	if v, _ := doc["openapi"].(string); !strings.HasPrefix(v, "3.1.") {
		t.Fatalf("openapi = %v, want 3.1.x", doc["openapi"])
	}
	return doc
}

var httpMethods = []string{"get", "put", "post", "delete", "patch", "head", "options", "trace"}

// docRoutes returns "METHOD /path" for every operation in the document.
func docRoutes(t *testing.T, doc map[string]any) map[string]map[string]any {
	t.Helper()
	paths, ok := doc["paths"].(map[string]any)
	if !ok {
		t.Fatal("document has no paths")
	}
	out := map[string]map[string]any{}
	for p, item := range paths {
		ops, ok := item.(map[string]any)
		if !ok {
			t.Fatalf("path %s is not an object", p)
		}
		for m, op := range ops {
			if !slices.Contains(httpMethods, m) {
				continue
			}
			o, ok := op.(map[string]any)
			if !ok {
				t.Fatalf("%s %s is not an object", m, p)
			}
			out[strings.ToUpper(m)+" "+p] = o
		}
	}
	return out
}

// TestOpenAPICoversRoutes: the document describes exactly the routes the
// server registers.
func TestOpenAPICoversRoutes(t *testing.T) {
	doc := loadOpenAPI(t)
	ops := docRoutes(t, doc)
	var inDoc, served []string
	for r := range ops {
		inDoc = append(inDoc, r)
	}
	served = api.Routes()
	sort.Strings(inDoc)
	sort.Strings(served)
	for _, r := range served {
		if _, ok := ops[r]; !ok {
			t.Errorf("route %s is served but not in openapi.yaml", r)
		}
	}
	for _, r := range inDoc {
		if !slices.Contains(served, r) {
			t.Errorf("openapi.yaml describes %s, which is not served", r)
		}
	}
}

// TestRoutesAreRegistered: every route of Routes reaches its own handler
// through the real mux (the logged route pattern proves which one ran).
func TestRoutesAreRegistered(t *testing.T) {
	e := newEnv(t)
	for _, rt := range api.Routes() {
		method, pattern, _ := strings.Cut(rt, " ")
		path := strings.NewReplacer(
			"{id}", "x", "{prefix}", "abcdefghijkm", "{name}", "api",
		).Replace(pattern)
		before := strings.Count(e.logs.String(), `"route":"`+rt+`"`)
		e.mem(t, method, path, "", "", "")
		if after := strings.Count(e.logs.String(), `"route":"`+rt+`"`); after != before+1 {
			t.Errorf("%s %s was not served by route %q", method, path, rt)
		}
	}
}

// TestOpenAPIReferencesResolve: every $ref points at something that exists.
func TestOpenAPIReferencesResolve(t *testing.T) {
	doc := loadOpenAPI(t)
	var walk func(v any, at string)
	walk = func(v any, at string) {
		switch v := v.(type) {
		case map[string]any:
			for k, x := range v {
				if k == "$ref" {
					ref, _ := x.(string)
					if resolve(doc, ref) == nil {
						t.Errorf("%s: $ref %q does not resolve", at, ref)
					}
					continue
				}
				walk(x, at+"/"+k)
			}
		case []any:
			for _, x := range v {
				walk(x, at)
			}
		}
	}
	walk(doc, "#")
}

func resolve(doc map[string]any, ref string) any {
	rest, ok := strings.CutPrefix(ref, "#/")
	if !ok {
		return nil
	}
	var cur any = doc
	for _, part := range strings.Split(rest, "/") {
		m, ok := cur.(map[string]any)
		if !ok {
			return nil
		}
		cur = m[part]
	}
	return cur
}

// TestOpenAPIErrorResponses: every operation that authenticates documents
// 401, every operation that takes input documents 400, and every documented
// error response uses the Error schema.
func TestOpenAPIErrorResponses(t *testing.T) {
	doc := loadOpenAPI(t)
	for name, op := range docRoutes(t, doc) {
		responses, ok := op["responses"].(map[string]any)
		if !ok || len(responses) == 0 {
			t.Errorf("%s has no responses", name)
			continue
		}
		public := false
		if sec, ok := op["security"].([]any); ok && len(sec) == 0 {
			public = true
		}
		if !public && responses["401"] == nil {
			t.Errorf("%s authenticates but does not document 401", name)
		}
		if (op["requestBody"] != nil || op["parameters"] != nil) && responses["400"] == nil {
			t.Errorf("%s takes input but does not document 400", name)
		}
		if op["requestBody"] != nil && responses["413"] == nil {
			t.Errorf("%s takes a body but does not document 413", name)
		}
		for status, resp := range responses {
			if status[0] != '4' && status[0] != '5' || name == "GET /readyz" {
				continue
			}
			// The OAuth endpoints answer errors in OAuth's own format
			// (RFC 6749 §5.2), which OAuth client libraries parse.
			wantSchema := "#/components/schemas/Error"
			if strings.HasPrefix(name, "POST /v1/token") {
				wantSchema = "#/components/schemas/OAuthError"
			}
			r, _ := resp.(map[string]any)
			if ref, ok := r["$ref"].(string); ok {
				r, _ = resolve(doc, ref).(map[string]any)
			}
			content, _ := r["content"].(map[string]any)
			mt, _ := content["application/json"].(map[string]any)
			s, _ := mt["schema"].(map[string]any)
			if s["$ref"] != wantSchema {
				t.Errorf("%s %s does not use the Error schema", name, status)
			}
		}
	}
}

// TestOpenAPISchemasMatchGo: each schema lists exactly the JSON members of
// the Go type it describes, so the document cannot drift from the wire.
func TestOpenAPISchemasMatchGo(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := resolve(doc, "#/components/schemas").(map[string]any)
	types := map[string]any{
		"Principal":       lapse.Principal{},
		"Entitlement":     lapse.Entitlement{},
		"ApprovalRule":    lapse.ApprovalRule{},
		"Exposure":        lapse.Exposure{},
		"CheckpointPath":  lapse.CheckpointPath{},
		"Request":         lapse.Request{},
		"Approval":        lapse.Approval{},
		"RequestInput":    lapse.RequestInput{},
		"DecisionInput":   lapse.DecisionInput{},
		"RequestResult":   lapse.RequestResult{},
		"Grant":           lapse.Grant{},
		"Checkpoint":      lapse.Checkpoint{},
		"Event":           lapse.Event{},
		"Credentials":     lapse.Credentials{},
		"ReleaseInput":    lapse.ReleaseInput{},
		"RevokeInput":     lapse.RevokeInput{},
		"APIKeyInput":     lapse.APIKeyInput{},
		"APIKey":          lapse.APIKey{},
		"Mandate":         lapse.Mandate{},
		"MandateInput":    lapse.MandateInput{},
		"AgentRule":       lapse.AgentRule{},
		"Actor":           token.Actor{},
		"NewAPIKey":       lapse.NewAPIKey{},
		"TokenRevocation": lapse.TokenRevocation{},
		"Introspection":   token.Introspection{},
		"FeedPage":        api.FeedPage{},
		"Ack":             api.Ack{},
		"AckInput":        api.Ack{}, // same members as the input
		"Error":           api.ErrorBody{},
		"TokenResponse":   api.TokenResponse{},
		"OAuthError":      api.OAuthError{},
	}
	for name, v := range types {
		s, ok := schemas[name].(map[string]any)
		if !ok {
			t.Errorf("schema %s is missing", name)
			continue
		}
		props, _ := s["properties"].(map[string]any)
		var got []string
		for p := range props {
			got = append(got, p)
		}
		want := jsonMembers(reflect.TypeOf(v))
		sort.Strings(got)
		sort.Strings(want)
		if !slices.Equal(got, want) {
			t.Errorf("schema %s has properties %v, Go type has %v", name, got, want)
		}
		if req, ok := s["required"].([]any); ok {
			for _, r := range req {
				if !slices.Contains(want, r.(string)) {
					t.Errorf("schema %s requires unknown property %v", name, r)
				}
			}
		}
	}
}

// jsonMembers lists the JSON member names encoding/json would produce for t.
func jsonMembers(t reflect.Type) []string {
	var out []string
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		name, _, _ := strings.Cut(f.Tag.Get("json"), ",")
		if name == "-" || !f.IsExported() {
			continue
		}
		if f.Anonymous && name == "" && f.Type.Kind() == reflect.Struct {
			out = append(out, jsonMembers(f.Type)...)
			continue
		}
		if name == "" {
			name = f.Name
		}
		out = append(out, name)
	}
	return out
}

// TestServedOpenAPIIsEmbedded: /v1/openapi.yaml serves the checked-in file.
func TestServedOpenAPIIsEmbedded(t *testing.T) {
	r := serve(t, &api.Server{}, "GET", "/v1/openapi.yaml", "", "", "")
	if r.status != 200 || string(r.body) != string(api.OpenAPI) {
		t.Fatalf("status %d, %d bytes; want the %d embedded bytes", r.status, len(r.body), len(api.OpenAPI))
	}
	if ct := r.header.Get("Content-Type"); ct != "application/yaml" {
		t.Fatalf("Content-Type = %q", ct)
	}
	// A JSON tool reading the YAML gets the same structure.
	var v any
	if err := yaml.Unmarshal(r.body, &v); err != nil {
		t.Fatal(err)
	}
	if _, err := json.Marshal(v); err != nil {
		t.Fatalf("document is not JSON-representable: %v", err)
	}
}

package api_test

import (
	"reflect"
	"slices"
	"sort"
	"testing"

	"github.com/lapsehq/lapse/api"
	"github.com/lapsehq/lapse/audit"
)

// TestOpenAPIAuditSchemasMatchGo: the audit schemas list exactly the JSON
// members of their Go types, like TestOpenAPISchemasMatchGo does for the
// rest.
func TestOpenAPIAuditSchemasMatchGo(t *testing.T) {
	doc := loadOpenAPI(t)
	schemas := resolve(doc, "#/components/schemas").(map[string]any)
	for name, v := range map[string]any{
		"AuditCheckpoint":  api.AuditCheckpoint{},
		"InclusionProof":   audit.InclusionProof{},
		"ConsistencyProof": audit.ConsistencyProof{},
		"SignedReceipt":    audit.SignedReceipt{},
		"Receipt":          audit.Receipt{},
		"ReceiptGrant":     audit.ReceiptGrant{},
		"ReceiptTimings":   audit.ReceiptTimings{},
		"ReceiptLog":       audit.ReceiptLog{},
		"ReceiptEntry":     audit.ReceiptEntry{},
	} {
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
	}
}

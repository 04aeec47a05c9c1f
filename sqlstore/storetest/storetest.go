// Package storetest is the conformance suite of lapse.Store: every
// implementation runs Run against a real database. It covers every method,
// every error code the contract documents, exact round-trips of every field,
// filters and limits, and the races the contract promises to survive.
package storetest

import (
	"context"
	"errors"
	"fmt"
	"reflect"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/lapsehq/lapse"
)

// Run runs the suite. open must return a new, empty store for each call and
// arrange for it to be closed when t ends.
func Run(t *testing.T, open func(t *testing.T) lapse.Store) {
	groups := []struct {
		name  string
		tests []test
	}{
		{"Request", requestTests},
		{"Grant", grantTests},
		{"Claim", claimTests},
		{"Event", eventTests},
		{"APIKey", apiKeyTests},
		{"Mandate", mandateTests},
		{"TokenFeed", tokenTests},
		{"Update", updateTests},
		{"Text", textTests},
		{"Race", raceTests},
	}
	for _, g := range groups {
		t.Run(g.name, func(t *testing.T) {
			for _, tc := range g.tests {
				t.Run(tc.name, func(t *testing.T) { tc.fn(t, open(t)) })
			}
		})
	}
}

type test struct {
	name string
	fn   func(t *testing.T, s lapse.Store)
}

// t0 has nanoseconds so that any loss of precision shows.
var t0 = time.Date(2026, 5, 17, 9, 30, 15, 123456789, time.UTC)

// update runs fn in s.Update and fails the test on error.
func update(t testing.TB, s lapse.Store, fn func(tx lapse.Tx) error) {
	t.Helper()
	if err := s.Update(context.Background(), fn); err != nil {
		t.Fatalf("Update: %v", err)
	}
}

// wantCode fails unless err carries code.
func wantCode(t testing.TB, err error, code string) {
	t.Helper()
	if got := lapse.ErrorCode(err); got != code {
		t.Fatalf("error code = %q, want %q (error: %v)", got, code, err)
	}
	var le *lapse.Error
	if code != "" && !errors.As(err, &le) {
		t.Fatalf("error %v is not a *lapse.Error", err)
	}
}

// wantEqual fails with the first difference between got and want.
func wantEqual(t testing.TB, what string, got, want any) {
	t.Helper()
	if d := diff(reflect.ValueOf(got), reflect.ValueOf(want), what); d != "" {
		t.Fatalf("%s", d)
	}
}

var timeType = reflect.TypeOf(time.Time{})

// diff returns a description of the first difference between a and b, or "".
// Nil and empty slices and maps are different; times must be identical
// (including location), which the store guarantees for UTC times.
func diff(a, b reflect.Value, path string) string {
	if a.IsValid() != b.IsValid() {
		return fmt.Sprintf("%s: got %v, want %v", path, a, b)
	}
	if !a.IsValid() {
		return ""
	}
	if a.Type() != b.Type() {
		return fmt.Sprintf("%s: type %s, want %s", path, a.Type(), b.Type())
	}
	if a.Type() == timeType {
		ta, tb := a.Interface().(time.Time), b.Interface().(time.Time)
		if !ta.Equal(tb) || ta.Location() != tb.Location() {
			return fmt.Sprintf("%s: got %s, want %s", path, ta.Format(time.RFC3339Nano), tb.Format(time.RFC3339Nano))
		}
		return ""
	}
	switch a.Kind() {
	case reflect.Pointer, reflect.Interface:
		if a.IsNil() || b.IsNil() {
			if a.IsNil() != b.IsNil() {
				return fmt.Sprintf("%s: got nil=%v, want nil=%v", path, a.IsNil(), b.IsNil())
			}
			return ""
		}
		return diff(a.Elem(), b.Elem(), path)
	case reflect.Struct:
		for i := range a.NumField() {
			if !a.Type().Field(i).IsExported() {
				continue
			}
			if d := diff(a.Field(i), b.Field(i), path+"."+a.Type().Field(i).Name); d != "" {
				return d
			}
		}
		return ""
	case reflect.Slice:
		if a.IsNil() != b.IsNil() {
			return fmt.Sprintf("%s: got nil=%v (%v), want nil=%v (%v)", path, a.IsNil(), a, b.IsNil(), b)
		}
		if a.Len() != b.Len() {
			return fmt.Sprintf("%s: got %d elements, want %d", path, a.Len(), b.Len())
		}
		for i := range a.Len() {
			if d := diff(a.Index(i), b.Index(i), fmt.Sprintf("%s[%d]", path, i)); d != "" {
				return d
			}
		}
		return ""
	case reflect.Map:
		if a.IsNil() != b.IsNil() {
			return fmt.Sprintf("%s: got nil=%v, want nil=%v", path, a.IsNil(), b.IsNil())
		}
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			return fmt.Sprintf("%s: got %v, want %v", path, a, b)
		}
		return ""
	default:
		if !reflect.DeepEqual(a.Interface(), b.Interface()) {
			return fmt.Sprintf("%s: got %#v, want %#v", path, a, b)
		}
		return ""
	}
}

// ids returns the IDs of grants, sorted.
func grantIDs(gs []*lapse.Grant) []string {
	out := make([]string, len(gs))
	for i, g := range gs {
		out[i] = g.ID
	}
	sort.Strings(out)
	return out
}

func sorted(ss []string) []string {
	out := append([]string(nil), ss...)
	sort.Strings(out)
	return out
}

func join(ss []string) string { return strings.Join(ss, ",") }

package lapse

import "testing"

func TestSameHuman(t *testing.T) {
	for _, c := range []struct {
		a, b string
		same bool
	}{
		{"alice", "alice", true},
		{"alice", "\u0430lice", true}, // Cyrillic а
		{"alice", "al\u0456ce", true}, // Cyrillic і
		{"paypal", "p\u0430yp\u0430l", true},
		{"alice", "alicia", false},
		{"bob", "rob", false},
	} {
		if got := SameHuman(c.a, c.b); got != c.same {
			t.Errorf("SameHuman(%q, %q) = %v, want %v", c.a, c.b, got, c.same)
		}
	}
}
